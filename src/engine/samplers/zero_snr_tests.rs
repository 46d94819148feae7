//! v-prediction models with zero-terminal-SNR betas and trailing spacing (NoobAI-style SDXL)
//! against `tests/fixtures/sampler-schedules/reference.json` (`zero_snr`, made by `generate.py`
//! with diffusers): each sampler's timesteps, sigmas and initial noise sigma, and a whole
//! denoising loop with a deterministic stand-in for the UNet (`0.1 * input + c`), so only the
//! sampler decides the final latents.

use candle_core::{Device, Tensor};
use serde_json::Value;

use super::config::Spacing;
use super::names::SchedulerKind;
use super::schedule::{multistep_schedule, sigma_schedule};
use super::test_support::{floats, sd};
use super::*;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sampler-schedules/reference.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("reference.json"))
        .expect("JSON");
    doc["zero_snr"].as_array().expect("zero_snr cases").clone()
}

fn tensor(v: &Value, shape: &[usize]) -> Tensor {
    let data: Vec<f32> = floats(v).into_iter().map(|x| x as f32).collect();
    Tensor::from_vec(data, shape, &Device::Cpu).expect("tensor")
}

fn flat(t: &Tensor) -> Vec<f64> {
    t.flatten_all()
        .and_then(|t| t.to_vec1::<f32>())
        .expect("f32 tensor")
        .into_iter()
        .map(f64::from)
        .collect()
}

fn label(case: &Value) -> String {
    format!(
        "{} {} steps, strength {}",
        case["sampler"].as_str().unwrap(),
        case["steps"],
        case["strength"]
    )
}

/// Our sampler's loop for one case; returns the final latents.
fn run(case: &Value) -> Vec<f64> {
    let spec = parse_sampler(case["sampler"].as_str().unwrap(), None).unwrap();
    let config: SchedulerConfig = serde_json::from_value(case["scheduler_config"].clone()).unwrap();
    let steps = case["steps"].as_u64().unwrap() as usize;
    let shape: Vec<usize> = floats(&case["shape"]).iter().map(|d| *d as usize).collect();
    let mut s = build_sampler(&spec, &config, steps).unwrap();
    let noise = tensor(&case["noise"], &shape);
    let c = tensor(&case["constant"], &shape);
    let (start, mut x) = match case["strength"].as_f64() {
        Some(strength) => {
            let start = s.start_index(img2img_start(steps, strength).unwrap());
            let init = tensor(&case["init"], &shape);
            (start, s.add_noise(&init, &noise, start).unwrap())
        }
        None => (0, noise.affine(s.init_noise_sigma(), 0.0).unwrap()),
    };
    let step_noise = case["step_noise"].as_array().unwrap();
    let n = s.timesteps().len();
    for (k, i) in (start..n).enumerate() {
        let input = s.scale_model_input(&x, i).unwrap();
        let out = (input.affine(0.1, 0.0).unwrap() + &c).unwrap();
        let z = s.needs_step_noise().then(|| tensor(&step_noise[k], &shape));
        x = s.step(&out, i, &x, z.as_ref()).unwrap();
    }
    flat(&x)
}

#[test]
fn timesteps_sigmas_and_init_noise_match_diffusers() {
    for case in cases() {
        let what = label(&case);
        let spec = parse_sampler(case["sampler"].as_str().unwrap(), None).unwrap();
        let config: SchedulerConfig =
            serde_json::from_value(case["scheduler_config"].clone()).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let s = build_sampler(&spec, &config, steps).unwrap();
        let want = floats(&case["timesteps"]);
        assert_eq!(s.timesteps().len(), want.len(), "{what}");
        for (g, w) in s.timesteps().iter().zip(&want) {
            assert!(
                (g - w).abs() < 1e-3,
                "{what}: {:?} vs {want:?}",
                s.timesteps()
            );
        }
        let init = case["init_noise_sigma"].as_f64().unwrap();
        assert!(
            (s.init_noise_sigma() - init).abs() <= 1e-6 * init,
            "{what}: init_noise_sigma {} vs {init}",
            s.init_noise_sigma()
        );
        let Some(sigmas) = case.get("sigmas").map(floats) else {
            continue;
        };
        let scheduler = spec.scheduler;
        let ours = match case["scheduler"].as_str().unwrap() {
            "EulerDiscreteScheduler"
            | "EulerAncestralDiscreteScheduler"
            | "LMSDiscreteScheduler" => {
                sigma_schedule(&config, Spacing::Trailing, steps, scheduler, true).unwrap()
            }
            "DPMSolverMultistepScheduler" | "UniPCMultistepScheduler" => {
                multistep_schedule(&config, Spacing::Trailing, steps, scheduler, true, None)
                    .unwrap()
            }
            // Heun's interleaved list is checked through its loop.
            _ => continue,
        };
        assert_eq!(ours.sigmas.len(), sigmas.len(), "{what}");
        for (g, w) in ours.sigmas.iter().zip(&sigmas) {
            assert!(
                (g - w).abs() <= 1e-5 * w.abs() + 1e-7,
                "{what}: {:?} vs {sigmas:?}",
                ours.sigmas
            );
        }
    }
}

#[test]
fn denoising_loops_reproduce_diffusers_latents() {
    let mut failures = Vec::new();
    let mut checked = 0;
    for case in cases() {
        let got = run(&case);
        let want = floats(&case["latents"]);
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = got
            .iter()
            .zip(&want)
            .fold(0.0f64, |m, (g, w)| m.max((g - w).abs()))
            / scale;
        // Near sigma 4096 float32 rounding alone moves the latents; the generator measured by
        // how much (perturbed model outputs, an exactly computed schedule). Only Heun, which
        // averages a slope taken at the noisy first step over a step of ~4090, has a floor
        // above 1e-6.
        let floor =
            case["rounding_floor"].as_f64().unwrap() + case["schedule_floor"].as_f64().unwrap();
        let tol = 1e-5 + 4.0 * floor;
        eprintln!(
            "{}: relative max abs diff {diff:e} (tolerance {tol:e})",
            label(&case)
        );
        assert!(got.iter().all(|v| v.is_finite()), "{}", label(&case));
        if diff >= tol {
            failures.push(format!("{}: {diff:e} >= {tol:e}", label(&case)));
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} cases");
    assert!(failures.is_empty(), "{failures:?}");
}

#[test]
fn ddim_refuses_epsilon_models_at_zero_snr() {
    // At alpha 0 the noise prediction says nothing about the image (diffusers divides by 0).
    let config = SchedulerConfig {
        rescale_betas_zero_snr: true,
        timestep_spacing: Some("trailing".into()),
        ..sd()
    };
    let spec = parse_sampler("DDIM", None).unwrap();
    let err = build_sampler(&spec, &config, 10).err().expect("must fail");
    let text = err.to_string();
    assert!(err.is_client_error(), "{text}");
    assert!(
        text.contains("DDIM") && text.contains("v_prediction"),
        "{text}"
    );
    // Leading spacing never visits the last timestep, so it stays usable.
    let leading = SchedulerConfig {
        timestep_spacing: Some("leading".into()),
        ..config.clone()
    };
    assert!(build_sampler(&spec, &leading, 10).is_ok());
    let v = SchedulerConfig {
        prediction_type: "v_prediction".into(),
        ..config
    };
    assert!(build_sampler(&spec, &v, 10).is_ok());
}

#[test]
fn every_sampler_and_schedule_stays_finite_at_zero_snr() {
    let config = SchedulerConfig {
        prediction_type: "v_prediction".into(),
        rescale_betas_zero_snr: true,
        timestep_spacing: Some("trailing".into()),
        ..sd()
    };
    let dev = Device::Cpu;
    for kind in SamplerKind::ALL {
        for scheduler in SchedulerKind::ALL {
            let spec = SamplerSpec::new(kind, scheduler);
            for steps in [1, 2, 8, 25] {
                let mut s = build_sampler(&spec, &config, steps).unwrap();
                assert!(s.init_noise_sigma().is_finite(), "{spec}");
                let noise = Tensor::new(&[0.7f32, -1.3, 0.2], &dev).unwrap();
                let mut x = noise.affine(s.init_noise_sigma(), 0.0).unwrap();
                for i in 0..s.timesteps().len() {
                    let input = s.scale_model_input(&x, i).unwrap();
                    let out = (input.affine(0.1, 0.0).unwrap() + 0.05).unwrap();
                    let z = s.needs_step_noise().then(|| noise.clone());
                    x = s.step(&out, i, &x, z.as_ref()).unwrap();
                }
                let v = flat(&x);
                assert!(v.iter().all(|x| x.is_finite()), "{spec} {steps}: {v:?}");
            }
        }
    }
}

#[test]
fn euler_a_sigma_down_follows_diffusers_float32_cancellation() {
    // Next to sigma 4096, sigma_down = sqrt(to² - up²) keeps few of its float32 digits, and
    // diffusers' images are made with what is left. The float32 formula reproduces most step
    // counts exactly; what remains comes from torch's float32 sqrt (MKL's, within 1 ulp but not
    // correctly rounded). Float64 arithmetic differs from it at most steps (by up to 56% on
    // the first step, over these step counts).
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sampler-schedules/reference.json"
    );
    let doc: Value = serde_json::from_str(&std::fs::read_to_string(path).expect("reference.json"))
        .expect("JSON");
    let mut errors = Vec::new();
    for case in doc["zero_snr_ancestral"].as_array().unwrap() {
        let sigmas = floats(&case["sigmas"]);
        let (ups, downs) = (floats(&case["sigmas_up"]), floats(&case["sigmas_down"]));
        for (i, w) in sigmas.windows(2).enumerate() {
            let (up, down) = super::euler::ancestral_sigmas(w[0], w[1]);
            assert!(
                (up - ups[i]).abs() <= 1e-6 * ups[i] + 1e-9,
                "{} up[{i}]",
                case["steps"]
            );
            errors.push((down - downs[i]).abs() / downs[i].max(1e-12));
        }
    }
    errors.sort_by(f64::total_cmp);
    let median = errors[errors.len() / 2];
    let worst = errors[errors.len() - 1];
    assert!(errors.len() > 500, "{} steps", errors.len());
    assert!(
        median == 0.0,
        "median relative error of sigma_down {median:e}"
    );
    assert!(worst < 0.05, "worst relative error of sigma_down {worst:e}");
}
