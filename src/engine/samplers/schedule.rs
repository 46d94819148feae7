//! Inference schedules: which training timesteps a run visits and the noise levels (sigmas) at
//! them, computed value for value as diffusers' schedulers compute them — numpy's `arange`,
//! `linspace`, `interp` and round-half-to-even included — so the UNet sees the same timesteps.

use super::config::{linspace, SchedulerConfig, Spacing};
use super::names::SchedulerKind;
use super::noise_schedules::{
    a1111_sigmas, beta_sigmas, exponential_sigmas, karras_sigmas, sigma_to_t, train_sigmas,
    TrainSigmas,
};
use crate::engine::error::Result;

/// The timesteps a run visits and the sigma before each step; `sigmas` has one more entry (the
/// noise level after the last step).
#[derive(Debug, Clone)]
pub(crate) struct SigmaSchedule {
    pub timesteps: Vec<f64>,
    pub sigmas: Vec<f64>,
}

/// The three families of timestep rules diffusers' schedulers use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimestepRule {
    /// Euler, Euler a, Heun, LMS: fractional linspace timesteps (stored as float32).
    Sigma,
    /// DDIM: integer timesteps.
    Ddim,
    /// DPM-Solver and UniPC: `steps + 1` points with the last (t = 0) dropped.
    Multistep,
}

/// numpy's `arange(start, stop, step)` for floats: `ceil((stop - start) / step)` values, the
/// i-th being `start + i * ((start + step) - start)` (numpy's fill recomputes the step that way,
/// which decides ties when the values are rounded afterwards).
fn arange(start: f64, stop: f64, step: f64) -> Vec<f64> {
    let len = ((stop - start) / step).ceil().max(0.0) as usize;
    let delta = (start + step) - start;
    (0..len)
        .map(|i| match i {
            0 => start,
            1 => start + step,
            _ => start + i as f64 * delta,
        })
        .collect()
}

/// Training timesteps for `steps` inference steps, highest first, as diffusers'
/// `set_timesteps` computes them for `rule` and `spacing`. `last_timestep` is the training
/// length (DPM-Solver may clip it).
pub(crate) fn timesteps(
    rule: TimestepRule,
    spacing: Spacing,
    num_train: usize,
    last_timestep: usize,
    steps: usize,
    steps_offset: usize,
) -> Vec<f64> {
    let n_train = num_train as f64;
    let offset = steps_offset as f64;
    let mut ts: Vec<f64> = match (rule, spacing) {
        (TimestepRule::Sigma, Spacing::Linspace) => {
            let mut v = linspace(0.0, n_train - 1.0, steps);
            v.reverse();
            v
        }
        (TimestepRule::Ddim, Spacing::Linspace) => {
            let mut v: Vec<f64> = linspace(0.0, n_train - 1.0, steps)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            v.reverse();
            v
        }
        (TimestepRule::Multistep, Spacing::Linspace) => {
            let mut v: Vec<f64> = linspace(0.0, last_timestep as f64 - 1.0, steps + 1)
                .into_iter()
                .map(f64::round_ties_even)
                .collect();
            v.reverse();
            v.pop();
            v
        }
        (TimestepRule::Sigma | TimestepRule::Ddim, Spacing::Leading) => {
            let ratio = num_train / steps;
            (0..steps)
                .rev()
                .map(|i| (i * ratio) as f64 + offset)
                .collect()
        }
        (TimestepRule::Multistep, Spacing::Leading) => {
            let ratio = last_timestep / (steps + 1);
            (1..=steps)
                .rev()
                .map(|i| (i * ratio) as f64 + offset)
                .collect()
        }
        (_, Spacing::Trailing) => {
            let start = match rule {
                TimestepRule::Multistep => last_timestep as f64,
                _ => n_train,
            };
            arange(start, 0.0, -(n_train / steps as f64))
                .into_iter()
                .map(|t| t.round_ties_even() - 1.0)
                .collect()
        }
    };
    // numpy's arange yields one extra, ~0 value for a few step counts (61, 103, 121, 122 of
    // 1000), which diffusers then runs as timestep -1; we keep the `steps` the caller asked for.
    ts.truncate(steps);
    if rule == TimestepRule::Sigma {
        // Euler-type schedulers store their timesteps as float32.
        ts.iter_mut().for_each(|t| *t = *t as f32 as f64);
    }
    ts
}

/// numpy's `interp(x, arange(len(fp)), fp)`: linear, clamped at both ends.
pub(crate) fn interp(x: f64, fp: &[f64]) -> f64 {
    let last = fp.len() - 1;
    if x <= 0.0 {
        return fp[0];
    }
    if x >= last as f64 {
        return fp[last];
    }
    let j = x.floor() as usize;
    (fp[j + 1] - fp[j]) * (x - j as f64) + fp[j]
}

fn to_f32_precision(v: &mut [f64]) {
    v.iter_mut().for_each(|x| *x = *x as f32 as f64);
}

/// What "Automatic" means for a diffusers sampler: the sigma spread the model's scheduler
/// config asks for (`use_karras_sigmas`, `use_exponential_sigmas`, `use_beta_sigmas`).
pub(crate) fn resolve_automatic(
    config: &SchedulerConfig,
    scheduler: SchedulerKind,
) -> SchedulerKind {
    if scheduler != SchedulerKind::Automatic {
        return scheduler;
    }
    if config.use_karras_sigmas == Some(true) {
        SchedulerKind::Karras
    } else if config.use_exponential_sigmas == Some(true) {
        SchedulerKind::Exponential
    } else if config.use_beta_sigmas == Some(true) {
        SchedulerKind::Beta
    } else {
        SchedulerKind::Automatic
    }
}

/// diffusers' `_convert_to_karras` / `_convert_to_exponential` / `_convert_to_beta`: `steps`
/// sigmas between `sigma_max` and `sigma_min`; `None` for schedules diffusers does not have.
fn diffusers_conversion(
    scheduler: SchedulerKind,
    sigma_min: f64,
    sigma_max: f64,
    steps: usize,
) -> Option<Vec<f64>> {
    match scheduler {
        SchedulerKind::Karras => Some(karras_sigmas(sigma_min, sigma_max, steps)),
        SchedulerKind::Exponential => Some(exponential_sigmas(sigma_min, sigma_max, steps)),
        SchedulerKind::Beta => Some(beta_sigmas(sigma_min, sigma_max, steps)),
        _ => None,
    }
}

/// A1111's list for a schedule diffusers does not have, with the timesteps of all but its
/// last sigma (`round` for the integer-timestep multistep samplers).
fn a1111_schedule(
    scheduler: SchedulerKind,
    steps: usize,
    train: &[f64],
    round: bool,
) -> SigmaSchedule {
    let train = TrainSigmas::new(train.to_vec());
    let mut sigmas = a1111_sigmas(scheduler, steps, &train);
    to_f32_precision(&mut sigmas);
    let mut ts: Vec<f64> = sigmas[..sigmas.len() - 1]
        .iter()
        .map(|s| train.sigma_to_t(*s))
        .collect();
    if round {
        ts.iter_mut().for_each(|t| *t = t.round_ties_even());
    } else {
        to_f32_precision(&mut ts);
    }
    SigmaSchedule {
        timesteps: ts,
        sigmas,
    }
}

/// The schedule of Euler, Euler a, Heun and LMS (diffusers' `EulerDiscreteScheduler`):
/// sigmas interpolated at fractional timesteps; Karras, exponential or beta sigmas between the
/// first and last of those mapped back to fractional timesteps; or an A1111 schedule.
pub(crate) fn sigma_schedule(
    config: &SchedulerConfig,
    spacing: Spacing,
    steps: usize,
    scheduler: SchedulerKind,
    final_zero: bool,
) -> Result<SigmaSchedule> {
    let ac = config.alphas_cumprod(true)?;
    let train = train_sigmas(&ac);
    let n = train.len();
    let scheduler = resolve_automatic(config, scheduler);
    let mut ts = timesteps(
        TimestepRule::Sigma,
        spacing,
        n,
        n,
        steps,
        config.steps_offset,
    );
    let mut sigmas: Vec<f64> = ts.iter().map(|t| interp(*t, &train)).collect();
    if scheduler != SchedulerKind::Automatic {
        let converted = diffusers_conversion(scheduler, sigmas[sigmas.len() - 1], sigmas[0], steps);
        let Some(converted) = converted else {
            return Ok(a1111_schedule(scheduler, steps, &train, false));
        };
        let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
        sigmas = converted;
        ts = sigmas.iter().map(|s| sigma_to_t(*s, &log_sigmas)).collect();
        to_f32_precision(&mut ts);
    }
    sigmas.push(if final_zero { 0.0 } else { train[0] });
    to_f32_precision(&mut sigmas);
    Ok(SigmaSchedule {
        timesteps: ts,
        sigmas,
    })
}

/// The schedule of DPM-Solver++ and UniPC (diffusers' multistep schedulers): integer timesteps;
/// with Karras, exponential or beta sigmas over the whole training range, mapped back to
/// timesteps (rounded for Karras; diffusers truncates the others to integers); or an A1111
/// schedule at rounded timesteps.
pub(crate) fn multistep_schedule(
    config: &SchedulerConfig,
    spacing: Spacing,
    steps: usize,
    scheduler: SchedulerKind,
    final_zero: bool,
    lambda_min_clipped: Option<f64>,
) -> Result<SigmaSchedule> {
    let ac = config.alphas_cumprod(true)?;
    let train = train_sigmas(&ac);
    let n = train.len();
    let scheduler = resolve_automatic(config, scheduler);
    // Timesteps whose log-SNR lies below the clip are never visited.
    let clipped = match lambda_min_clipped {
        Some(min) => ac
            .iter()
            .filter(|a| {
                let lambda = a.sqrt().ln() - (1.0 - *a).sqrt().ln();
                lambda < min
            })
            .count(),
        None => 0,
    };
    let last_timestep = n - clipped.min(n - 1);
    let mut ts = timesteps(
        TimestepRule::Multistep,
        spacing,
        n,
        last_timestep,
        steps,
        config.steps_offset,
    );
    let (mut sigmas, last) = match diffusers_conversion(scheduler, train[0], train[n - 1], steps) {
        Some(sigmas) => {
            let log_sigmas: Vec<f64> = train.iter().map(|s| s.ln()).collect();
            let to_int = match scheduler {
                SchedulerKind::Karras => f64::round_ties_even,
                _ => f64::trunc,
            };
            ts = sigmas
                .iter()
                .map(|s| to_int(sigma_to_t(*s, &log_sigmas)))
                .collect();
            let last = sigmas[sigmas.len() - 1];
            (sigmas, last)
        }
        None if scheduler == SchedulerKind::Automatic => {
            (ts.iter().map(|t| interp(*t, &train)).collect(), train[0])
        }
        None => return Ok(a1111_schedule(scheduler, steps, &train, true)),
    };
    sigmas.push(if final_zero { 0.0 } else { last });
    to_f32_precision(&mut sigmas);
    Ok(SigmaSchedule {
        timesteps: ts,
        sigmas,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arange_matches_numpy_lengths() {
        assert_eq!(
            arange(1000.0, 0.0, -250.0),
            vec![1000.0, 750.0, 500.0, 250.0]
        );
        assert_eq!(arange(10.0, 0.0, -3.0).len(), 4);
    }

    #[test]
    fn trailing_spacing_keeps_the_requested_count_and_ends_near_zero() {
        for steps in 1..=150 {
            let ts = timesteps(TimestepRule::Sigma, Spacing::Trailing, 1000, 1000, steps, 0);
            assert_eq!(ts.len(), steps, "steps {steps}");
            assert_eq!(ts[0], 999.0);
            assert!(ts.windows(2).all(|w| w[0] > w[1]));
            assert!(ts[steps - 1] >= 0.0);
        }
        // SD-Turbo's single step and a 4-step run, by hand: round(1000 - i*250) - 1.
        let ts = timesteps(TimestepRule::Ddim, Spacing::Trailing, 1000, 1000, 4, 1);
        assert_eq!(ts, vec![999.0, 749.0, 499.0, 249.0]);
        let ts = timesteps(TimestepRule::Multistep, Spacing::Trailing, 1000, 1000, 1, 0);
        assert_eq!(ts, vec![999.0]);
    }

    #[test]
    fn leading_spacing_adds_the_offset() {
        let ts = timesteps(TimestepRule::Ddim, Spacing::Leading, 1000, 1000, 4, 1);
        assert_eq!(ts, vec![751.0, 501.0, 251.0, 1.0]);
        // DPM-Solver divides by steps + 1 and drops t = 0: ratio 1000 // 5 = 200.
        let ts = timesteps(TimestepRule::Multistep, Spacing::Leading, 1000, 1000, 4, 1);
        assert_eq!(ts, vec![801.0, 601.0, 401.0, 201.0]);
    }

    #[test]
    fn interp_is_linear_and_clamped() {
        let fp = [1.0, 3.0, 7.0];
        assert_eq!(interp(-1.0, &fp), 1.0);
        assert_eq!(interp(0.25, &fp), 1.5);
        assert_eq!(interp(1.5, &fp), 5.0);
        assert_eq!(interp(9.0, &fp), 7.0);
    }
}
