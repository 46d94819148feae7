//! k-diffusion's samplers that diffusers lacks, as AUTOMATIC1111 runs them: DPM2, DPM2 a,
//! DPM++ SDE, DPM++ 2M SDE (midpoint and Heun), DPM++ 3M SDE and Restart, on A1111's sigma
//! schedules (see `noise_schedules`), one UNet evaluation per `step` call (see `kplan`).
//!
//! Noise: every evaluation receives a fresh standard normal from the job's seeded stream. The
//! SDE samplers use it as the increments of a Brownian motion in sigma, as k-diffusion's
//! `BrownianTreeNoiseSampler` does: DPM++ SDE's two overlapping draws per step (sigma to the
//! midpoint, and sigma to the next sigma) are built from the two increments, so they are
//! correlated exactly as Brownian increments are. (torchsde's tree itself is not reproduced:
//! the same seed gives the same image here, not the same image as in A1111.)

use candle_core::Tensor;

use super::kplan::{ancestral, plan, Eval, Method, Segment};
use super::names::{SamplerKind, SchedulerKind};
use super::noise_schedules::{a1111_sigmas, train_sigmas, TrainSigmas};
use super::ops::lin;
use super::stepper::{need, Evaluation, Level, Setup, Stepper, Update};
use crate::engine::error::{EngineError, Result};

/// What the first evaluation of a two-evaluation segment leaves for the second.
struct Held {
    /// The sample the segment started from.
    x: Tensor,
    /// Restart (Heun): the first derivative. DPM++ SDE: the first Brownian increment.
    extra: Tensor,
}

/// A k-diffusion sampler's update rule over its planned evaluations.
pub(crate) struct KDiffusion {
    method: Method,
    name: &'static str,
    segments: Vec<Segment>,
    evals: Vec<Eval>,
    /// The evaluation each nominal step starts at (img2img's `start_index`).
    starts: Vec<usize>,
    uses_noise: bool,
    held: Option<Held>,
    /// Data predictions and log-sigma step sizes of the last steps, newest first (2M/3M SDE).
    history: Vec<(Tensor, f64)>,
}

pub(crate) type KSampler = Stepper<KDiffusion>;

/// The sigmas A1111 gives `kind` for `steps` steps: its schedule (Automatic: the sampler's
/// default), with one more step and the next-to-last sigma dropped for DPM2, DPM2 a and
/// DPM++ 3M SDE, rounded to f32 as k-diffusion computes them.
pub(crate) fn k_sigmas(
    kind: SamplerKind,
    scheduler: SchedulerKind,
    steps: usize,
    train: &TrainSigmas,
) -> Vec<f64> {
    let scheduler = match scheduler {
        SchedulerKind::Automatic => kind.automatic_schedule().unwrap_or(SchedulerKind::Uniform),
        s => s,
    };
    let discard = kind.discards_next_to_last_sigma();
    let mut sigmas = a1111_sigmas(scheduler, steps + usize::from(discard), train);
    if discard && sigmas.len() >= 3 {
        sigmas.remove(sigmas.len() - 2);
    }
    sigmas.iter_mut().for_each(|s| *s = *s as f32 as f64);
    sigmas
}

fn method_of(kind: SamplerKind) -> Option<Method> {
    Some(match kind {
        SamplerKind::Dpm2 => Method::Dpm2,
        SamplerKind::Dpm2A => Method::Dpm2Ancestral,
        SamplerKind::DpmPpSde => Method::DpmppSde,
        SamplerKind::DpmPp2mSde => Method::Dpmpp2mSde { heun: false },
        SamplerKind::DpmPp2mSdeHeun => Method::Dpmpp2mSde { heun: true },
        SamplerKind::DpmPp3mSde => Method::Dpmpp3mSde,
        SamplerKind::Restart => Method::Restart,
        _ => return None,
    })
}

impl KSampler {
    pub(crate) fn new(setup: &Setup, kind: SamplerKind) -> Result<Self> {
        let (config, scheduler, steps) = (setup.config, setup.scheduler, setup.steps);
        let method = method_of(kind).ok_or_else(|| {
            EngineError::invalid(
                "sampler",
                format!("{} is not a k-diffusion sampler", kind.name()),
            )
        })?;
        let train = TrainSigmas::new(train_sigmas(&config.alphas_cumprod(true)?));
        let sigmas = k_sigmas(kind, scheduler, steps, &train);
        let (segments, evals) = plan(method, &sigmas);
        let timesteps = evals
            .iter()
            .map(|e| train.sigma_to_t(e.sigma) as f32 as f64)
            .collect();
        // Nominal step k starts at the first main-path evaluation at or below sigma k.
        let nominal = sigmas.len() - 1;
        let starts = (0..nominal)
            .map(|k| {
                let target = sigmas[k] * (1.0 + 1e-6);
                evals
                    .iter()
                    .position(|e| !e.second && segments[e.segment].main && e.sigma <= target)
                    .unwrap_or(evals.len() - 1)
            })
            .collect();
        let uses_noise = match method {
            Method::Dpm2 => false,
            Method::Restart => segments.iter().any(|s| s.renoise > 0.0),
            _ => true,
        };
        let levels = evals.iter().map(|e| Level::Sigma(e.sigma)).collect();
        let rule = KDiffusion {
            method,
            name: kind.name(),
            segments,
            evals,
            starts,
            uses_noise,
            held: None,
            history: Vec::new(),
        };
        let prediction = config.prediction()?;
        Ok(Stepper::assemble(
            timesteps, levels, prediction, sigmas[0], rule,
        ))
    }
}

impl KDiffusion {
    /// The sample after the first (or only) evaluation of a segment.
    fn first(
        &mut self,
        seg: Segment,
        x: Tensor,
        den: Tensor,
        noise: Option<&Tensor>,
        single: bool,
    ) -> Result<Tensor> {
        let Segment { from, to, .. } = seg;
        let d = ((&x - &den)? / from)?;
        if single {
            return Ok(match self.method {
                // 2M / 3M SDE take every step here; onto sigma 0 they return the denoised sample.
                Method::Dpmpp2mSde { heun } => self.multistep_2m(seg, &x, den, noise, heun)?,
                Method::Dpmpp3mSde => self.multistep_3m(seg, &x, den, noise)?,
                // An Euler step (to sigma 0, or to sigma_down = 0 for DPM2 a).
                Method::Dpm2Ancestral => (&x + d.affine(ancestral(from, to).1 - from, 0.0)?)?,
                _ => (&x + d.affine(to - from, 0.0)?)?,
            });
        }
        let (x2, extra) = match self.method {
            Method::Dpm2 => (
                lin(&[(&x, 1.0), (&d, super::kplan::log_mid(from, to) - from)])?,
                d,
            ),
            Method::Dpm2Ancestral => {
                let down = ancestral(from, to).1;
                (
                    lin(&[(&x, 1.0), (&d, super::kplan::log_mid(from, down) - from)])?,
                    d,
                )
            }
            Method::DpmppSde => {
                let z1 = need(noise, self.name)?.clone();
                let mid = super::kplan::log_mid(from, to);
                let (up, down) = ancestral(from, mid);
                let ratio = down / from;
                let x2 = lin(&[(&x, ratio), (&den, -(ratio.ln()).exp_m1()), (&z1, up)])?;
                (x2, z1)
            }
            // Heun's predictor: an Euler step to `to`.
            _ => ((&x + d.affine(to - from, 0.0)?)?, d),
        };
        self.held = Some(Held { x, extra });
        Ok(x2)
    }

    /// The sample after the second evaluation of a segment, at noise level `sigma`.
    fn second(
        &mut self,
        seg: Segment,
        sigma: f64,
        x2: Tensor,
        den: Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Segment { from, to, .. } = seg;
        let held = self
            .held
            .take()
            .ok_or_else(|| EngineError::invalid("step", "second evaluation without a first"))?;
        let d2 = ((&x2 - &den)? / sigma)?;
        Ok(match self.method {
            Method::Dpm2 => lin(&[(&held.x, 1.0), (&d2, to - from)])?,
            Method::Dpm2Ancestral => {
                let (up, down) = ancestral(from, to);
                let z = need(noise, self.name)?;
                lin(&[(&held.x, 1.0), (&d2, down - from), (z, up)])?
            }
            Method::DpmppSde => {
                // r = 1/2 makes the combined data prediction the second one alone.
                let (up, down) = ancestral(from, to);
                let ratio = down / from;
                // The Brownian increment from `from` to `to`: both halves, normalised.
                let z2 = need(noise, self.name)?;
                let (a, b) = ((from - sigma).max(0.0).sqrt(), (sigma - to).max(0.0).sqrt());
                let norm = (from - to).sqrt();
                lin(&[
                    (&held.x, ratio),
                    (&den, -(ratio.ln()).exp_m1()),
                    (&held.extra, up * a / norm),
                    (z2, up * b / norm),
                ])?
            }
            // Heun's corrector: the mean of both slopes over the whole segment.
            _ => lin(&[
                (&held.x, 1.0),
                (&held.extra, (to - from) / 2.0),
                (&d2, (to - from) / 2.0),
            ])?,
        })
    }

    /// One DPM-Solver++(2M) SDE step (eta 1), k-diffusion's `sample_dpmpp_2m_sde`.
    fn multistep_2m(
        &mut self,
        seg: Segment,
        x: &Tensor,
        den: Tensor,
        noise: Option<&Tensor>,
        heun: bool,
    ) -> Result<Tensor> {
        let Segment { from, to, .. } = seg;
        if to == 0.0 {
            return Ok(den);
        }
        let h = from.ln() - to.ln();
        let decay = -(-2.0 * h).exp_m1();
        let mut terms: Vec<(&Tensor, f64)> = vec![(x, to / from * (-h).exp()), (&den, decay)];
        let diff;
        if let Some((old, h_last)) = self.history.first() {
            let r = h_last / h;
            let c = if heun {
                decay / (-2.0 * h) + 1.0
            } else {
                0.5 * decay
            };
            diff = (&den - old)?;
            terms.push((&diff, c / r));
        }
        let z = need(noise, self.name)?;
        terms.push((z, to * decay.sqrt()));
        let next = lin(&terms)?;
        self.remember(den, h);
        Ok(next)
    }

    /// One DPM-Solver++(3M) SDE step (eta 1), k-diffusion's `sample_dpmpp_3m_sde`.
    fn multistep_3m(
        &mut self,
        seg: Segment,
        x: &Tensor,
        den: Tensor,
        noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let Segment { from, to, .. } = seg;
        if to == 0.0 {
            return Ok(den);
        }
        let h = from.ln() - to.ln();
        let h_eta = 2.0 * h;
        let phi_2 = (-h_eta).exp_m1() / h_eta + 1.0;
        let mut terms: Vec<(&Tensor, f64)> = vec![(x, (-h_eta).exp()), (&den, -(-h_eta).exp_m1())];
        let (d1_0, d1_1);
        match self.history.as_slice() {
            [(den_1, h_1), (den_2, h_2), ..] => {
                let (r0, r1) = (h_1 / h, h_2 / h);
                d1_0 = ((&den - den_1)? / r0)?;
                d1_1 = ((den_1 - den_2)? / r1)?;
                let phi_3 = phi_2 / h_eta - 0.5;
                // phi_2 * d1 - phi_3 * d2 with d1 = d1_0 + (d1_0 - d1_1) r0 / (r0 + r1) and
                // d2 = (d1_0 - d1_1) / (r0 + r1).
                let s = r0 + r1;
                terms.push((&d1_0, phi_2 * (1.0 + r0 / s) - phi_3 / s));
                terms.push((&d1_1, -phi_2 * r0 / s + phi_3 / s));
            }
            [(den_1, h_1)] => {
                d1_0 = ((&den - den_1)? / (h_1 / h))?;
                terms.push((&d1_0, phi_2));
            }
            [] => {}
        }
        let z = need(noise, self.name)?;
        terms.push((z, to * (-(-2.0 * h).exp_m1()).sqrt()));
        let next = lin(&terms)?;
        self.remember(den, h);
        Ok(next)
    }

    fn remember(&mut self, den: Tensor, h: f64) {
        self.history.insert(0, (den, h));
        self.history.truncate(2);
    }
}

impl Update for KDiffusion {
    fn needs_step_noise(&self) -> bool {
        self.uses_noise
    }

    fn order(&self) -> usize {
        match self.method {
            Method::Dpm2 | Method::Dpm2Ancestral | Method::DpmppSde | Method::Restart => 2,
            _ => 1,
        }
    }

    fn start_index(&self, t_start: usize) -> usize {
        self.starts
            .get(t_start)
            .copied()
            .unwrap_or(self.evals.len().saturating_sub(1))
    }

    fn update(&mut self, e: Evaluation) -> Result<Tensor> {
        let Evaluation {
            step, x, x0, noise, ..
        } = e;
        let eval = self.evals[step];
        if eval.second != self.held.is_some() {
            return Err(EngineError::invalid(
                "step",
                format!(
                    "{} step {step} is out of phase; runs start at a start_index",
                    self.name
                ),
            ));
        }
        let seg = self.segments[eval.segment];
        let mut next = if eval.second {
            self.second(seg, eval.sigma, x, x0, noise.as_ref())?
        } else {
            self.first(seg, x, x0, noise.as_ref(), eval.closes)?
        };
        if eval.closes && seg.renoise > 0.0 {
            // Restart jumps back up: fresh noise takes the sample to the next segment's level.
            next = (next + need(noise.as_ref(), self.name)?.affine(seg.renoise, 0.0)?)?;
        }
        Ok(next)
    }
}

#[cfg(test)]
#[path = "kdiffusion_tests.rs"]
mod tests;
