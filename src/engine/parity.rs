//! Parity with diffusers: runs every case of a reference fixture (default the committed
//! `tests/fixtures/tiny-sd15`, `tiny-sd15-fewstep`, `tiny-sdxl`, `tiny-sdxl-vpred`, `tiny-lora`
//! and `tiny-taesd`, or the directory in `LIMNER_PARITY_FIXTURE`, of either family or a TAESD)
//! against the engine, loading the model from its diffusers folder and again from each single-file checkpoint (a
//! TAESD from each of its layouts, see `parity::taesd`; a fixture whose `cases.json` names a
//! `model` elsewhere, as `tiny-lora` does, uses that model's folder and single files).
//! A case's `loras` (`[{file, weight}]`, files beside `cases.json`) are merged in first, and a
//! `without_lora` key is checked again after they are taken out. `tests/parity.rs` runs it; it
//! is compiled into the library (hidden from its docs) because it drives engine internals.
//! Nothing here names a fixture-specific value: the cases, tensors and tolerances come from
//! `cases.json`, `reference.safetensors` and the contract (components 1e-3 relative; pipelines
//! 2e-2 max / 2e-3 mean absolute error on the decoded image).

mod taesd;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::engine::loading::model::{LoadOptions, ModelSource, StableDiffusion};
use crate::engine::lora::ResolvedLora;
use crate::engine::models::unet::AddedConditioning;
use crate::engine::noise::{NoisePurpose, NoiseSource};
use crate::engine::pipeline::{CancelToken, Cond, Job};
use crate::engine::samplers::{
    build_sampler, img2img_start, parse_sampler, python_json_to_strict, SchedulerConfig,
};
use crate::engine::text::ClipTokenizer;
use crate::engine::EngineError;
use candle_core::{DType, Device, Tensor};
use serde_json::Value;

/// The fixtures to check: `LIMNER_PARITY_FIXTURE` (any family), else the committed ones.
pub fn fixture_dirs() -> Vec<PathBuf> {
    match std::env::var_os("LIMNER_PARITY_FIXTURE") {
        Some(dir) => vec![PathBuf::from(dir)],
        None => [
            "tiny-sd15",
            "tiny-sd15-fewstep",
            "tiny-sdxl",
            "tiny-sdxl-vpred",
            "tiny-lora",
            "tiny-taesd",
        ]
        .iter()
        .map(|name| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("tests/fixtures")
                .join(name)
        })
        .collect(),
    }
}

struct Fixture {
    dir: PathBuf,
    cases: Value,
    tensors: HashMap<String, Tensor>,
}

impl Fixture {
    fn load(dir: PathBuf) -> Self {
        let text = std::fs::read_to_string(dir.join("cases.json")).expect("cases.json");
        let cases: Value =
            serde_json::from_str(&python_json_to_strict(&text)).expect("cases.json parses");
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .expect("reference.safetensors");
        Fixture {
            dir,
            cases,
            tensors,
        }
    }

    fn t(&self, name: &str) -> Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("reference tensor {name} missing"))
            .to_dtype(DType::F32)
            .unwrap()
    }

    fn cases(&self) -> &Vec<Value> {
        self.cases["cases"].as_array().expect("cases[]")
    }

    /// The model's diffusers folder: `cases.json`'s `model` (relative to the fixture), else
    /// `model/`.
    fn model_dir(&self) -> PathBuf {
        self.dir
            .join(self.cases["model"].as_str().unwrap_or("model"))
    }

    /// The LoRAs a case applies, with their files beside `cases.json`.
    fn loras(&self, case: &Value) -> Vec<ResolvedLora> {
        case["loras"]
            .as_array()
            .map(|list| {
                list.iter()
                    .map(|l| {
                        let file = l["file"].as_str().expect("lora file");
                        ResolvedLora {
                            name: file.to_string(),
                            path: self.dir.join(file),
                            weight: l["weight"].as_f64().unwrap_or(1.0),
                            field: "loras",
                        }
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn sources(&self) -> Vec<(String, ModelSource)> {
        let model = self.model_dir();
        let mut out = vec![(
            "diffusers folder".to_string(),
            ModelSource::Folder(model.clone()),
        )];
        let single = model.parent().unwrap_or(&self.dir).join("single-file");
        if let Ok(entries) = std::fs::read_dir(single) {
            let mut files: Vec<_> = entries
                .flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|e| e == "safetensors"))
                .collect();
            files.sort();
            for file in files {
                out.push((
                    format!("single file {}", file.display()),
                    ModelSource::SingleFile {
                        file,
                        config: Some(model.clone()),
                    },
                ));
            }
        }
        out
    }
}

fn max_abs(t: &Tensor) -> f32 {
    t.abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

fn errors(actual: &Tensor, expected: &Tensor) -> (f32, f32) {
    assert_eq!(actual.dims(), expected.dims(), "shape");
    let diff = (actual.to_dtype(DType::F32).unwrap() - expected)
        .unwrap()
        .abs()
        .unwrap();
    let max = max_abs(&diff);
    let mean = diff.mean_all().unwrap().to_scalar::<f32>().unwrap();
    (max, mean)
}

/// Checks a component output: max abs error <= 1e-3 x max |reference|.
fn component(label: &str, actual: &Tensor, expected: &Tensor, failures: &mut Vec<String>) {
    let (max, _) = errors(actual, expected);
    let limit = 1e-3 * max_abs(expected);
    eprintln!("{label}: max abs err {max:.3e} (limit {limit:.3e})");
    if max > limit {
        failures.push(format!("{label}: max abs err {max:.3e} > {limit:.3e}"));
    }
}

/// Hands out the reference's exact noise tensors by purpose.
struct Replay {
    initial: Tensor,
    vae: Option<Tensor>,
    steps: Vec<Tensor>,
    start: usize,
}

impl NoiseSource for Replay {
    fn draw(&mut self, purpose: NoisePurpose, shape: &[usize]) -> Result<Tensor, EngineError> {
        let t = match purpose {
            NoisePurpose::Initial { pass: 0 } => self.initial.clone(),
            NoisePurpose::VaeSample => self.vae.clone().expect("no VAE sample noise in case"),
            NoisePurpose::Step { pass: 0, step } => self.steps[step - self.start].clone(),
            other => panic!("unexpected draw {other:?}"),
        };
        assert_eq!(t.dims(), shape, "noise shape for {purpose:?}");
        Ok(t)
    }
}

fn run_pipeline_case(
    fx: &Fixture,
    model: &StableDiffusion,
    case: &Value,
    label: &str,
    failures: &mut Vec<String>,
) {
    let s = |k: &str| case[k].as_str().unwrap_or_default().to_string();
    let u = |k: &str| case[k].as_u64().unwrap_or_else(|| panic!("{k}")) as usize;
    let scheduler: SchedulerConfig =
        serde_json::from_value(case["scheduler_config"].clone()).expect("scheduler_config");
    let steps = u("steps");
    let sampler = parse_sampler(&s("sampler"), None).expect("sampler");
    let img2img = case["kind"] == "img2img" || case["kind"] == "sdxl_img2img";
    let strength = case["strength"].as_f64().unwrap_or(1.0);
    let start = if img2img {
        img2img_start(steps, strength).unwrap()
    } else {
        0
    };

    // The schedule itself must be diffusers'.
    let built = build_sampler(&sampler, &scheduler, steps).unwrap();
    if let Some(want) = case["init_noise_sigma"].as_f64() {
        let ours = built.init_noise_sigma();
        if (ours - want).abs() > 1e-4 * want.abs().max(1.0) {
            failures.push(format!(
                "{label}: init_noise_sigma {ours} != reference {want}"
            ));
        }
    }
    let used: Vec<f64> = case["timesteps_used"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let ours = &built.timesteps()[start..];
    if ours.len() != used.len() || ours.iter().zip(&used).any(|(a, b)| (a - b).abs() > 1e-3) {
        failures.push(format!("{label}: timesteps {ours:?} != reference {used:?}"));
    }

    let job = Job {
        prompt: s("prompt"),
        negative_prompt: s("negative_prompt"),
        steps,
        cfg_scale: case["cfg_scale"].as_f64().unwrap(),
        guidance_rescale: case["guidance_rescale"].as_f64().unwrap_or(0.0),
        sampler,
        scheduler_override: Some(scheduler),
        width: u("width"),
        height: u("height"),
        batch_size: 1,
        init_image: img2img.then(|| fx.t(case["init_image"].as_str().unwrap())),
        denoising_strength: strength,
        hires: None,
        clip_skip: 0,
        plain_prompt: true,
        preview_every: None,
        embeddings: Vec::new(),
        decoder: Default::default(),
    };
    let noise_key = if img2img { "noise" } else { "initial_noise" };
    let replay = Replay {
        initial: fx.t(case[noise_key].as_str().unwrap()),
        vae: case["vae_sample_noise"].as_str().map(|k| fx.t(k)),
        steps: case["ancestral_step_noise"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| fx.t(k.as_str().unwrap()))
            .collect(),
        start,
    };
    let mut noise: Vec<Box<dyn NoiseSource>> = vec![Box::new(replay)];
    let mut steps_seen = 0;
    let out = model
        .run(
            &job,
            &mut noise,
            &mut |_| steps_seen += 1,
            &CancelToken::new(),
        )
        .unwrap_or_else(|e| panic!("{label}: {e}"));
    if steps_seen != steps - start {
        failures.push(format!(
            "{label}: {steps_seen} progress callbacks for {} steps",
            steps - start
        ));
    }
    let (lmax, lmean) = errors(
        &out.latents,
        &fx.t(case["expected_latents"].as_str().unwrap()),
    );
    let (imax, imean) = errors(&out.images, &fx.t(case["expected_image"].as_str().unwrap()));
    eprintln!(
        "{label}: latents max {lmax:.3e} mean {lmean:.3e}; image max {imax:.3e} mean {imean:.3e}"
    );
    if imax > 2e-2 || imean > 2e-3 {
        failures.push(format!(
            "{label}: image max {imax:.3e} (limit 2e-2), mean {imean:.3e} (limit 2e-3)"
        ));
    }
}

fn run_all(fx: &Fixture, source_label: &str, source: &ModelSource) -> Vec<String> {
    let mut model = StableDiffusion::load("parity", source, &LoadOptions::cpu())
        .unwrap_or_else(|e| panic!("{source_label}: load failed: {e}"));
    let mut failures = vec![];
    let mut ran = 0;
    for case in fx.cases() {
        let kind = case["kind"].as_str().unwrap_or_default();
        let id = case["id"].as_str().map(str::to_string).unwrap_or_else(|| {
            format!(
                "{kind} {}",
                case["expected"]
                    .as_str()
                    .or(case["timestep"].as_str())
                    .unwrap_or("")
            )
        });
        let label = format!("[{source_label}] {id}");
        let loras = fx.loras(case);
        model
            .apply_loras(&loras)
            .unwrap_or_else(|e| panic!("{label}: applying its LoRAs: {e}"));
        for (what, got, key) in case_outputs(fx, &model, case, &label, &mut failures) {
            component(
                &what,
                &got,
                &fx.t(case[key].as_str().unwrap()),
                &mut failures,
            );
        }
        if case["without_lora"].is_string() {
            // The same output with the LoRAs taken out again: the base model came back.
            model.apply_loras(&[]).unwrap();
            for (what, got, _) in case_outputs(fx, &model, case, &label, &mut failures) {
                let want = fx.t(case["without_lora"].as_str().unwrap());
                component(&format!("{what} without LoRA"), &got, &want, &mut failures);
            }
        }
        ran += 1;
    }
    assert!(ran > 0, "no cases ran");
    failures
}

/// A case's outputs as (what, our tensor, the reference's key); pipeline cases are checked
/// in place and give none.
fn case_outputs(
    fx: &Fixture,
    model: &StableDiffusion,
    case: &Value,
    label: &str,
    failures: &mut Vec<String>,
) -> Vec<(String, Tensor, &'static str)> {
    let label = label.to_string();
    let kind = case["kind"].as_str().unwrap_or_default();
    let want = |key: &str| fx.t(case[key].as_str().unwrap());
    match kind {
        "text_embeddings" => {
            let got = model
                .encode_plain(case["prompt"].as_str().unwrap(), 0)
                .unwrap();
            vec![(label, got.context, "expected")]
        }
        "sdxl_text_embeddings" => sdxl_text_checks(model, case, &label),
        "unet" => {
            let t = case["timestep"].as_f64().unwrap();
            let context = want("context");
            let got = model
                .unet_forward(&want("sample"), t, &Cond::text(&context))
                .unwrap();
            vec![(format!("{label} t={}", case["timestep"]), got, "expected")]
        }
        "sdxl_unet" => {
            let t = case["timestep"].as_f64().unwrap();
            let context = want("context");
            let ids: Vec<f64> = case["time_ids"]
                .as_array()
                .expect("time_ids")
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            let cond = Cond {
                context: &context,
                added: Some(AddedConditioning {
                    text_embeds: want("text_embeds"),
                    time_ids: ids.try_into().expect("six time ids"),
                }),
            };
            let got = model.unet_forward(&want("sample"), t, &cond).unwrap();
            vec![(format!("{label} t={}", case["timestep"]), got, "expected")]
        }
        "vae_decode" => {
            let got = model.decode(&want("latents_scaled")).unwrap();
            vec![(label, got, "expected")]
        }
        "vae_encode" => {
            let post = model.vae.encode(&want("image")).unwrap();
            vec![
                (format!("{label} mean"), post.mean, "expected_mean"),
                (format!("{label} std"), post.std, "expected_std"),
            ]
        }
        "txt2img" | "img2img" | "sdxl_txt2img" | "sdxl_img2img" => {
            run_pipeline_case(fx, model, case, &label, failures);
            vec![]
        }
        other => {
            failures.push(format!("{label}: unknown case kind '{other}'"));
            vec![]
        }
    }
}

/// SDXL's prompt embeddings and pooled output, and each encoder's last hidden state (after the
/// final norm) where the case has it: those catch a wrong load of parts SDXL otherwise skips.
fn sdxl_text_checks(
    model: &StableDiffusion,
    case: &Value,
    label: &str,
) -> Vec<(String, Tensor, &'static str)> {
    let prompt = case["prompt"].as_str().unwrap();
    let clip_skip = case["clip_skip"].as_u64().unwrap_or(0) as usize;
    let got = if case["negative_zeroed"].as_bool() == Some(true) {
        // An empty negative beside any prompt: what the pipeline feeds the UNet.
        model
            .encode_pair("", "a prompt", clip_skip, true)
            .unwrap()
            .0
    } else {
        model.encode_plain(prompt, clip_skip).unwrap()
    };
    let mut checks = vec![
        (
            format!("{label} embeds"),
            got.context,
            "expected_prompt_embeds",
        ),
        (
            format!("{label} pooled"),
            got.pooled.expect("SDXL has a pooled output"),
            "expected_pooled",
        ),
    ];
    let second = model.text_encoder_2.as_ref().expect("second encoder");
    let encoders = [
        (
            &model.tokenizer,
            &model.text_encoder,
            "expected_te1_last_hidden_state",
        ),
        (
            &second.tokenizer,
            &second.encoder,
            "expected_te2_last_hidden_state",
        ),
    ];
    for (tok, enc, key) in encoders {
        if case[key].is_string() {
            let ids = tok.encode_padded(prompt, enc.max_positions());
            let ids = Tensor::new(ids.as_slice(), &Device::Cpu)
                .unwrap()
                .unsqueeze(0)
                .unwrap();
            checks.push((
                format!("{label} {key}"),
                enc.forward(&ids, 0, &[]).unwrap(),
                key,
            ));
        }
    }
    checks
}

/// Every tokenizer case of every fixture gives the reference ids (both tokenizers for SDXL).
pub fn tokenizer_ids_match_reference() {
    for dir in fixture_dirs() {
        if taesd::is_taesd(&dir) {
            continue;
        }
        let fx = Fixture::load(dir);
        let cases = fx.cases["tokenizer"].as_array().expect("tokenizer cases");
        assert!(!cases.is_empty());
        for (folder, key) in [
            ("tokenizer", "input_ids_padded_77"),
            ("tokenizer_2", "input_ids_2_padded_77"),
        ] {
            let dir = fx.model_dir().join(folder);
            if !dir.is_dir() {
                continue;
            }
            let tok = ClipTokenizer::from_dir(&dir).unwrap();
            for case in cases {
                let prompt = case["prompt"].as_str().unwrap();
                let want: Vec<u32> = case[key]
                    .as_array()
                    .unwrap_or_else(|| panic!("{key} for {folder}"))
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect();
                assert_eq!(
                    tok.encode_padded(prompt, want.len()),
                    want,
                    "{folder}: prompt {prompt:?}"
                );
            }
        }
    }
}

/// Every case of every fixture matches diffusers, from the folder and from each single file.
pub fn every_case_matches_diffusers_for_every_model_source() {
    let mut failures = vec![];
    for dir in fixture_dirs() {
        let is_taesd = taesd::is_taesd(&dir);
        let fx = Fixture::load(dir);
        if is_taesd {
            failures.extend(taesd::run(&fx));
            continue;
        }
        for (label, source) in fx.sources() {
            failures.extend(run_all(&fx, &label, &source));
        }
    }
    assert!(
        failures.is_empty(),
        "parity failures:\n{}",
        failures.join("\n")
    );
}
