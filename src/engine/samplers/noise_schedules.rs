//! AUTOMATIC1111's noise schedules ("Schedule type"), value for value as A1111's
//! `modules/sd_schedulers.py` and k-diffusion's `get_sigmas_*` define them: each maps a step
//! count to a descending list of sigmas (normally ending at 0), given the model's training
//! sigmas as k-diffusion's `DiscreteSchedule` sees them.

use super::beta_dist::beta_ppf;
use super::config::linspace;
use super::names::SchedulerKind;

/// A1111's Align Your Steps sigmas for SD 1.x/2.x (NVIDIA's published 10-step schedule).
/// (A1111 has another list for SDXL, which this engine does not run.)
const AYS_SD15: [f64; 11] = [
    14.615, 6.475, 3.861, 2.697, 1.886, 1.396, 0.963, 0.652, 0.399, 0.152, 0.029,
];

/// The beta schedule's distribution parameters (A1111's `beta_dist_alpha` / `beta_dist_beta`
/// defaults, and diffusers').
pub(crate) const BETA_ALPHA: f64 = 0.6;
pub(crate) const BETA_BETA: f64 = 0.6;

/// The model's training noise levels, lowest (t = 0) first.
pub(crate) struct TrainSigmas {
    sigmas: Vec<f64>,
    log_sigmas: Vec<f64>,
}

impl TrainSigmas {
    pub(crate) fn new(sigmas: Vec<f64>) -> Self {
        let log_sigmas = sigmas.iter().map(|s| s.ln()).collect();
        Self { sigmas, log_sigmas }
    }

    pub(crate) fn sigma_min(&self) -> f64 {
        self.sigmas[0]
    }

    pub(crate) fn sigma_max(&self) -> f64 {
        self.sigmas[self.sigmas.len() - 1]
    }

    /// k-diffusion's `sigma_to_t`: the fractional timestep, interpolated in log sigma.
    pub(crate) fn sigma_to_t(&self, sigma: f64) -> f64 {
        sigma_to_t(sigma, &self.log_sigmas)
    }

    /// k-diffusion's `t_to_sigma`: log-linear interpolation between neighbouring timesteps.
    pub(crate) fn t_to_sigma(&self, t: f64) -> f64 {
        let last = self.log_sigmas.len() - 1;
        let t = t.clamp(0.0, last as f64);
        let (low, high) = (t.floor() as usize, t.ceil() as usize);
        let w = t - t.floor();
        ((1.0 - w) * self.log_sigmas[low] + w * self.log_sigmas[high]).exp()
    }
}

/// `sqrt((1 - alpha_bar) / alpha_bar)` for every training timestep.
pub(crate) fn train_sigmas(alphas_cumprod: &[f64]) -> Vec<f64> {
    alphas_cumprod
        .iter()
        .map(|a| ((1.0 - a) / a).sqrt())
        .collect()
}

/// Karras et al. (2022) noise levels, rho = 7, from `sigma_max` down to `sigma_min`.
pub(crate) fn karras_sigmas(sigma_min: f64, sigma_max: f64, steps: usize) -> Vec<f64> {
    let rho = 7.0;
    let min_inv = sigma_min.powf(1.0 / rho);
    let max_inv = sigma_max.powf(1.0 / rho);
    linspace(0.0, 1.0, steps)
        .into_iter()
        .map(|r| (max_inv + r * (min_inv - max_inv)).powf(rho))
        .collect()
}

/// The fractional training timestep whose sigma is `sigma`: linear interpolation in log-sigma
/// between the two neighbouring training timesteps (diffusers' `_sigma_to_t`).
pub(crate) fn sigma_to_t(sigma: f64, log_sigmas: &[f64]) -> f64 {
    let log_sigma = sigma.max(1e-10).ln();
    let below = log_sigmas.iter().filter(|l| log_sigma - **l >= 0.0).count();
    let low = below.saturating_sub(1).min(log_sigmas.len() - 2);
    let high = low + 1;
    let w = ((log_sigmas[low] - log_sigma) / (log_sigmas[low] - log_sigmas[high])).clamp(0.0, 1.0);
    (1.0 - w) * low as f64 + w * high as f64
}

fn append_zero(mut v: Vec<f64>) -> Vec<f64> {
    v.push(0.0);
    v
}

/// `exp(linspace(ln sigma_max, ln sigma_min, n))` (k-diffusion's `get_sigmas_exponential`,
/// diffusers' `_convert_to_exponential`), without the final zero.
pub(crate) fn exponential_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace(sigma_max.ln(), sigma_min.ln(), n)
        .into_iter()
        .map(f64::exp)
        .collect()
}

/// Beta(0.6, 0.6) quantiles of `1 - linspace(0, 1, n)` spread over `[sigma_min, sigma_max]`
/// (A1111's `beta_scheduler`, diffusers' `_convert_to_beta`), without the final zero.
pub(crate) fn beta_sigmas(sigma_min: f64, sigma_max: f64, n: usize) -> Vec<f64> {
    linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| sigma_min + beta_ppf(1.0 - x, BETA_ALPHA, BETA_BETA) * (sigma_max - sigma_min))
        .collect()
}

/// numpy's `interp(x, xp, fp)` for increasing `xp`, clamped at both ends.
fn interp_xy(x: f64, xp: &[f64], fp: &[f64]) -> f64 {
    if x <= xp[0] {
        return fp[0];
    }
    let last = xp.len() - 1;
    if x >= xp[last] {
        return fp[last];
    }
    let j = xp.iter().rposition(|v| *v <= x).unwrap_or(0).min(last - 1);
    fp[j] + (fp[j + 1] - fp[j]) * (x - xp[j]) / (xp[j + 1] - xp[j])
}

/// A1111's Align Your Steps: the published 10-step list, log-linearly interpolated to `n`.
fn align_your_steps(n: usize) -> Vec<f64> {
    if n == AYS_SD15.len() {
        return append_zero(AYS_SD15.to_vec());
    }
    let xs = linspace(0.0, 1.0, AYS_SD15.len());
    let ys: Vec<f64> = AYS_SD15.iter().rev().map(|s| s.ln()).collect();
    let mut out: Vec<f64> = linspace(0.0, 1.0, n)
        .into_iter()
        .map(|x| interp_xy(x, &xs, &ys).exp())
        .collect();
    out.reverse();
    append_zero(out)
}

/// The sigmas A1111's scheduler `kind` gives for `n` steps. `Automatic` (A1111: the sampler's
/// default, else the model's own discrete schedule) is `Uniform` here; callers resolve a
/// sampler default first. Every list is descending and has `n + 1` entries ending at 0, except
/// `ddim` (one step per `1000 // n` training steps, which may be more than `n`) and
/// `kl_optimal` (which ends at `sigma_min`, as in A1111).
pub(crate) fn a1111_sigmas(kind: SchedulerKind, n: usize, train: &TrainSigmas) -> Vec<f64> {
    let (min, max) = (train.sigma_min(), train.sigma_max());
    let t_max = (train.sigmas.len() - 1) as f64;
    match kind {
        SchedulerKind::Automatic | SchedulerKind::Uniform => append_zero(
            linspace(t_max, 0.0, n)
                .into_iter()
                .map(|t| train.t_to_sigma(t))
                .collect(),
        ),
        SchedulerKind::Karras => append_zero(karras_sigmas(min, max, n)),
        SchedulerKind::Exponential => append_zero(exponential_sigmas(min, max, n)),
        SchedulerKind::Polyexponential => {
            // rho = 1 (A1111's default_rho): a straight line in log sigma.
            let rho = 1.0;
            append_zero(
                linspace(1.0, 0.0, n)
                    .into_iter()
                    .map(|r| (r.powf(rho) * (max.ln() - min.ln()) + min.ln()).exp())
                    .collect(),
            )
        }
        SchedulerKind::SgmUniform | SchedulerKind::Normal => {
            let (start, end) = (train.sigma_to_t(max), train.sigma_to_t(min));
            let ts = if kind == SchedulerKind::SgmUniform {
                let mut ts = linspace(start, end, n + 1);
                ts.pop();
                ts
            } else {
                linspace(start, end, n)
            };
            append_zero(ts.into_iter().map(|t| train.t_to_sigma(t)).collect())
        }
        SchedulerKind::KlOptimal => {
            let (a_min, a_max) = (min.atan(), max.atan());
            (0..=n)
                .map(|i| {
                    let f = i as f64 / n as f64;
                    (f * a_min + (1.0 - f) * a_max).tan()
                })
                .collect()
        }
        SchedulerKind::AlignYourSteps => align_your_steps(n),
        SchedulerKind::Simple => {
            let len = train.sigmas.len();
            let ss = len as f64 / n as f64;
            append_zero(
                (0..n)
                    .map(|x| train.sigmas[len - 1 - (x as f64 * ss) as usize])
                    .collect(),
            )
        }
        SchedulerKind::Ddim => {
            let len = train.sigmas.len();
            let ss = (len / n).max(1);
            let mut sigs: Vec<f64> = (1..len).step_by(ss).map(|x| train.sigmas[x]).collect();
            sigs.reverse();
            append_zero(sigs)
        }
        SchedulerKind::Beta => append_zero(beta_sigmas(min, max, n)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sd15() -> TrainSigmas {
        // Training sigmas do not depend on the steps offset.
        let ac = super::super::test_support::sd()
            .alphas_cumprod(true)
            .unwrap();
        TrainSigmas::new(train_sigmas(&ac))
    }

    #[test]
    fn t_to_sigma_and_sigma_to_t_are_inverse() {
        let train = sd15();
        for t in [0.0, 1.5, 250.25, 998.9, 999.0] {
            let back = train.sigma_to_t(train.t_to_sigma(t));
            assert!((back - t).abs() < 1e-9, "{t} -> {back}");
        }
    }

    #[test]
    fn every_schedule_descends_to_its_end() {
        let train = sd15();
        for kind in SchedulerKind::ALL {
            for n in [1, 2, 7, 10, 11, 20, 150] {
                let s = a1111_sigmas(kind, n, &train);
                let last = *s.last().unwrap();
                match kind {
                    SchedulerKind::Ddim => assert!(s.len() > n, "{kind:?} {n}"),
                    _ => assert_eq!(s.len(), n + 1, "{kind:?} {n}"),
                }
                if kind == SchedulerKind::KlOptimal {
                    assert!((last - train.sigma_min()).abs() < 1e-12);
                } else {
                    assert_eq!(last, 0.0, "{kind:?}");
                }
                assert!(
                    s.windows(2)
                        .all(|w| w[0] > w[1] || (n == 1 && w[0] >= w[1])),
                    "{kind:?} {n}: {s:?}"
                );
                assert!(
                    s[0] <= train.sigma_max() * (1.0 + 1e-9)
                        || kind == SchedulerKind::AlignYourSteps
                );
            }
        }
    }

    #[test]
    fn small_cases_by_hand() {
        let train = sd15();
        let (min, max) = (train.sigma_min(), train.sigma_max());
        // Two exponential steps: max, min, 0.
        let e = a1111_sigmas(SchedulerKind::Exponential, 2, &train);
        assert!((e[0] - max).abs() < 1e-9 && (e[1] - min).abs() < 1e-9);
        // Polyexponential with rho 1 is the exponential schedule.
        let p = a1111_sigmas(SchedulerKind::Polyexponential, 9, &train);
        let e = a1111_sigmas(SchedulerKind::Exponential, 9, &train);
        assert!(p.iter().zip(&e).all(|(a, b)| (a - b).abs() < 1e-9));
        // Simple with 4 steps visits training steps 999, 749, 499, 249.
        let s = a1111_sigmas(SchedulerKind::Simple, 4, &train);
        assert_eq!(
            &s[..4],
            &[
                train.sigmas[999],
                train.sigmas[749],
                train.sigmas[499],
                train.sigmas[249]
            ]
        );
        // DDIM with 4 steps: training steps 751, 501, 251, 1 (stride 250 from 1).
        let d = a1111_sigmas(SchedulerKind::Ddim, 4, &train);
        assert_eq!(
            &d[..4],
            &[
                train.sigmas[751],
                train.sigmas[501],
                train.sigmas[251],
                train.sigmas[1]
            ]
        );
        // 6 steps: stride 166 gives 7 steps (1, 167, ..., 997), as in A1111.
        assert_eq!(a1111_sigmas(SchedulerKind::Ddim, 6, &train).len(), 8);
        // Normal runs t from 999 to 0; SGM Uniform stops one stride short of 0.
        let n = a1111_sigmas(SchedulerKind::Normal, 3, &train);
        assert!((n[2] - min).abs() < 1e-9);
        let u = a1111_sigmas(SchedulerKind::SgmUniform, 3, &train);
        assert!((u[2] - train.t_to_sigma(333.0)).abs() < 1e-6);
        // Align Your Steps with as many steps as the published list has sigmas is that list;
        // other counts interpolate it in log sigma between the same ends.
        let a = a1111_sigmas(SchedulerKind::AlignYourSteps, 11, &train);
        assert_eq!(&a[..11], &AYS_SD15);
        let a = a1111_sigmas(SchedulerKind::AlignYourSteps, 10, &train);
        assert!((a[0] - 14.615).abs() < 1e-9 && (a[9] - 0.029).abs() < 1e-12);
        let b = a1111_sigmas(SchedulerKind::Beta, 5, &train);
        assert!((b[0] - max).abs() < 1e-9 && (b[4] - min).abs() < 1e-9);
        assert!((b[2] - (min + 0.5 * (max - min))).abs() < 1e-9);
    }

    #[test]
    fn karras_sigmas_hit_both_ends_and_follow_rho_7() {
        let s = karras_sigmas(0.1, 10.0, 3);
        assert!((s[0] - 10.0).abs() < 1e-12 && (s[2] - 0.1).abs() < 1e-12);
        let mid = ((10f64.powf(1.0 / 7.0) + 0.1f64.powf(1.0 / 7.0)) / 2.0).powi(7);
        assert!((s[1] - mid).abs() < 1e-12);
    }

    #[test]
    fn sigma_to_t_inverts_log_linear_interpolation() {
        let sig = [0.5f64, 1.0, 4.0];
        let logs: Vec<f64> = sig.iter().map(|s| s.ln()).collect();
        assert!((sigma_to_t(1.0, &logs) - 1.0).abs() < 1e-12);
        assert!((sigma_to_t(2.0, &logs) - 1.5).abs() < 1e-12); // halfway in log space
        assert_eq!(sigma_to_t(0.01, &logs), 0.0);
        assert_eq!(sigma_to_t(100.0, &logs), 2.0);
    }
}
