//! The LCM sampler against `tests/fixtures/sampler-schedules/lcm.json` (made by `lcm.py`
//! beside it): diffusers' `LCMScheduler` timesteps and steps for models whose config names it,
//! and A1111's "LCM" (its schedule over the 50-entry table, the quantized timesteps, one
//! `sample_lcm` step) for every other model.

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::super::config::SchedulerConfig;
use super::super::names::{SamplerKind, SchedulerKind};
use super::super::stepper::Setup;
use super::super::test_support::{floats, sd};
use super::super::{build_sampler, parse_sampler, Sampler, SamplerSpec};
use super::*;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sampler-schedules/lcm.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("lcm.json")).expect("JSON")
}

fn lcm_config() -> SchedulerConfig {
    SchedulerConfig {
        class_name: Some("LCMScheduler".into()),
        set_alpha_to_one: false,
        ..sd()
    }
}

fn build(config: &SchedulerConfig, steps: usize, scheduler: SchedulerKind) -> LcmSampler {
    LcmSampler::new(&Setup {
        config,
        steps,
        scheduler,
    })
    .unwrap()
}

fn tensor(v: &Value) -> Tensor {
    let data: Vec<f32> = floats(v).iter().map(|x| *x as f32).collect();
    Tensor::from_vec(data, (1, 4, 2, 2), &Device::Cpu).unwrap()
}

fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs() + abs,
            "{what}[{i}]: {g} vs {w}\n{got:?}\n{want:?}"
        );
    }
}

fn values(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap()
        .into_iter()
        .map(f64::from)
        .collect()
}

fn steps(r: &Value) -> Vec<usize> {
    floats(&r["steps"])
        .into_iter()
        .map(|s| s as usize)
        .collect()
}

#[test]
fn lcm_scheduler_configs_get_diffusers_timesteps() {
    let r = reference();
    for n in steps(&r) {
        let s = build(&lcm_config(), n, SchedulerKind::Automatic);
        let want = floats(&r["diffusers_timesteps"][n.to_string()]);
        assert_eq!(s.timesteps(), want.as_slice(), "{n} steps");
        assert_eq!(s.init_noise_sigma(), 1.0);
    }
}

#[test]
fn other_configs_get_a1111_sigmas_and_quantized_timesteps() {
    let r = reference();
    for n in steps(&r) {
        for (name, kind) in [
            ("automatic", SchedulerKind::Automatic),
            ("karras", SchedulerKind::Karras),
        ] {
            let want = &r["a1111"][format!("{name}.{n}")];
            // An LCMScheduler config with an explicit schedule type is A1111's too.
            for config in [sd(), lcm_config()] {
                if kind == SchedulerKind::Automatic && config.class_name.is_some() {
                    continue;
                }
                let s = build(&config, n, kind);
                assert_eq!(
                    s.timesteps(),
                    floats(&want["timesteps"]).as_slice(),
                    "{name} {n}"
                );
                let sigmas = floats(&want["sigmas"]);
                assert_close(
                    &format!("{name}.{n} init"),
                    &[s.init_noise_sigma()],
                    &sigmas[..1],
                    1e-6,
                    0.0,
                );
            }
        }
    }
}

#[test]
fn one_step_is_t_999_whichever_definition() {
    for config in [sd(), lcm_config()] {
        assert_eq!(
            build(&config, 1, SchedulerKind::Automatic).timesteps(),
            [999.0]
        );
    }
}

#[test]
fn diffusers_steps_match_lcm_scheduler_step() {
    let r = reference();
    let (x, eps, noise) = (tensor(&r["x"]), tensor(&r["eps"]), tensor(&r["noise"]));
    let mut s = build(&lcm_config(), 4, SchedulerKind::Automatic);
    assert!(s.needs_step_noise());
    for i in [0usize, 3] {
        let got = s.step(&eps, i, &x, Some(&noise)).unwrap();
        let want = floats(&r["diffusers_step_4"][i.to_string()]);
        assert_close(&format!("step {i}"), &values(&got), &want, 1e-5, 1e-5);
    }
    // The last step ignores the noise: it returns the consistency output itself.
    let other = noise.affine(-3.0, 1.0).unwrap();
    let a = s.step(&eps, 3, &x, Some(&other)).unwrap();
    let b = s.step(&eps, 3, &x, Some(&noise)).unwrap();
    assert_eq!(values(&a), values(&b));
    // A step that re-noises without noise is an error, not a panic.
    assert!(s.step(&eps, 0, &x, None).is_err());
}

#[test]
fn a1111_steps_match_sample_lcm() {
    let r = reference();
    let (x, eps, noise) = (tensor(&r["x"]), tensor(&r["eps"]), tensor(&r["noise"]));
    let mut s = build(&sd(), 4, SchedulerKind::Automatic);
    for i in [0usize, 3] {
        let got = s.step(&eps, i, &x, Some(&noise)).unwrap();
        let want = floats(&r["a1111_step_4"][i.to_string()]);
        assert_close(&format!("step {i}"), &values(&got), &want, 1e-5, 1e-4);
    }
}

#[test]
fn boundary_scalings_are_the_consistency_limits() {
    // At t = 0 the consistency function is the identity; far from it, the model's x0.
    assert_eq!(boundary_scalings(0.0, 10.0), (1.0, 0.0));
    let (skip, out) = boundary_scalings(999.0, 10.0);
    assert!(skip < 1e-8 && (out - 1.0).abs() < 1e-8);
}

#[test]
fn the_name_and_its_limits() {
    let spec = parse_sampler("LCM", None).unwrap();
    assert_eq!(
        spec,
        SamplerSpec::new(SamplerKind::Lcm, SchedulerKind::Automatic)
    );
    assert_eq!(parse_sampler("k_lcm", None).unwrap().kind, SamplerKind::Lcm);
    assert_eq!(
        parse_sampler("LCM Karras", None).unwrap(),
        SamplerSpec::new(SamplerKind::Lcm, SchedulerKind::Karras)
    );
    assert_eq!(spec.display_name(), "LCM");
    // diffusers' schedule takes a subset of the 50 distillation timesteps.
    let err = build_sampler(&spec, &lcm_config(), 51).err().unwrap();
    assert!(err.to_string().contains("steps"), "{err}");
    assert_eq!(
        build_sampler(&spec, &sd(), 60).unwrap().timesteps().len(),
        60
    );
}
