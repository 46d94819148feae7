//! What a portrait will cost on this machine: a running measurement per model and device of
//! seconds per UNet step per megapixel (and of the decode after the last step, per output
//! megapixel), taken from every generation's progress callbacks, finished or not, and the
//! estimate of a job from it. Nothing is known before the first job of a model has run a step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::Serialize;

use super::options::{GenerateOptions, PreparedPortrait};
use super::{PortraitError, PortraitService};
use crate::engine::{Progress, ValidRequest};

/// Weight of the newest job in the running measurement (an exponential moving average, so a
/// model loaded on first use or a busy machine fades out after a few jobs).
const NEWEST_WEIGHT: f64 = 0.3;

/// One pass of a job: (steps that report progress, megapixels per step).
type Pass = (usize, f64);

/// The denoising passes of `request`, with the engine's step counts (those of the progress
/// callbacks) and megapixels; none for a request the engine would refuse.
pub fn passes(request: &ValidRequest) -> Vec<Pass> {
    let batch = request.batch_size().max(1);
    request
        .passes()
        .unwrap_or_default()
        .iter()
        .map(|p| (p.steps, (p.width * p.height * batch) as f64 / 1e6))
        .collect()
}

/// Megapixel-steps of the first `done` steps of `passes`.
fn work(passes: &[Pass], done: usize) -> f64 {
    let mut left = done;
    let mut total = 0.0;
    for &(steps, mp) in passes {
        let n = left.min(steps);
        total += n as f64 * mp;
        left -= n;
    }
    total
}

/// The output megapixels (the last pass's size), what the decode after the last step scales with.
fn output_mp(passes: &[Pass]) -> f64 {
    passes.last().map_or(0.0, |p| p.1)
}

#[derive(Debug, Clone, Copy, Default)]
struct Rate {
    /// Seconds per UNet step per megapixel.
    step: Option<f64>,
    /// Seconds after the last step (VAE decode, encoding) per output megapixel.
    decode: Option<f64>,
    /// Jobs that contributed.
    jobs: u64,
}

fn blend(old: Option<f64>, new: f64) -> f64 {
    match old {
        Some(o) => o * (1.0 - NEWEST_WEIGHT) + new * NEWEST_WEIGHT,
        None => new,
    }
}

/// What the estimate endpoint answers.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Estimate {
    /// The estimated wall time in seconds, `None` until a job of this model has been measured.
    pub seconds: Option<f64>,
    /// The measurement it comes from.
    pub seconds_per_megapixel_step: Option<f64>,
    /// Megapixel-steps of the job (both passes).
    pub megapixel_steps: f64,
    /// Jobs of this model measured on this device so far.
    pub measured_jobs: u64,
}

/// The running measurements of one server, keyed by model and device.
#[derive(Debug, Default)]
pub struct SpeedBook {
    device: Mutex<String>,
    rates: Mutex<HashMap<(String, String), Rate>>,
}

impl SpeedBook {
    /// Names the device the measurements are taken on ("cpu", "gpu").
    pub fn set_device(&self, device: &str) {
        *self.device.lock().unwrap_or_else(|e| e.into_inner()) = device.to_string();
    }

    pub fn device(&self) -> String {
        self.device
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn key(&self, model: &str) -> (String, String) {
        (model.to_string(), self.device())
    }

    /// The estimate of a job with these passes on `model`.
    pub fn estimate(&self, model: &str, passes: &[Pass]) -> Estimate {
        let rate = self
            .rates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&self.key(model))
            .copied()
            .unwrap_or_default();
        let total = work(passes, usize::MAX);
        Estimate {
            seconds: rate
                .step
                .map(|s| s * total + rate.decode.unwrap_or(0.0) * output_mp(passes)),
            seconds_per_megapixel_step: rate.step,
            megapixel_steps: total,
            measured_jobs: rate.jobs,
        }
    }

    /// Starts measuring a job; feed it every progress callback, then [`Meter::finish`].
    pub fn meter(self: &Arc<Self>, model: &str, passes: Vec<Pass>) -> Meter {
        Meter {
            book: self.clone(),
            model: model.to_string(),
            passes,
            started: Instant::now(),
            steps: Arc::new(Mutex::new(Vec::new())),
        }
    }

    fn record(&self, model: &str, step: Option<f64>, decode: Option<f64>) {
        let mut rates = self.rates.lock().unwrap_or_else(|e| e.into_inner());
        let r = rates.entry(self.key(model)).or_default();
        if let Some(s) = step {
            r.step = Some(blend(r.step, s));
        }
        if let Some(d) = decode {
            r.decode = Some(blend(r.decode, d));
        }
        r.jobs += 1;
    }
}

impl PortraitService {
    /// What a prepared portrait will cost on this machine (from the measured speed).
    pub fn estimate(&self, prepared: &PreparedPortrait) -> Estimate {
        self.speed()
            .estimate(&prepared.model, &passes(&prepared.request))
    }

    /// Resolves a txt2img portrait's settings as [`PortraitService::prepare_generate`] would,
    /// for no particular character (the template around an empty subject), to estimate it.
    pub fn prepare_estimate(
        &self,
        opts: GenerateOptions,
    ) -> Result<PreparedPortrait, PortraitError> {
        self.prepare_txt2img(None, opts)
    }
}

/// Timing of one running job.
pub struct Meter {
    book: Arc<SpeedBook>,
    model: String,
    passes: Vec<Pass>,
    started: Instant,
    /// (steps done, when) per progress callback.
    steps: Arc<Mutex<Vec<(usize, Instant)>>>,
}

impl Meter {
    /// Wraps a progress callback so each step is timed.
    pub fn wrap(
        &self,
        mut inner: Box<dyn FnMut(Progress) + Send>,
    ) -> Box<dyn FnMut(Progress) + Send> {
        let steps = self.steps.clone();
        Box::new(move |p: Progress| {
            steps
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((p.step, Instant::now()));
            inner(p)
        })
    }

    /// Records the job: the time between its first and last step callbacks per megapixel-step
    /// in between (from the start for a one-step job), and, when it `completed`, the time after
    /// the last step. A job that ran no step records nothing.
    pub fn finish(self, completed: bool) {
        let steps = self.steps.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let (Some(&(first, t_first)), Some(&(last, t_last))) = (steps.first(), steps.last()) else {
            return;
        };
        let step = if last > first {
            let w = work(&self.passes, last) - work(&self.passes, first);
            (w > 0.0).then(|| (t_last - t_first).as_secs_f64() / w)
        } else {
            let w = work(&self.passes, last);
            (w > 0.0).then(|| (t_last - self.started).as_secs_f64() / w)
        };
        let out = output_mp(&self.passes);
        let decode = (completed && out > 0.0).then(|| t_last.elapsed().as_secs_f64() / out);
        self.book.record(&self.model, step, decode);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_fills_passes_in_order() {
        let p = [(10, 0.5), (4, 2.0)];
        assert_eq!(work(&p, 0), 0.0);
        assert_eq!(work(&p, 5), 2.5);
        assert_eq!(work(&p, 12), 5.0 + 4.0);
        assert_eq!(work(&p, usize::MAX), 5.0 + 8.0);
        assert_eq!(output_mp(&p), 2.0);
    }

    #[test]
    fn nothing_is_estimated_before_a_measurement_and_the_rate_scales_with_the_work() {
        let book = Arc::new(SpeedBook::default());
        book.set_device("cpu");
        let small = vec![(10, 0.25)];
        assert_eq!(book.estimate("m", &small).seconds, None);
        book.record("m", Some(2.0), Some(1.0));
        let e = book.estimate("m", &small);
        assert_eq!(e.seconds, Some(2.0 * 2.5 + 0.25));
        let big = vec![(20, 0.25), (10, 1.0)];
        assert_eq!(book.estimate("m", &big).seconds, Some(2.0 * 15.0 + 1.0));
        // Per model and device.
        assert_eq!(book.estimate("other", &small).seconds, None);
        book.set_device("gpu");
        assert_eq!(book.estimate("m", &small).seconds, None);
    }

    #[test]
    fn a_meter_measures_steps_and_a_job_without_steps_records_nothing() {
        let book = Arc::new(SpeedBook::default());
        let meter = book.meter("m", vec![(3, 1.0)]);
        meter.finish(true);
        assert_eq!(book.estimate("m", &[(1, 1.0)]).measured_jobs, 0);

        let meter = book.meter("m", vec![(3, 1.0)]);
        let mut cb = meter.wrap(Box::new(|_| {}));
        for step in 1..=3 {
            std::thread::sleep(std::time::Duration::from_millis(2));
            cb(Progress::new(step, 3, meter.started.elapsed()));
        }
        drop(cb);
        meter.finish(false);
        let e = book.estimate("m", &[(1, 1.0)]);
        assert_eq!(e.measured_jobs, 1);
        assert!(e.seconds_per_megapixel_step.unwrap() > 0.0);
    }
}
