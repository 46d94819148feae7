//! The k-diffusion update rules against their formulas, evaluated by hand on scalars.

use candle_core::Device;

use super::*;
use crate::engine::samplers::test_support::{scalar as t, sd, value};
use crate::engine::samplers::Sampler;

fn build(kind: SamplerKind, scheduler: SchedulerKind, steps: usize) -> KSampler {
    let setup = Setup {
        config: &sd(),
        steps,
        scheduler,
    };
    KSampler::new(&setup, kind).unwrap()
}

#[test]
fn dpm2_takes_a_midpoint_evaluation() {
    let mut s = build(SamplerKind::Dpm2, SchedulerKind::Karras, 4);
    assert!(!s.needs_step_noise());
    assert_eq!(s.timesteps().len(), 7);
    let (from, mid, to) = (
        s.rule.evals[0].sigma,
        s.rule.evals[1].sigma,
        s.rule.evals[2].sigma,
    );
    assert!((mid - (from * to).sqrt()).abs() < 1e-9 * from);
    // eps prediction: denoised = x - sigma * eps, so the slope is eps itself.
    let x2 = s.step(&t(0.5), 0, &t(3.0), None).unwrap();
    assert!((value(&x2) - (3.0 + 0.5 * (mid - from))).abs() < 1e-4);
    let out = s.step(&t(0.2), 1, &x2, None).unwrap();
    assert!((value(&out) - (3.0 + 0.2 * (to - from))).abs() < 1e-4);
    // The next call must be a first evaluation at sigma `to`.
    assert!(s.step(&t(0.2), 3, &out, None).is_err());
}

#[test]
fn dpm2_drops_the_next_to_last_sigma_like_a1111() {
    // A1111 asks the schedule for steps + 1 and removes the next-to-last sigma.
    let train = TrainSigmas::new(train_sigmas(&sd().alphas_cumprod(true).unwrap()));
    let s = k_sigmas(SamplerKind::Dpm2, SchedulerKind::Karras, 5, &train);
    let full = a1111_sigmas(SchedulerKind::Karras, 6, &train);
    assert_eq!(s.len(), 6);
    assert!((s[4] - full[4]).abs() < 1e-5 && s[5] == 0.0);
    let plain = k_sigmas(SamplerKind::DpmPpSde, SchedulerKind::Automatic, 5, &train);
    let karras = a1111_sigmas(SchedulerKind::Karras, 5, &train);
    assert!(plain
        .iter()
        .zip(&karras)
        .all(|(a, b)| (a - b).abs() < 1e-5 * b.max(1.0)));
}

#[test]
fn dpmpp_sde_noise_is_a_brownian_increment() {
    let mut s = build(SamplerKind::DpmPpSde, SchedulerKind::Karras, 5);
    let (from, mid) = (s.rule.evals[0].sigma, s.rule.evals[1].sigma);
    let to = s.rule.segments[0].to;
    let (x, e1, e2, z1, z2) = (1.5, 0.3, -0.1, 0.7, -1.2);
    let x2 = s.step(&t(e1), 0, &t(x), Some(&t(z1))).unwrap();
    let (up, down) = ancestral(from, mid);
    let den = x - from * e1;
    let want = down / from * x + (1.0 - down / from) * den + up * z1;
    assert!((value(&x2) - want).abs() < 1e-4, "{} vs {want}", value(&x2));
    let out = s.step(&t(e2), 1, &x2, Some(&t(z2))).unwrap();
    let den2 = value(&x2) - mid * e2;
    let (up, down) = ancestral(from, to);
    let w = ((from - mid).sqrt() * z1 + (mid - to).sqrt() * z2) / (from - to).sqrt();
    let want = down / from * x + (1.0 - down / from) * den2 + up * w;
    assert!(
        (value(&out) - want).abs() < 1e-4,
        "{} vs {want}",
        value(&out)
    );
    assert!(s.step(&t(e2), 2, &out, None).is_err(), "noise is required");
}

#[test]
fn dpmpp_2m_sde_second_step_adds_the_midpoint_correction() {
    for heun in [false, true] {
        let kind = if heun {
            SamplerKind::DpmPp2mSdeHeun
        } else {
            SamplerKind::DpmPp2mSde
        };
        let mut s = build(kind, SchedulerKind::Exponential, 6);
        let sg: Vec<f64> = s.rule.evals.iter().map(|e| e.sigma).collect();
        let step = |x: f64, den: f64, old: Option<(f64, f64)>, from: f64, to: f64, z: f64| {
            let h = (from / to).ln();
            let decay = 1.0 - (-2.0 * h).exp();
            let mut v = to / from * (-h).exp() * x + decay * den + to * decay.sqrt() * z;
            if let Some((old, h_last)) = old {
                let c = if heun {
                    decay / (-2.0 * h) + 1.0
                } else {
                    0.5 * decay
                };
                v += c * (h / h_last) * (den - old);
            }
            (v, h)
        };
        let (x0, e0, z0) = (2.0, 0.4, 0.5);
        let x1 = s.step(&t(e0), 0, &t(x0), Some(&t(z0))).unwrap();
        let den0 = x0 - sg[0] * e0;
        let (want1, h0) = step(x0, den0, None, sg[0], sg[1], z0);
        assert!((value(&x1) - want1).abs() < 1e-4);
        let (e1, z1) = (-0.3, -0.9);
        let x2 = s.step(&t(e1), 1, &x1, Some(&t(z1))).unwrap();
        let den1 = value(&x1) - sg[1] * e1;
        let (want2, _) = step(value(&x1), den1, Some((den0, h0)), sg[1], sg[2], z1);
        assert!((value(&x2) - want2).abs() < 1e-4, "heun {heun}");
    }
}

#[test]
fn dpmpp_3m_sde_third_step_uses_two_previous_predictions() {
    let mut s = build(SamplerKind::DpmPp3mSde, SchedulerKind::Exponential, 6);
    let sg: Vec<f64> = s.rule.evals.iter().map(|e| e.sigma).collect();
    let eps = [0.4, -0.2, 0.1];
    let zs = [0.3, -0.6, 0.9];
    let mut x = 1.0;
    let mut dens = Vec::new();
    let mut hs = Vec::new();
    let mut xt = t(x);
    for i in 0..3 {
        xt = s.step(&t(eps[i]), i, &xt, Some(&t(zs[i]))).unwrap();
        let (from, to) = (sg[i], sg[i + 1]);
        let den = x - from * eps[i];
        let h = (from / to).ln();
        let he = 2.0 * h;
        let phi2 = (-(he)).exp_m1() / he + 1.0;
        let mut want = (-he).exp() * x + (1.0 - (-he).exp()) * den;
        match i {
            0 => {}
            1 => want += phi2 * (den - dens[0]) / (hs[0] / h),
            _ => {
                let (r0, r1) = (hs[1] / h, hs[0] / h);
                let d10 = (den - dens[1]) / r0;
                let d11 = (dens[1] - dens[0]) / r1;
                let d1 = d10 + (d10 - d11) * r0 / (r0 + r1);
                let d2 = (d10 - d11) / (r0 + r1);
                want += phi2 * d1 - (phi2 / he - 0.5) * d2;
            }
        }
        want += to * (1.0 - (-2.0 * h).exp()).sqrt() * zs[i];
        assert!(
            (value(&xt) - want).abs() < 1e-4,
            "step {i}: {} vs {want}",
            value(&xt)
        );
        dens.push(den);
        hs.push(h);
        x = value(&xt);
    }
}

#[test]
fn restart_renoises_where_it_jumps_back_up() {
    let mut s = build(SamplerKind::Restart, SchedulerKind::Automatic, 20);
    assert!(s.needs_step_noise());
    let j = s
        .rule
        .segments
        .iter()
        .position(|g| g.renoise > 0.0)
        .unwrap();
    let i = s
        .rule
        .evals
        .iter()
        .position(|e| e.segment == j && e.closes)
        .unwrap();
    let dev = Device::Cpu;
    let zero = Tensor::zeros(1, candle_core::DType::F32, &dev).unwrap();
    // Drive the run up to the jump with zero output; then the jump adds noise * renoise.
    let mut x = t(1.0);
    for k in 0..i {
        x = s.step(&zero, k, &x, Some(&zero)).unwrap();
    }
    let before = value(&x);
    let after = s.step(&zero, i, &x, Some(&t(1.0))).unwrap();
    // Zero eps: the Heun step keeps x; the jump adds exactly `renoise`.
    assert!((value(&after) - (before + s.rule.segments[j].renoise)).abs() < 1e-5);
    // Fewer than 20 steps: plain Heun, no noise needed.
    assert!(!build(SamplerKind::Restart, SchedulerKind::Automatic, 10).needs_step_noise());
}

#[test]
fn img2img_starts_on_a_first_evaluation() {
    for kind in [
        SamplerKind::Dpm2,
        SamplerKind::DpmPpSde,
        SamplerKind::Restart,
        SamplerKind::DpmPp3mSde,
    ] {
        for steps in [8, 24, 40] {
            let s = build(kind, SchedulerKind::Automatic, steps);
            let mut last = 0;
            for k in 0..steps {
                let i = s.start_index(k);
                assert!(!s.rule.evals[i].second, "{kind:?} {steps} {k}");
                assert!(i >= last);
                last = i;
            }
        }
    }
}
