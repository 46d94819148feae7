//! Noise schedules against `tests/fixtures/sampler-schedules/reference.json` (made by
//! `generate.py` beside it): diffusers' Karras / exponential / beta sigmas and timesteps
//! (Euler and DPM-Solver multistep), the evaluation points of its KDPM2, KDPM2 ancestral and
//! DPM-Solver SDE schedulers, and A1111's own schedules and Restart step list transcribed from
//! A1111 / k-diffusion and computed in torch float32.

use serde_json::Value;

use super::config::{SchedulerConfig, Spacing};
use super::kplan::{ancestral, plan, Method};
use super::names::SchedulerKind;
use super::noise_schedules::{a1111_sigmas, train_sigmas, TrainSigmas};
use super::schedule::{multistep_schedule, sigma_schedule};
use super::test_support::{floats, sd};
use super::*;

fn reference() -> Value {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/sampler-schedules/reference.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).expect("reference.json")).expect("JSON")
}

fn sd15(spacing: Option<&str>) -> SchedulerConfig {
    SchedulerConfig {
        timestep_spacing: spacing.map(String::from),
        ..sd()
    }
}

fn train() -> TrainSigmas {
    TrainSigmas::new(train_sigmas(&sd15(None).alphas_cumprod(true).unwrap()))
}

/// Same length, and every value within `rel` relative (or 1e-6 absolute, for values near 0).
fn assert_close(what: &str, got: &[f64], want: &[f64], rel: f64) {
    assert_within(what, got, want, rel, 1e-6);
}

fn assert_within(what: &str, got: &[f64], want: &[f64], rel: f64, abs: f64) {
    assert_eq!(got.len(), want.len(), "{what}: {got:?} vs {want:?}");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= rel * w.abs() + abs,
            "{what}[{i}]: {g} vs {w}\n{got:?}\n{want:?}"
        );
    }
}

fn scheduler_kind(option: &str) -> SchedulerKind {
    match option {
        "karras" => SchedulerKind::Karras,
        "exponential" => SchedulerKind::Exponential,
        "beta" => SchedulerKind::Beta,
        other => panic!("unknown option {other}"),
    }
}

#[test]
fn karras_exponential_and_beta_sigmas_match_diffusers() {
    let mut checked = 0;
    for case in reference()["diffusers"].as_array().unwrap() {
        let class = case["scheduler"].as_str().unwrap();
        let (spacing, steps) = (case["spacing"].as_str(), case["steps"].as_u64().unwrap());
        let kind = scheduler_kind(case["option"].as_str().unwrap());
        let config = sd15(spacing);
        let space = config.spacing(Spacing::Linspace).unwrap();
        let s = match class {
            "EulerDiscreteScheduler" => {
                sigma_schedule(&config, space, steps as usize, kind, true).unwrap()
            }
            "DPMSolverMultistepScheduler" => {
                multistep_schedule(&config, space, steps as usize, kind, true, None).unwrap()
            }
            _ => continue,
        };
        let what = format!("{class} {spacing:?} {kind:?} {steps}");
        assert_close(&what, &s.sigmas, &floats(&case["sigmas"]), 1e-5);
        // Fractional (f32) timesteps for Euler, integers for DPM-Solver. diffusers keeps its
        // alphas_cumprod in float32, which moves sigma_to_t by up to ~1e-3 of a timestep.
        let ts = floats(&case["timesteps"]);
        if class == "DPMSolverMultistepScheduler" {
            // Truncated to integers: where diffusers' float32 value sits just below an
            // integer (998.9999 for sigma_max), ours lands on it; allow exactly those.
            let raw = floats(&case["timesteps_raw"]);
            for (k, (g, w)) in s.timesteps.iter().zip(&ts).enumerate() {
                let edge = (raw[k] - raw[k].round()).abs() < 2e-3;
                assert!(
                    g == w || (edge && (g - w).abs() <= 1.0),
                    "{what} t[{k}]: {g} vs {w}"
                );
            }
            assert_eq!(s.timesteps.len(), ts.len(), "{what}");
        } else {
            assert_within(&format!("{what} timesteps"), &s.timesteps, &ts, 0.0, 2e-3);
        }
        checked += 1;
    }
    assert_eq!(checked, 2 * 2 * 3 * 6);
}

#[test]
fn dpm2_dpm2_ancestral_and_dpmpp_sde_evaluate_where_diffusers_does() {
    let train = train();
    let mut checked = 0;
    for case in reference()["diffusers"].as_array().unwrap() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        let mut karras = a1111_sigmas(SchedulerKind::Karras, steps, &train);
        karras.iter_mut().for_each(|s| *s = *s as f32 as f64);
        match case["scheduler"].as_str().unwrap() {
            "KDPM2DiscreteScheduler" => {
                // diffusers' KDPM2 has no discarded sigma, so compare the plan on the same list.
                let (_, evals) = plan(Method::Dpm2, &karras);
                let sigmas: Vec<f64> = evals.iter().map(|e| e.sigma).collect();
                assert_close("KDPM2 sigmas", &sigmas, &floats(&case["eval_sigmas"]), 1e-5);
                // Midpoint timesteps are fractional in both (diffusers rounds the main ones).
                let ts = floats(&case["timesteps"]);
                for (k, e) in evals.iter().enumerate().filter(|(_, e)| e.second) {
                    let t = train.sigma_to_t(e.sigma);
                    assert!((t - ts[k]).abs() < 2e-3, "KDPM2 t[{k}]: {t} vs {}", ts[k]);
                }
            }
            "KDPM2AncestralDiscreteScheduler" => {
                assert_close("KDPM2 a sigmas", &karras, &floats(&case["sigmas"]), 1e-5);
                let (ups, downs): (Vec<f64>, Vec<f64>) =
                    karras.windows(2).map(|w| ancestral(w[0], w[1])).unzip();
                assert_close("sigma_up", &ups, &floats(&case["sigmas_up"]), 1e-5);
                assert_close("sigma_down", &downs, &floats(&case["sigmas_down"]), 1e-5);
            }
            "DPMSolverSDEScheduler" => {
                let spec = SamplerSpec::new(SamplerKind::DpmPpSde, SchedulerKind::Karras);
                // Our DPM++ SDE runs A1111's Karras list, which for SD's linspace range is
                // diffusers' list.
                let s = build_sampler(&spec, &sd15(None), steps).unwrap();
                let want = floats(&case["timesteps"]);
                assert_eq!(s.timesteps().len(), want.len());
                for (k, (g, w)) in s.timesteps().iter().zip(&want).enumerate() {
                    assert!((g - w).abs() < 2e-3, "DPM++ SDE t[{k}]: {g} vs {w}");
                }
            }
            _ => continue,
        }
        checked += 1;
    }
    assert_eq!(checked, 3 * 5);
}

#[test]
fn a1111_schedules_match_the_transcribed_reference() {
    let train = train();
    let doc = reference();
    let mut seen = std::collections::HashSet::new();
    for case in doc["a1111"].as_array().unwrap() {
        let name = case["schedule"].as_str().unwrap();
        let steps = case["steps"].as_u64().unwrap() as usize;
        let kind = SchedulerKind::ALL
            .into_iter()
            .find(|k| k.name() == name)
            .unwrap_or_else(|| panic!("no scheduler {name}"));
        let got = a1111_sigmas(kind, steps, &train);
        assert_close(
            &format!("{name} {steps}"),
            &got,
            &floats(&case["sigmas"]),
            1e-5,
        );
        seen.insert(kind);
    }
    // Every schedule but Automatic (which is the sampler's own) is covered.
    assert_eq!(seen.len(), SchedulerKind::ALL.len() - 1);
    for p in doc["sigma_to_t"].as_array().unwrap() {
        let (sigma, t) = (p["sigma"].as_f64().unwrap(), p["t"].as_f64().unwrap());
        assert!(
            (train.sigma_to_t(sigma) - t).abs() < 1e-3,
            "sigma_to_t({sigma})"
        );
    }
}

#[test]
fn restart_step_list_matches_a1111() {
    let train = train();
    for case in reference()["restart"].as_array().unwrap() {
        let steps = case["steps"].as_u64().unwrap() as usize;
        let mut karras = a1111_sigmas(SchedulerKind::Karras, steps, &train);
        karras.iter_mut().for_each(|s| *s = *s as f32 as f64);
        let (segments, _) = plan(Method::Restart, &karras);
        let want: Vec<(f64, f64)> = case["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| (p[0].as_f64().unwrap(), p[1].as_f64().unwrap()))
            .collect();
        let from: Vec<f64> = segments.iter().map(|s| s.from).collect();
        let to: Vec<f64> = segments.iter().map(|s| s.to).collect();
        let (want_from, want_to): (Vec<f64>, Vec<f64>) = want.into_iter().unzip();
        assert_close(&format!("restart {steps} from"), &from, &want_from, 1e-5);
        assert_close(&format!("restart {steps} to"), &to, &want_to, 1e-5);
    }
}
