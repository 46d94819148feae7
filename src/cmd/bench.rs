//! `limner bench`: times one model end to end and prints a single JSON object, so benchmark
//! runs can be compared and collected by scripts.

use std::time::Instant;

use limner::engine::{CancelToken, GenerationRequest, LocalModel};
use serde_json::json;

use super::common::ModelArgs;

/// Arguments of `limner bench`.
#[derive(clap::Args)]
pub struct Args {
    /// A weights.toml name, a path, or random:sd15 / random:sd21 / random:sdxl (full-size,
    /// random weights).
    #[command(flatten)]
    pub model: ModelArgs,
    #[arg(long, default_value_t = 512)]
    pub width: usize,
    #[arg(long, default_value_t = 512)]
    pub height: usize,
    #[arg(long, default_value_t = 4)]
    pub steps: usize,
    #[arg(long, default_value = "Euler a")]
    pub sampler: String,
    #[arg(long, default_value_t = 8.0)]
    pub cfg: f64,
    /// Untimed runs first (kernel compilation, caches); default 1 on a GPU, 0 on the CPU.
    #[arg(long)]
    pub warmup: Option<usize>,
    #[arg(long, default_value = "portrait of a dwarf cleric, detailed face")]
    pub prompt: String,
    /// Also report where the time goes: candle's layer spans (conv2d, linear, attention, ...)
    /// summed over the timed run, inclusive and exclusive of nested spans.
    #[arg(long)]
    pub profile: bool,
    /// Time the UNet alone: `steps` guided UNet calls on random latents, no sampler, no VAE
    /// decode. Quick, and the figure to hold beside `torch_unet_step.py`.
    #[arg(long)]
    pub no_decode: bool,
    /// Make a live preview every N steps, as a server job asking for previews does (a TAESD
    /// decode when the family has one, else the latent approximation), and report their cost
    /// beside the step's, plus one full-size and one preview TAESD decode timed alone.
    #[arg(long)]
    pub preview_every: Option<usize>,
}

/// Peak resident memory of this process (Linux VmHWM), in MB.
fn peak_rss_mb() -> Option<f64> {
    proc_status_mb("VmHWM:")
}

/// Current resident memory (Linux VmRSS), in MB.
fn rss_mb() -> Option<f64> {
    proc_status_mb("VmRSS:")
}

fn proc_status_mb(key: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(key))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

pub fn run(args: Args, profile: Option<super::profile::Profile>) -> anyhow::Result<()> {
    let resolved = args.model.resolve()?;
    let request = GenerationRequest {
        prompt: args.prompt.clone(),
        negative_prompt: "blurry, lowres".into(),
        steps: Some(args.steps),
        cfg_scale: Some(args.cfg),
        sampler: Some(args.sampler.clone()),
        seed: Some(42),
        width: Some(args.width),
        height: Some(args.height),
        preview_every: args.preview_every,
        ..Default::default()
    }
    .validate(&resolved.defaults)?;

    let load_started = Instant::now();
    let mut model = LocalModel::load(&resolved.config)?;
    let load_s = load_started.elapsed().as_secs_f64();
    let rss_after_load_mb = rss_mb();
    if args.no_decode {
        return unet_only(
            &args,
            &model,
            &resolved.name,
            load_s,
            rss_after_load_mb,
            profile,
        );
    }
    let warmup = args.warmup.unwrap_or(if model.is_cpu() { 0 } else { 1 });
    for _ in 0..warmup {
        model.generate(&request, &mut |_| {}, &CancelToken::new())?;
    }
    // Only the timed run counts in the profile.
    if let Some(p) = &profile {
        p.clear();
    }
    let started = Instant::now();
    // Peak memory once denoising is done, to tell the UNet's share from the VAE decode's.
    let mut peak_after_denoise = None;
    // With --profile: the spans of the denoising loop alone, before the VAE decode.
    let mut unet_profile = None;
    let result = model.generate(
        &request,
        &mut |p| {
            eprintln!(
                "step {}/{} {:.1} s",
                p.step,
                p.total,
                p.elapsed.as_secs_f64()
            );
            if p.step == p.total {
                peak_after_denoise = peak_rss_mb();
                unet_profile = profile.as_ref().map(|p| p.report());
            }
        },
        &CancelToken::new(),
    )?;
    let end_to_end_s = started.elapsed().as_secs_f64();
    let t = &result.timings;
    let unet_s = t.unet_ms_total / 1000.0;
    let mut report = json!({
        "model": resolved.name,
        "device": model.device_name(),
        "dtype": model.dtype_name(),
        "flash_attn": model.flash_attn(),
        "width": args.width,
        "height": args.height,
        "steps": t.unet_steps,
        "sampler": result.sampler,
        "cfg_scale": args.cfg,
        "batch_per_unet_call": if args.cfg > 1.0 { 2 } else { 1 },
        "it_per_s": if unet_s > 0.0 { t.unet_steps as f64 / unet_s } else { 0.0 },
        "unet_ms_per_step": t.unet_ms_per_step(),
        "text_encode_ms": t.text_ms,
        "vae_decode_ms": t.vae_decode_ms,
        "end_to_end_s": end_to_end_s,
        "load_s": load_s,
        "rss_after_load_mb": rss_after_load_mb,
        "peak_rss_after_denoise_mb": peak_after_denoise,
        "peak_rss_mb": peak_rss_mb(),
    });
    report["decoder"] = json!(args.model.decoder.as_str());
    if args.preview_every.is_some() {
        let per_preview = t.preview_ms / t.previews.max(1) as f64;
        report["previews"] = json!(t.previews);
        report["preview_ms_each"] = json!(per_preview);
        // The share of the denoising time that previews add.
        report["preview_overhead"] = json!(if t.unet_ms_total > 0.0 {
            t.preview_ms / t.unet_ms_total
        } else {
            0.0
        });
        if let Ok((full, preview, w, h)) = model.time_taesd(args.width, args.height) {
            report["taesd_full_decode_ms"] = json!(full);
            report["taesd_preview_decode_ms"] = json!(preview);
            report["taesd_preview_size"] = json!([w, h]);
        }
    }
    if let Some(p) = &profile {
        report["profile_denoise"] = unet_profile.unwrap_or_default();
        report["profile"] = p.report();
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// `--no-decode`: guided UNet calls at the requested size, timed one by one.
fn unet_only(
    args: &Args,
    model: &LocalModel,
    name: &str,
    load_s: f64,
    rss_after_load_mb: Option<f64>,
    profile: Option<super::profile::Profile>,
) -> anyhow::Result<()> {
    let time = |calls: usize, on_call: &mut dyn FnMut(usize, f64)| {
        model.time_unet(
            &args.prompt,
            "blurry, lowres",
            args.width,
            args.height,
            args.cfg,
            calls,
            on_call,
        )
    };
    time(args.warmup.unwrap_or(0), &mut |_, _| {})?;
    if let Some(p) = &profile {
        p.clear();
    }
    let calls = args.steps.max(1);
    let timed = time(calls, &mut |i, ms| {
        eprintln!("unet call {}/{calls}: {ms:.0} ms", i + 1)
    })?;
    let times = timed.each_ms;
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let mut report = json!({
        "model": name,
        "mode": "unet_only",
        "device": model.device_name(),
        "dtype": model.dtype_name(),
        "flash_attn": model.flash_attn(),
        "width": args.width,
        "height": args.height,
        "batch_per_unet_call": timed.batch_per_call,
        "unet_ms_per_step": times.iter().sum::<f64>() / times.len() as f64,
        "unet_ms_min": sorted[0],
        "unet_ms_median": sorted[sorted.len() / 2],
        "unet_ms_each": times,
        "load_s": load_s,
        "weights_mb": model.weight_bytes() as f64 / (1u64 << 20) as f64,
        "rss_after_load_mb": rss_after_load_mb,
        "peak_rss_mb": peak_rss_mb(),
    });
    if let Some(p) = &profile {
        report["profile"] = p.report();
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
