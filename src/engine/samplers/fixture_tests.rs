//! Schedules against the diffusers reference: for every txt2img and img2img case of the
//! tiny-sd15 fixture, the sampler built from the case's `scheduler_config` must visit exactly
//! the recorded `timesteps_used`. Also the request-level rules (steps, strength).

use serde_json::Value;

use super::test_support::sd;
use super::*;

fn cases() -> Vec<Value> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-sd15/cases.json"
    );
    let text = std::fs::read_to_string(path).expect("fixture cases.json");
    let doc: Value = serde_json::from_str(&python_json_to_strict(&text)).expect("valid JSON");
    doc["cases"].as_array().expect("cases array").clone()
}

#[test]
fn every_sampling_case_visits_the_reference_timesteps() {
    let mut checked = 0;
    for case in cases() {
        let kind = case["kind"].as_str().unwrap_or_default();
        if kind != "txt2img" && kind != "img2img" {
            continue;
        }
        let id = case["id"].as_str().unwrap_or_default();
        let spec = parse_sampler(case["sampler"].as_str().unwrap(), None).unwrap();
        let config: SchedulerConfig =
            serde_json::from_value(case["scheduler_config"].clone()).unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let sampler = build_sampler(&spec, &config, steps).unwrap();
        let start = if kind == "img2img" {
            sampler.start_index(img2img_start(steps, case["strength"].as_f64().unwrap()).unwrap())
        } else {
            0
        };
        let want: Vec<f64> = case["timesteps_used"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        let got = &sampler.timesteps()[start..];
        assert_eq!(got.len(), want.len(), "{id}: {got:?} vs {want:?}");
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-3, "{id}: {got:?} vs {want:?}");
        }
        // Ancestral samplers draw exactly one noise tensor per step taken.
        let noises = case["ancestral_step_noise"].as_array().map_or(0, Vec::len);
        assert_eq!(sampler.needs_step_noise(), noises > 0, "{id}");
        if noises > 0 {
            assert_eq!(noises, want.len(), "{id}");
        }
        checked += 1;
    }
    assert!(checked >= 7, "only {checked} sampling cases found");
}

#[test]
fn fixture_model_config_gives_sd15_schedules() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/tiny-sd15/model/scheduler/scheduler_config.json"
    );
    let config = SchedulerConfig::from_file(std::path::Path::new(path)).unwrap();
    let ddim = build_sampler(&parse_sampler("DDIM", None).unwrap(), &config, 8).unwrap();
    assert_eq!(
        ddim.timesteps(),
        &[876.0, 751.0, 626.0, 501.0, 376.0, 251.0, 126.0, 1.0]
    );
    let euler = build_sampler(&parse_sampler("Euler a", None).unwrap(), &config, 8).unwrap();
    assert_eq!(euler.timesteps()[0], 999.0);
    assert_eq!(euler.timesteps()[7], 0.0);
}

#[test]
fn every_sampler_builds_for_every_step_count_and_spacing() {
    for spacing in [None, Some("linspace"), Some("leading"), Some("trailing")] {
        for prediction in ["epsilon", "v_prediction"] {
            let config = SchedulerConfig {
                timestep_spacing: spacing.map(String::from),
                prediction_type: prediction.into(),
                ..sd()
            };
            for kind in SamplerKind::ALL {
                for scheduler in SchedulerKind::ALL {
                    let spec = SamplerSpec::new(kind, scheduler);
                    for steps in [1, 2, 7, 25, 61, 150] {
                        let s = build_sampler(&spec, &config, steps).unwrap();
                        let ts = s.timesteps();
                        // Every step but the last (onto sigma 0) takes `order` calls; A1111's
                        // DDIM schedule may take more steps than asked, KL Optimal ends above
                        // 0, Restart adds back-steps. LCM's table has 50 entries, so its
                        // DDIM schedule (one step per `50 // n` entries) stops at 49.
                        let want = steps * s.order() - (s.order() - 1);
                        if kind == SamplerKind::Lcm && spec.scheduler == SchedulerKind::Ddim {
                            assert_eq!(ts.len(), want.min(49), "{spec} {steps}");
                        } else if matches!(
                            spec.scheduler,
                            SchedulerKind::Ddim | SchedulerKind::KlOptimal
                        ) || kind == SamplerKind::Restart
                        {
                            assert!(ts.len() >= want, "{spec} {steps}: {}", ts.len());
                        } else {
                            assert_eq!(ts.len(), want, "{spec} {steps}");
                        }
                        assert!(
                            ts.iter().all(|t| (0.0..1000.0).contains(t)),
                            "{spec} {ts:?}"
                        );
                        if kind != SamplerKind::Restart {
                            assert!(ts.windows(2).all(|w| w[0] >= w[1]), "{spec} {ts:?}");
                        }
                        let init = s.init_noise_sigma();
                        assert!(init.is_finite() && init > 0.0, "{spec} {steps}: {init}");
                    }
                }
            }
        }
    }
}

#[test]
fn one_linspace_step_is_timestep_zero_as_in_diffusers() {
    // numpy's linspace(0, 999, 1) is [0]: a 1-step Euler run with linspace spacing denoises from
    // the smallest sigma (SD-Turbo configs use "trailing", which starts at 999).
    let mut config = SchedulerConfig::default();
    let spec = parse_sampler("Euler", None).unwrap();
    assert_eq!(
        build_sampler(&spec, &config, 1).unwrap().timesteps(),
        &[0.0]
    );
    config.timestep_spacing = Some("trailing".into());
    assert_eq!(
        build_sampler(&spec, &config, 1).unwrap().timesteps(),
        &[999.0]
    );
}

#[test]
fn steps_outside_1_to_150_are_rejected() {
    let spec = parse_sampler("Euler a", None).unwrap();
    let config = SchedulerConfig::default();
    for steps in [0, 151] {
        let err = build_sampler(&spec, &config, steps)
            .err()
            .expect("must fail");
        let text = err.to_string();
        assert!(
            err.is_client_error() && text.contains("steps") && text.contains("150"),
            "{text}"
        );
    }
    let tiny = SchedulerConfig {
        num_train_timesteps: 10,
        ..Default::default()
    };
    assert!(build_sampler(&spec, &tiny, 11).is_err());
}

#[test]
fn img2img_start_follows_diffusers_t_start() {
    assert_eq!(img2img_start(10, 0.6).unwrap(), 4);
    assert_eq!(img2img_start(10, 0.35).unwrap(), 7);
    assert_eq!(img2img_start(25, 1.0).unwrap(), 0);
    assert_eq!(img2img_start(25, 0.2).unwrap(), 20);
    assert_eq!(img2img_start(20, 0.4).unwrap(), 12);
    for bad in [0.0, -0.1, 1.01, f64::NAN] {
        let err = img2img_start(10, bad).unwrap_err().to_string();
        assert!(err.contains("denoising_strength"), "{err}");
    }
    // 0.05 of 10 steps is no step at all.
    assert!(img2img_start(10, 0.05).is_err());
}

#[test]
fn unknown_sampler_error_lists_names() {
    let text = parse_sampler("DPM fast", None).unwrap_err().to_string();
    assert!(text.contains("unknown sampler 'DPM fast'"), "{text}");
    assert!(
        text.contains("Euler a") && text.contains("DPM++ 2M Karras"),
        "{text}"
    );
}
