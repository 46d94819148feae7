//! Unit tests of the queue's rules, driven by hand: no threads, no channels, explicit clocks.

use std::time::{Duration, Instant};

use serde_json::json;

use super::*;
use crate::jobs::types::FailureKind;

fn config(max_queued: usize, concurrency: usize) -> QueueConfig {
    QueueConfig {
        max_queued,
        concurrency,
        ..QueueConfig::default()
    }
}

fn id(n: usize) -> JobId {
    JobId::from(format!("job-{n}").as_str())
}

fn submit(s: &mut QueueState, n: usize, now: Instant) -> Result<Admission, QueueError> {
    s.submit(id(n), format!("label {n}"), "test".into(), None, now)
}

fn state_of(s: &QueueState, n: usize) -> JobState {
    s.status(id(n).as_str(), Instant::now())
        .expect("known job")
        .state
}

#[test]
fn first_job_takes_the_free_slot_and_the_rest_wait_in_order() {
    let now = Instant::now();
    let mut s = QueueState::new(config(3, 1), 0);
    assert_eq!(submit(&mut s, 0, now), Ok(Admission::Start));
    for n in 1..=3 {
        assert_eq!(
            submit(&mut s, n, now),
            Ok(Admission::Queued { position: n })
        );
        assert_eq!(s.position(id(n).as_str()), Some(n));
    }
    assert_eq!(state_of(&s, 0), JobState::Running);
    assert_eq!(s.position(id(0).as_str()), None);
    let m = s.metrics();
    assert_eq!((m.queued, m.running), (3, 1));
}

#[test]
fn a_full_queue_refuses_with_a_retry_estimate_and_counts_the_refusal() {
    let now = Instant::now();
    let mut s = QueueState::new(config(3, 1), 0);
    for n in 0..4 {
        assert!(submit(&mut s, n, now).is_ok());
    }
    match submit(&mut s, 4, now) {
        Err(QueueError::Full {
            max_queued,
            retry_after_secs,
        }) => {
            assert_eq!(max_queued, 3);
            assert!(retry_after_secs >= 1);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    assert!(s.status(id(4).as_str(), now).is_none(), "refused job kept");
    assert_eq!(s.metrics().rejected, 1);
    assert_eq!(s.metrics().queued, 3);
}

#[test]
fn capacity_counts_waiting_jobs_only() {
    let now = Instant::now();
    let mut s = QueueState::new(config(1, 2), 0);
    assert_eq!(submit(&mut s, 0, now), Ok(Admission::Start));
    assert_eq!(submit(&mut s, 1, now), Ok(Admission::Start));
    assert_eq!(
        submit(&mut s, 2, now),
        Ok(Admission::Queued { position: 1 })
    );
    assert!(matches!(
        submit(&mut s, 3, now),
        Err(QueueError::Full { .. })
    ));
}

#[test]
fn no_waiting_room_still_runs_a_job_when_idle() {
    let now = Instant::now();
    let mut s = QueueState::new(config(0, 1), 0);
    assert_eq!(submit(&mut s, 0, now), Ok(Admission::Start));
    assert!(matches!(
        submit(&mut s, 1, now),
        Err(QueueError::Full { .. })
    ));
}

#[test]
fn finishing_hands_the_slot_to_the_front_and_moves_the_rest_up() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    for n in 0..4 {
        submit(&mut s, n, now).unwrap();
    }
    let f = s
        .finish(id(0).as_str(), Ok(json!({"n": 0})), now)
        .expect("was running");
    assert_eq!(
        f.event,
        JobEvent::Done {
            result: json!({"n": 0})
        }
    );
    assert_eq!(f.started, vec![id(1)]);
    assert_eq!(f.moved, vec![(id(2), 1), (id(3), 2)]);
    assert_eq!(state_of(&s, 0), JobState::Done);
    assert_eq!(state_of(&s, 1), JobState::Running);
    let st = s.status(id(0).as_str(), now).unwrap();
    assert_eq!(st.result, Some(json!({"n": 0})));
    assert!(st.finished_at.is_some());
}

#[test]
fn jobs_start_in_admission_order_whatever_order_they_finish_in() {
    let now = Instant::now();
    let mut s = QueueState::new(config(20, 3), 0);
    let mut started = Vec::new();
    for n in 0..12 {
        if submit(&mut s, n, now).unwrap() == Admission::Start {
            started.push(id(n));
        }
    }
    let mut running: Vec<JobId> = started.clone();
    // Finish the most recently started first, to scramble completion order.
    while let Some(last) = running.pop() {
        let f = s.finish(last.as_str(), Ok(json!(null)), now).unwrap();
        started.extend(f.started.iter().cloned());
        running.extend(f.started);
        assert!(s.metrics().running <= 3);
    }
    assert_eq!(started, (0..12).map(id).collect::<Vec<_>>());
    let seqs: Vec<u64> = started
        .iter()
        .map(|i| s.status(i.as_str(), now).unwrap().seq)
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
}

#[test]
fn cancelling_a_waiting_job_removes_it_and_moves_only_those_behind() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    for n in 0..5 {
        submit(&mut s, n, now).unwrap();
    }
    let out = s.cancel(id(2).as_str(), JobFailure::cancelled("by test"), now);
    match out {
        CancelOutcome::Removed { event, moved } => {
            assert!(matches!(event, JobEvent::Cancelled { .. }));
            assert_eq!(moved, vec![(id(3), 2), (id(4), 3)]);
        }
        other => panic!("expected Removed, got {other:?}"),
    }
    assert_eq!(state_of(&s, 2), JobState::Cancelled);
    // It never gets a slot afterwards.
    let mut order = Vec::new();
    let mut current = id(0);
    loop {
        let f = s.finish(current.as_str(), Ok(json!(1)), now).unwrap();
        match f.started.first() {
            Some(next) => {
                order.push(next.clone());
                current = next.clone();
            }
            None => break,
        }
    }
    assert_eq!(order, vec![id(1), id(3), id(4)]);
    assert_eq!(
        s.cancel(id(2).as_str(), JobFailure::cancelled("again"), now),
        CancelOutcome::NotActive
    );
    assert_eq!(s.metrics().cancelled, 1);
}

#[test]
fn a_cancelled_running_job_ends_cancelled_with_the_first_reason() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    submit(&mut s, 0, now).unwrap();
    assert_eq!(
        s.cancel(id(0).as_str(), JobFailure::timeout("waited too long"), now),
        CancelOutcome::Signal
    );
    assert_eq!(
        s.cancel(id(0).as_str(), JobFailure::cancelled("later"), now),
        CancelOutcome::Signal
    );
    let f = s
        .finish(id(0).as_str(), Err(JobFailure::engine("cancelled")), now)
        .unwrap();
    match f.event {
        JobEvent::Cancelled { error } => assert_eq!(error.kind, FailureKind::Timeout),
        other => panic!("expected Cancelled, got {other:?}"),
    }
    let st = s.status(id(0).as_str(), now).unwrap();
    assert_eq!(st.state, JobState::Cancelled);
    assert_eq!(st.error.map(|e| e.kind), Some(FailureKind::Timeout));
}

#[test]
fn a_result_that_beats_the_cancel_is_kept() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    submit(&mut s, 0, now).unwrap();
    s.cancel(id(0).as_str(), JobFailure::cancelled("late"), now);
    let f = s.finish(id(0).as_str(), Ok(json!("painted")), now).unwrap();
    assert!(matches!(f.event, JobEvent::Done { .. }));
    assert_eq!(state_of(&s, 0), JobState::Done);
}

#[test]
fn a_failure_without_a_cancel_is_failed() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    submit(&mut s, 0, now).unwrap();
    let f = s
        .finish(
            id(0).as_str(),
            Err(JobFailure::engine("out of memory")),
            now,
        )
        .unwrap();
    assert_eq!(
        f.event,
        JobEvent::Failed {
            error: JobFailure::engine("out of memory")
        }
    );
    let m = s.metrics();
    assert_eq!((m.failed, m.done, m.cancelled, m.running), (1, 0, 0, 0));
}

#[test]
fn finishing_a_job_that_is_not_running_changes_nothing() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    submit(&mut s, 0, now).unwrap();
    submit(&mut s, 1, now).unwrap();
    assert!(s.finish(id(1).as_str(), Ok(json!(1)), now).is_none());
    assert!(s.finish("nobody", Ok(json!(1)), now).is_none());
    assert_eq!(state_of(&s, 1), JobState::Queued);
    assert_eq!(s.metrics().running, 1);
}

#[test]
fn progress_is_recorded_only_while_running_and_shows_in_catch_up() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    submit(&mut s, 0, now).unwrap();
    submit(&mut s, 1, now).unwrap();
    assert!(
        !s.progress(id(1).as_str(), 1, 10),
        "queued job took progress"
    );
    assert_eq!(
        s.catch_up(id(1).as_str(), now),
        Some(vec![JobEvent::Queued { position: 1 }])
    );
    assert_eq!(
        s.catch_up(id(0).as_str(), now),
        Some(vec![JobEvent::Started])
    );
    assert!(s.progress(id(0).as_str(), 3, 10));
    let events = s.catch_up(id(0).as_str(), now).unwrap();
    assert!(matches!(
        events.as_slice(),
        [
            JobEvent::Started,
            JobEvent::Progress {
                step: 3,
                total: 10,
                ..
            }
        ]
    ));
    let st = s.status(id(0).as_str(), now).unwrap();
    assert_eq!((st.step, st.total), (3, 10));
    s.finish(id(0).as_str(), Ok(json!(7)), now).unwrap();
    assert!(
        !s.progress(id(0).as_str(), 4, 10),
        "finished job took progress"
    );
    assert_eq!(
        s.catch_up(id(0).as_str(), now),
        Some(vec![JobEvent::Done { result: json!(7) }])
    );
    assert_eq!(s.catch_up("nobody", now), None);
}

#[test]
fn finished_jobs_are_forgotten_beyond_the_count_limit() {
    let now = Instant::now();
    let mut s = QueueState::new(
        QueueConfig {
            keep_finished: 3,
            ..config(8, 1)
        },
        0,
    );
    for n in 0..5 {
        submit(&mut s, n, now).unwrap();
        s.finish(id(n).as_str(), Ok(json!(n)), now).unwrap();
    }
    assert!(s.status(id(0).as_str(), now).is_none());
    assert!(s.status(id(1).as_str(), now).is_none());
    for n in 2..5 {
        assert_eq!(state_of(&s, n), JobState::Done);
    }
}

#[test]
fn finished_jobs_are_forgotten_after_the_age_limit_but_live_ones_are_not() {
    let t0 = Instant::now();
    let mut s = QueueState::new(
        QueueConfig {
            retention: Duration::from_secs(60),
            ..config(8, 1)
        },
        0,
    );
    submit(&mut s, 0, t0).unwrap();
    s.finish(id(0).as_str(), Ok(json!(0)), t0).unwrap();
    submit(&mut s, 1, t0).unwrap();
    // Still remembered within the limit.
    submit(&mut s, 2, t0 + Duration::from_secs(30)).unwrap();
    assert!(s.status(id(0).as_str(), t0).is_some());
    // The next admission after the limit prunes it; the running and queued ones stay.
    submit(&mut s, 3, t0 + Duration::from_secs(61)).unwrap();
    assert!(s.status(id(0).as_str(), t0).is_none());
    assert_eq!(state_of(&s, 1), JobState::Running);
    assert_eq!(state_of(&s, 2), JobState::Queued);
}

#[test]
fn retry_after_spreads_the_average_run_over_the_slots() {
    let t0 = Instant::now();
    let mut s = QueueState::new(config(1, 2), 0);
    // Two runs of 10 s and 20 s: average 15 s, over 2 slots -> 7.5 -> 8 s.
    submit(&mut s, 0, t0).unwrap();
    submit(&mut s, 1, t0).unwrap();
    s.finish(id(0).as_str(), Ok(json!(0)), t0 + Duration::from_secs(10))
        .unwrap();
    s.finish(id(1).as_str(), Ok(json!(1)), t0 + Duration::from_secs(20))
        .unwrap();
    let later = t0 + Duration::from_secs(21);
    for n in 2..5 {
        submit(&mut s, n, later).unwrap();
    }
    assert_eq!(
        submit(&mut s, 5, later),
        Err(QueueError::Full {
            max_queued: 1,
            retry_after_secs: 8
        })
    );
    assert_eq!(s.metrics().avg_job_ms, Some(15_000));
}

#[test]
fn retry_after_is_at_least_one_second() {
    let now = Instant::now();
    let mut s = QueueState::new(config(1, 1), 0);
    submit(&mut s, 0, now).unwrap();
    assert!(s.retry_after_secs(now) >= 1);
    s.finish(id(0).as_str(), Ok(json!(0)), now).unwrap();
    assert_eq!(
        s.retry_after_secs(now),
        1,
        "a zero-length run still says 1 s"
    );
}

#[test]
fn shutdown_cancels_the_waiting_lists_the_running_and_refuses_new_jobs() {
    let now = Instant::now();
    let mut s = QueueState::new(config(8, 1), 0);
    for n in 0..3 {
        submit(&mut s, n, now).unwrap();
    }
    let out = s.shutdown(JobFailure::cancelled("shutting down"), now);
    assert_eq!(out.running, vec![id(0)]);
    let removed: Vec<JobId> = out.removed.iter().map(|(i, _)| i.clone()).collect();
    assert_eq!(removed, vec![id(1), id(2)]);
    assert_eq!(state_of(&s, 1), JobState::Cancelled);
    assert_eq!(submit(&mut s, 9, now), Err(QueueError::ShuttingDown));
    assert!(!s.metrics().accepting);
    // The running job may still finish normally; nothing new starts.
    let f = s.finish(id(0).as_str(), Ok(json!(0)), now).unwrap();
    assert!(f.started.is_empty());
}

#[test]
fn config_limits_name_the_field() {
    let err = config(8, 0).validate().unwrap_err();
    assert_eq!(err.field, "concurrency");
    assert!(err.to_string().contains("concurrency"));
    let err = config(crate::jobs::MAX_QUEUED + 1, 1)
        .validate()
        .unwrap_err();
    assert_eq!(err.field, "max_queued");
    assert!(QueueConfig::default().validate().is_ok());
}
