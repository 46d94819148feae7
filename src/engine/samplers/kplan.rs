//! The model evaluations a k-diffusion sampler makes, planned up front from its sigma list so
//! the pipeline can drive it one UNet call at a time: segments (`from -> to` noise levels) and
//! the one or two evaluations each takes, Restart's re-noised back-steps included
//! (A1111's `sd_samplers_extra.restart_sampler`).

use super::noise_schedules::karras_sigmas;

/// How a segment is solved; decides its evaluations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Method {
    /// DPM-Solver-2 steps (`sample_dpm_2`).
    Dpm2,
    /// DPM-Solver-2 steps to `sigma_down`, plus fresh noise (`sample_dpm_2_ancestral`).
    Dpm2Ancestral,
    /// DPM-Solver++ (stochastic), r = 1/2 (`sample_dpmpp_sde`).
    DpmppSde,
    /// DPM-Solver++(2M) SDE, midpoint or Heun correction (`sample_dpmpp_2m_sde`).
    Dpmpp2mSde { heun: bool },
    /// DPM-Solver++(3M) SDE (`sample_dpmpp_3m_sde`).
    Dpmpp3mSde,
    /// Heun steps with Restart's back-steps (`restart_sampler`).
    Restart,
}

/// One stretch of the solve, from noise level `from` down to `to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Segment {
    pub from: f64,
    pub to: f64,
    /// Noise to add after the segment (`sqrt(next.from² - to²)`), where Restart jumps back up.
    pub renoise: f64,
    /// False for Restart's repeated stretches (img2img starts only on the main path).
    pub main: bool,
}

/// One model evaluation: at noise level `sigma`, the first or second of segment `segment`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Eval {
    pub sigma: f64,
    pub segment: usize,
    pub second: bool,
    /// The last evaluation of its segment.
    pub closes: bool,
}

/// `(sigma_up, sigma_down)` of an ancestral step (k-diffusion's `get_ancestral_step`, eta 1).
pub(crate) fn ancestral(from: f64, to: f64) -> (f64, f64) {
    let up = (to * to * (from * from - to * to) / (from * from))
        .max(0.0)
        .sqrt()
        .min(to);
    let down = (to * to - up * up).max(0.0).sqrt();
    (up, down)
}

/// The noise level halfway in log sigma: `exp(lerp(ln a, ln b, 1/2))`.
pub(crate) fn log_mid(a: f64, b: f64) -> f64 {
    ((a.ln() + b.ln()) / 2.0).exp()
}

/// Index of the value nearest `target` (first on ties, as torch's argmin).
fn argmin_distance(values: &[f64], target: f64) -> usize {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if (v - target).abs() < (values[best] - target).abs() {
            best = i;
        }
    }
    best
}

/// Restart's segments for `sigmas` (with its final 0): plain Heun steps below 20 steps; from 20,
/// a Karras schedule of `steps - restart_steps * restart_times` steps between the same ends,
/// with `restart_times` repeats of `restart_steps` Karras steps from sigma ~2 back down to the
/// sigma nearest 0.1 (9 steps once, or `steps / 4` twice from 36 steps), as A1111 chooses.
fn restart_segments(sigmas: &[f64]) -> Vec<Segment> {
    let steps = sigmas.len() - 1;
    let mut sigmas = sigmas.to_vec();
    let mut restart: Option<(usize, usize, usize, f64)> = None;
    if steps >= 20 {
        let (restart_steps, restart_times) = if steps >= 36 { (steps / 4, 2) } else { (9, 1) };
        let main = steps - restart_steps * restart_times;
        let mut s = karras_sigmas(sigmas[sigmas.len() - 2], sigmas[0], main);
        s.push(0.0);
        s.iter_mut().for_each(|v| *v = *v as f32 as f64);
        sigmas = s;
        let at = argmin_distance(&sigmas, 0.1);
        restart = Some((at, restart_steps + 1, restart_times, 2.0));
    }
    let mut out = Vec::new();
    let seg = |from: f64, to: f64, main: bool| Segment {
        from,
        to,
        renoise: 0.0,
        main,
    };
    for i in 0..sigmas.len() - 1 {
        out.push(seg(sigmas[i], sigmas[i + 1], true));
        let Some((at, n, times, max)) = restart else {
            continue;
        };
        if i + 1 != at {
            continue;
        }
        let max_idx = argmin_distance(&sigmas, max);
        if max_idx < at {
            let ramp: Vec<f64> = karras_sigmas(sigmas[at], sigmas[max_idx], n)
                .into_iter()
                .map(|v| v as f32 as f64)
                .collect();
            for _ in 0..times {
                out.extend(ramp.windows(2).map(|w| seg(w[0], w[1], false)));
            }
        }
    }
    // Where the next segment starts above where this one ended, A1111 adds noise to get there.
    for i in 0..out.len().saturating_sub(1) {
        let (end, next) = (out[i].to, out[i + 1].from);
        if next > end {
            out[i].renoise = (next * next - end * end).sqrt();
        }
    }
    out
}

/// The segments and evaluations of `method` on `sigmas` (descending, with its final value).
pub(crate) fn plan(method: Method, sigmas: &[f64]) -> (Vec<Segment>, Vec<Eval>) {
    let segments = match method {
        Method::Restart => restart_segments(sigmas),
        _ => sigmas
            .windows(2)
            .map(|w| Segment {
                from: w[0],
                to: w[1],
                renoise: 0.0,
                main: true,
            })
            .collect(),
    };
    let mut evals = Vec::new();
    for (k, s) in segments.iter().enumerate() {
        // The point of the second evaluation, if the segment has one.
        let second = match method {
            Method::Dpm2 | Method::DpmppSde if s.to > 0.0 => Some(log_mid(s.from, s.to)),
            Method::Dpm2Ancestral => {
                let (_, down) = ancestral(s.from, s.to);
                (down > 0.0).then(|| log_mid(s.from, down))
            }
            Method::Restart if s.to > 0.0 => Some(s.to),
            _ => None,
        };
        evals.push(Eval {
            sigma: s.from,
            segment: k,
            second: false,
            closes: second.is_none(),
        });
        if let Some(sigma) = second {
            evals.push(Eval {
                sigma,
                segment: k,
                second: true,
                closes: true,
            });
        }
    }
    (segments, evals)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(n: usize) -> Vec<f64> {
        let mut s = karras_sigmas(0.0292, 14.6146, n);
        s.push(0.0);
        s
    }

    #[test]
    fn two_evaluation_methods_take_one_at_the_last_step() {
        let s = schedule(5);
        for method in [Method::Dpm2, Method::DpmppSde, Method::Dpm2Ancestral] {
            let (segs, evals) = plan(method, &s);
            assert_eq!(segs.len(), 5);
            // Four two-evaluation segments and the last (onto sigma 0) with one.
            assert_eq!(evals.len(), 9, "{method:?}");
            assert!(evals.last().unwrap().closes && !evals.last().unwrap().second);
            // Between sigma and the next sigma (for DPM2 a: sigma_down, below it).
            let mid = evals[1].sigma;
            assert!(mid < s[0] && mid > s[2], "{method:?}");
        }
        let (_, evals) = plan(Method::Dpmpp3mSde, &s);
        assert_eq!(evals.len(), 5);
        assert!(evals.iter().all(|e| e.closes));
    }

    #[test]
    fn restart_below_20_steps_is_heun() {
        let s = schedule(10);
        let (segs, evals) = plan(Method::Restart, &s);
        assert_eq!(segs.len(), 10);
        assert_eq!(evals.len(), 19);
        assert!(segs.iter().all(|g| g.renoise == 0.0 && g.main));
    }

    #[test]
    fn restart_from_20_steps_goes_back_up_with_noise() {
        let s = schedule(20);
        let (segs, evals) = plan(Method::Restart, &s);
        // 11 main Karras steps plus one restart of 9 steps.
        assert_eq!(segs.iter().filter(|g| g.main).count(), 11);
        assert_eq!(segs.iter().filter(|g| !g.main).count(), 9);
        let jumps: Vec<&Segment> = segs.iter().filter(|g| g.renoise > 0.0).collect();
        assert_eq!(jumps.len(), 1);
        let j = segs.iter().position(|g| g.renoise > 0.0).unwrap();
        let (end, next) = (segs[j].to, segs[j + 1].from);
        assert!(
            (end - 0.1).abs() < 0.1 && (next - 2.0).abs() < 1.0,
            "{end} -> {next}"
        );
        assert!((segs[j].renoise - (next * next - end * end).sqrt()).abs() < 1e-12);
        // The restart ends where it began, then the main path continues.
        assert_eq!(segs[j + 9].to, end);
        assert_eq!(evals.last().unwrap().sigma, segs.last().unwrap().from);
        // 36 steps: steps / 4 = 9 restart steps, twice.
        let (segs, _) = plan(Method::Restart, &schedule(36));
        assert_eq!(segs.iter().filter(|g| !g.main).count(), 18);
        assert_eq!(segs.iter().filter(|g| g.main).count(), 18);
    }

    #[test]
    fn ancestral_step_keeps_the_marginal_noise() {
        let (up, down) = ancestral(3.0, 1.2);
        assert!((up * up + down * down - 1.44).abs() < 1e-12);
        assert_eq!(ancestral(3.0, 0.0), (0.0, 0.0));
    }
}
