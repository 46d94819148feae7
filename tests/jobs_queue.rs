//! The job queue end to end with real threads: FIFO order, capacity, concurrent submits,
//! cancellation (queued, running, timeout, dropped guard), event order, panics and shutdown.
//! Jobs are closures that sleep or loop over steps checking their cancel token; no engine.
//! Timeouts here only guard against hangs; nothing asserts how long anything took.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use futures::StreamExt;
use limner::engine::EngineError;
use limner::jobs::{
    FailureKind, JobContext, JobEvent, JobEvents, JobFailure, JobHandle, JobId, JobQueue, JobSpec,
    JobState, QueueConfig, QueueError, WaitError,
};
use serde_json::{json, Value};

const HANG_GUARD: Duration = Duration::from_secs(60);

fn queue(max_queued: usize, concurrency: usize) -> JobQueue {
    JobQueue::new(QueueConfig {
        max_queued,
        concurrency,
        ..QueueConfig::default()
    })
    .expect("valid config")
}

async fn guarded<F: std::future::Future>(what: &str, fut: F) -> F::Output {
    tokio::time::timeout(HANG_GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("hung: {what}"))
}

type Handle = JobHandle<Value, JobFailure>;

/// Submits an untyped test job (JSON result, [`JobFailure`] error).
fn submit(
    q: &JobQueue,
    label: &str,
    job: impl FnOnce(JobContext) -> Result<Value, JobFailure> + Send + 'static,
) -> Result<Handle, QueueError> {
    q.submit(JobSpec::new("test", label), job)
}

async fn result_of(h: Handle) -> Result<Value, WaitError<JobFailure>> {
    guarded("wait", h.wait(HANG_GUARD)).await
}

/// A job that holds its slot until the returned sender fires (or is dropped), then reports
/// cancelled if its token was set meanwhile.
fn blocker(q: &JobQueue) -> (Handle, mpsc::Sender<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let id = submit(q, "blocker", move |ctx: JobContext| {
        let _ = rx.recv();
        if ctx.is_cancelled() {
            return Err(JobFailure::cancelled("saw the token"));
        }
        Ok(json!("blocker done"))
    })
    .expect("blocker admitted");
    (id, tx)
}

/// A job of `steps` steps that checks its cancel token before each one, like the engine, and
/// counts the steps it actually began.
fn stepping_job(
    steps: usize,
    pause: Duration,
    begun: Arc<AtomicUsize>,
) -> impl FnOnce(JobContext) -> Result<Value, JobFailure> + Send + 'static {
    move |ctx: JobContext| {
        let token = ctx.cancel_token();
        for step in 1..=steps {
            if token.is_cancelled() {
                return Err(JobFailure::cancelled("saw the token"));
            }
            begun.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(pause);
            ctx.progress(step, steps);
        }
        Ok(json!({ "steps": steps }))
    }
}

async fn next_event(events: &mut JobEvents) -> Option<JobEvent> {
    guarded("next event", events.next()).await
}

async fn all_events(mut events: JobEvents) -> Vec<JobEvent> {
    guarded("event stream end", async move {
        let mut all = Vec::new();
        while let Some(e) = events.next().await {
            all.push(e);
        }
        all
    })
    .await
}

/// Waits until the job reports at least `step` steps.
async fn until_step(events: &mut JobEvents, step: usize) {
    loop {
        match next_event(events).await {
            Some(JobEvent::Progress { step: s, .. }) if s >= step => return,
            Some(e) if e.is_terminal() => panic!("job ended early: {e:?}"),
            Some(_) => {}
            None => panic!("stream ended before step {step}"),
        }
    }
}

#[tokio::test]
async fn twenty_jobs_on_one_slot_start_in_submission_order_one_at_a_time() {
    let q = queue(32, 1);
    let (_, release) = blocker(&q);
    let order = Arc::new(Mutex::new(Vec::new()));
    let running = Arc::new(AtomicUsize::new(0));
    let most_at_once = Arc::new(AtomicUsize::new(0));
    let mut ids = Vec::new();
    for n in 0..20 {
        let (order, running, most) = (order.clone(), running.clone(), most_at_once.clone());
        let h = submit(&q, &format!("job {n}"), move |_ctx: JobContext| {
            let now = running.fetch_add(1, Ordering::SeqCst) + 1;
            most.fetch_max(now, Ordering::SeqCst);
            order.lock().unwrap().push(n);
            std::thread::sleep(Duration::from_millis(1));
            running.fetch_sub(1, Ordering::SeqCst);
            Ok(json!(n))
        })
        .unwrap();
        assert_eq!(q.status(h.id().as_str()).unwrap().position, Some(n + 1));
        ids.push(h);
    }
    release.send(()).unwrap();
    for (n, h) in ids.into_iter().enumerate() {
        assert_eq!(result_of(h).await, Ok(json!(n)));
    }
    assert_eq!(*order.lock().unwrap(), (0..20).collect::<Vec<_>>());
    assert_eq!(most_at_once.load(Ordering::SeqCst), 1);
    let m = q.metrics();
    assert_eq!((m.done, m.queued, m.running), (21, 0, 0));
}

#[tokio::test]
async fn the_ninth_waiting_job_is_refused_with_a_retry_after() {
    let q = queue(8, 1);
    let (blocker_id, release) = blocker(&q);
    let mut waiting = Vec::new();
    for n in 0..8 {
        waiting.push(submit(&q, &format!("w{n}"), |_| Ok(json!(1))).unwrap());
    }
    match submit(&q, "one too many", |_| Ok(json!(1))) {
        Err(QueueError::Full {
            max_queued,
            retry_after_secs,
        }) => {
            assert_eq!(max_queued, 8);
            assert!(retry_after_secs >= 1);
        }
        other => panic!("expected Full, got {other:?}"),
    }
    let m = q.metrics();
    assert_eq!((m.queued, m.running, m.rejected), (8, 1, 1));
    release.send(()).unwrap();
    assert!(result_of(blocker_id).await.is_ok());
    for h in waiting {
        assert_eq!(result_of(h).await, Ok(json!(1)));
    }
    // Room again once the backlog is gone.
    let h = submit(&q, "after", |_| Ok(json!(2))).unwrap();
    assert_eq!(result_of(h).await, Ok(json!(2)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_submits_each_complete_once_or_are_refused() {
    let q = queue(8, 1);
    let executions: Arc<Mutex<HashMap<usize, usize>>> = Arc::default();
    let start_order: Arc<Mutex<Vec<usize>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(50));
    let submitters: Vec<_> = (0..50)
        .map(|n| {
            let (q, executions, start_order, barrier) = (
                q.clone(),
                executions.clone(),
                start_order.clone(),
                barrier.clone(),
            );
            std::thread::spawn(move || {
                barrier.wait();
                let submitted = submit(&q, &format!("job {n}"), move |_ctx: JobContext| {
                    start_order.lock().unwrap().push(n);
                    *executions.lock().unwrap().entry(n).or_default() += 1;
                    std::thread::sleep(Duration::from_millis(2));
                    Ok(json!(n))
                });
                (n, submitted)
            })
        })
        .collect();
    let mut accepted = Vec::new();
    let mut refused = Vec::new();
    for handle in submitters {
        let (n, submitted) = handle.join().expect("submitter thread");
        match submitted {
            Ok(id) => accepted.push((n, id)),
            Err(QueueError::Full {
                retry_after_secs, ..
            }) => {
                assert!(retry_after_secs >= 1);
                refused.push(n);
            }
            Err(e) => panic!("unexpected refusal {e}"),
        }
    }
    assert_eq!(accepted.len() + refused.len(), 50);
    // A refusal only happens with 8 waiting and 1 running.
    assert!(
        refused.is_empty() || accepted.len() >= 9,
        "{}",
        accepted.len()
    );
    let accepted: Vec<(usize, JobId)> = {
        let mut ids = Vec::new();
        for (n, h) in accepted {
            let id = h.id().clone();
            assert_eq!(result_of(h).await, Ok(json!(n)), "job {n}");
            ids.push((n, id));
        }
        ids
    };
    let executions = executions.lock().unwrap().clone();
    for (n, _) in &accepted {
        assert_eq!(executions.get(n), Some(&1), "job {n} ran {executions:?}");
    }
    for n in &refused {
        assert_eq!(executions.get(n), None, "refused job {n} ran");
    }
    // First come, first served: jobs began in admission (seq) order.
    let seq_of: HashMap<usize, u64> = accepted
        .iter()
        .map(|(n, id)| (*n, q.status(id.as_str()).unwrap().seq))
        .collect();
    let seqs: Vec<u64> = start_order
        .lock()
        .unwrap()
        .iter()
        .map(|n| seq_of[n])
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let m = q.metrics();
    assert_eq!(m.done as usize, accepted.len());
    assert_eq!(m.rejected as usize, refused.len());
}

#[tokio::test]
async fn a_cancelled_waiting_job_never_runs_and_the_queue_moves_on() {
    let q = queue(8, 1);
    let (_, release) = blocker(&q);
    let ran = Arc::new(AtomicUsize::new(0));
    let victim = {
        let ran = ran.clone();
        submit(&q, "victim", move |_| {
            ran.fetch_add(1, Ordering::SeqCst);
            Ok(json!("should not run"))
        })
        .unwrap()
    };
    let after = submit(&q, "after", |_| Ok(json!("after"))).unwrap();
    assert_eq!(q.status(after.id().as_str()).unwrap().position, Some(2));
    assert!(q.cancel(victim.id().as_str()));
    let st = q.status(victim.id().as_str()).unwrap();
    assert_eq!(st.state, JobState::Cancelled);
    assert_eq!(st.error.map(|e| e.kind), Some(FailureKind::Cancelled));
    assert_eq!(q.status(after.id().as_str()).unwrap().position, Some(1));
    assert!(
        !q.cancel(victim.id().as_str()),
        "second cancel reported success"
    );
    release.send(()).unwrap();
    assert_eq!(result_of(after).await, Ok(json!("after")));
    assert!(matches!(
        result_of(victim).await,
        Err(WaitError::Cancelled(_))
    ));
    assert_eq!(ran.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_cancelled_running_job_stops_within_one_step_and_frees_its_slot() {
    let q = queue(8, 1);
    let begun = Arc::new(AtomicUsize::new(0));
    let long = submit(
        &q,
        "long",
        stepping_job(100_000, Duration::from_millis(2), begun.clone()),
    )
    .unwrap();
    let long_id = long.id().clone();
    let next = submit(&q, "next", |_| Ok(json!("next ran"))).unwrap();
    let mut events = q.subscribe(long_id.as_str()).unwrap();
    until_step(&mut events, 3).await;
    let before_cancel = begun.load(Ordering::SeqCst);
    assert!(q.cancel(long_id.as_str()));
    match result_of(long).await {
        Err(WaitError::Cancelled(e)) => assert_eq!(e.kind, FailureKind::Cancelled),
        other => panic!("expected cancelled, got {other:?}"),
    }
    // At most the step already past its check when the token was set.
    let after = begun.load(Ordering::SeqCst);
    assert!(after <= before_cancel + 1, "{before_cancel} -> {after}");
    assert_eq!(result_of(next).await, Ok(json!("next ran")));
    assert_eq!(
        q.status(long_id.as_str()).unwrap().state,
        JobState::Cancelled
    );
    assert_eq!(q.metrics().cancelled, 1);
}

#[tokio::test]
async fn a_wait_that_times_out_cancels_the_job() {
    let q = queue(8, 1);
    let begun = Arc::new(AtomicUsize::new(0));
    let h = submit(
        &q,
        "slow",
        stepping_job(100_000, Duration::from_millis(2), begun),
    )
    .unwrap();
    let id = h.id().clone();
    match guarded("short wait", h.wait(Duration::from_millis(50))).await {
        Err(WaitError::Timeout { id: timed_out, .. }) => assert_eq!(timed_out, id),
        other => panic!("expected timeout, got {other:?}"),
    }
    let events = all_events(q.subscribe(id.as_str()).unwrap()).await;
    match events.last() {
        Some(JobEvent::Cancelled { error }) => assert_eq!(error.kind, FailureKind::Timeout),
        other => panic!("expected cancelled last, got {other:?}"),
    }
    assert_eq!(q.status(id.as_str()).unwrap().state, JobState::Cancelled);
}

#[tokio::test]
async fn dropping_the_guard_of_an_abandoned_request_cancels_its_job() {
    let q = queue(8, 1);
    let begun = Arc::new(AtomicUsize::new(0));
    let h = submit(
        &q,
        "sync request",
        stepping_job(100_000, Duration::from_millis(2), begun),
    )
    .unwrap();
    let mut events = q.subscribe(h.id().as_str()).unwrap();
    // What a synchronous handler does; aborting it is what axum does on disconnect.
    let handler = {
        let q = q.clone();
        tokio::spawn(async move {
            let guard = q.guard(h.id());
            let out = h.wait(HANG_GUARD).await;
            guard.disarm();
            out
        })
    };
    until_step(&mut events, 2).await;
    handler.abort();
    assert!(guarded("aborted handler", handler).await.is_err());
    let rest = all_events(events).await;
    match rest.last() {
        Some(JobEvent::Cancelled { error }) => assert_eq!(error.kind, FailureKind::Cancelled),
        other => panic!("expected cancelled last, got {other:?}"),
    }
}

#[tokio::test]
async fn a_disarmed_guard_leaves_the_job_alone() {
    let q = queue(8, 1);
    let (h, release) = blocker(&q);
    let id = h.id().clone();
    q.guard(&id).disarm();
    release.send(()).unwrap();
    assert_eq!(result_of(h).await, Ok(json!("blocker done")));
    // Dropping an armed guard after the job finished is harmless too.
    drop(q.guard(&id));
    assert_eq!(q.status(id.as_str()).unwrap().state, JobState::Done);
}

#[tokio::test]
async fn a_subscriber_sees_queued_started_every_step_and_done_in_order() {
    let q = queue(8, 1);
    let (_, release) = blocker(&q);
    let id = submit(
        &q,
        "watched",
        stepping_job(5, Duration::from_millis(1), Arc::default()),
    )
    .unwrap()
    .id()
    .clone();
    let events = q.subscribe(id.as_str()).unwrap();
    release.send(()).unwrap();
    let events = all_events(events).await;
    assert_eq!(events.first(), Some(&JobEvent::Queued { position: 1 }));
    assert_eq!(events.get(1), Some(&JobEvent::Started));
    let steps: Vec<(usize, usize)> = events
        .iter()
        .filter_map(|e| match e {
            JobEvent::Progress { step, total, .. } => Some((*step, *total)),
            _ => None,
        })
        .collect();
    assert_eq!(steps, (1..=5).map(|s| (s, 5)).collect::<Vec<_>>());
    assert_eq!(events.len(), 2 + 5 + 1, "{events:?}");
    assert_eq!(
        events.last(),
        Some(&JobEvent::Done {
            result: json!({ "steps": 5 })
        })
    );
    // A late subscriber gets the outcome at once and the stream ends.
    let late = all_events(q.subscribe(id.as_str()).unwrap()).await;
    assert_eq!(
        late,
        vec![JobEvent::Done {
            result: json!({ "steps": 5 })
        }]
    );
    assert!(q.subscribe("no-such-job").is_none());
}

#[tokio::test]
async fn a_waiting_subscriber_hears_each_new_position() {
    let q = queue(8, 1);
    let (_, release) = blocker(&q);
    let a = submit(&q, "a", |_| Ok(json!("a"))).unwrap().id().clone();
    let b = submit(&q, "b", |_| Ok(json!("b"))).unwrap().id().clone();
    let c = submit(&q, "c", |_| Ok(json!("c"))).unwrap();
    let mut events = q.subscribe(c.id().as_str()).unwrap();
    assert_eq!(
        next_event(&mut events).await,
        Some(JobEvent::Queued { position: 3 })
    );
    assert!(q.cancel(a.as_str()));
    assert_eq!(
        next_event(&mut events).await,
        Some(JobEvent::Queued { position: 2 })
    );
    assert!(q.cancel(b.as_str()));
    assert_eq!(
        next_event(&mut events).await,
        Some(JobEvent::Queued { position: 1 })
    );
    release.send(()).unwrap();
    let rest = all_events(events).await;
    assert_eq!(
        rest,
        vec![JobEvent::Started, JobEvent::Done { result: json!("c") }]
    );
}

#[tokio::test]
async fn a_panicking_job_fails_and_the_queue_keeps_working() {
    let q = queue(8, 1);
    let bad = submit(&q, "bad", |_| -> Result<Value, JobFailure> {
        panic!("the painter dropped the brush")
    })
    .unwrap();
    let good = submit(&q, "good", |_| Ok(json!("fine"))).unwrap();
    match result_of(bad).await {
        Err(WaitError::Failed(e)) => {
            assert_eq!(e.kind, FailureKind::Internal);
            assert!(e.message.contains("dropped the brush"), "{}", e.message);
        }
        other => panic!("expected failed, got {other:?}"),
    }
    assert_eq!(result_of(good).await, Ok(json!("fine")));
    let m = q.metrics();
    assert_eq!((m.failed, m.done, m.running), (1, 1, 0));
}

#[tokio::test]
async fn an_engine_failure_comes_back_typed_and_is_recorded_with_its_kind() {
    let q = queue(8, 1);
    let spec = JobSpec::new("test", "invalid").owner("player-1");
    let h = q
        .submit(spec, |_| -> Result<Value, EngineError> {
            Err(EngineError::invalid("steps", "must be at most 150"))
        })
        .unwrap();
    let id = h.id().clone();
    match guarded("wait", h.wait(HANG_GUARD)).await {
        Err(WaitError::Job(EngineError::InvalidInput { field, .. })) => assert_eq!(field, "steps"),
        other => panic!("expected the engine's own error, got {other:?}"),
    }
    let st = q.status(id.as_str()).unwrap();
    let failure = st.error.clone().expect("a recorded failure");
    assert_eq!(failure.kind, FailureKind::Invalid);
    assert_eq!(failure.field.as_deref(), Some("steps"));
    assert_eq!(st.state, JobState::Failed);
    assert_eq!(st.owner.as_deref(), Some("player-1"));
    let json = serde_json::to_value(&st).unwrap();
    assert_eq!(json["state"], "failed");
    assert_eq!(json["error"]["kind"], "invalid");
    assert!(json.get("result").is_none());
}

#[tokio::test]
async fn shutdown_cancels_waiting_jobs_refuses_new_ones_and_drains() {
    let q = queue(8, 1);
    let (running, release) = blocker(&q);
    let running = running.id().clone();
    let waiting = submit(&q, "waiting", |_| Ok(json!(1))).unwrap();
    q.shutdown(false);
    assert_eq!(
        q.status(waiting.id().as_str()).unwrap().state,
        JobState::Cancelled
    );
    assert!(matches!(
        submit(&q, "late", |_| Ok(json!(1))),
        Err(QueueError::ShuttingDown)
    ));
    assert_eq!(q.status(running.as_str()).unwrap().state, JobState::Running);
    release.send(()).unwrap();
    guarded("drain", q.drained()).await;
    assert_eq!(q.status(running.as_str()).unwrap().state, JobState::Done);
    assert!(!q.metrics().accepting);
}

/// Captured log output, for the span test.
#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_log_line_of_a_job_thread_names_its_job() {
    let logs = LogBuffer::default();
    let writer = logs.clone();
    // Global: the job runs on a thread of its own, which a thread-local default would miss.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber");
    let q = queue(8, 1);
    let h = q
        .submit(JobSpec::new("portrait.test", "logged"), |_| {
            tracing::info!("painting the portrait");
            Ok::<_, JobFailure>(json!("painted"))
        })
        .unwrap();
    let id = h.id().clone();
    assert_eq!(result_of(h).await, Ok(json!("painted")));
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains("painting the portrait"))
        .unwrap_or_else(|| panic!("the job's line was not logged: {text}"));
    assert!(line.contains(id.as_str()), "{line}");
    assert!(line.contains("portrait.test"), "{line}");
}
