//! `limner generate`: paints one request to files, with a progress bar; the same engine code the
//! server uses, without the server.

use std::path::PathBuf;

use anyhow::Context;
use indicatif::{ProgressBar, ProgressStyle};
use limner::engine::{
    decode_image, CancelToken, GenerationRequest, HiresRequest, ImageFormat, LocalModel,
};

use super::common::ModelArgs;

/// Arguments of `limner generate`.
#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (A1111 syntax: (word:1.3), [word], BREAK).
    #[arg(long)]
    pub prompt: String,
    #[arg(long, default_value = "")]
    pub negative: String,
    /// Sampler name as AUTOMATIC1111 spells it, e.g. "Euler a", "DPM++ 2M Karras".
    #[arg(long)]
    pub sampler: Option<String>,
    /// Noise schedule, an A1111 schedule type ("Automatic", "Karras", "Exponential", "SGM Uniform", ...).
    #[arg(long)]
    pub scheduler: Option<String>,
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub cfg: Option<f64>,
    /// CFG rescale, 0-1 (diffusers' guidance_rescale; ~0.7 for v-prediction models).
    #[arg(long)]
    pub guidance_rescale: Option<f64>,
    /// -1 = random; image i of a batch uses seed + i.
    #[arg(long, default_value_t = -1, allow_hyphen_values = true)]
    pub seed: i64,
    #[arg(long)]
    pub width: Option<usize>,
    #[arg(long)]
    pub height: Option<usize>,
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// img2img: the image to start from.
    #[arg(long)]
    pub init_image: Option<PathBuf>,
    /// img2img denoising strength in (0, 1].
    #[arg(long)]
    pub strength: Option<f64>,
    /// Hires fix: a second img2img pass on the latents upscaled by --hr-scale.
    #[arg(long)]
    pub hires: bool,
    #[arg(long, default_value_t = 2.0)]
    pub hr_scale: f64,
    /// Steps of the second pass (0 = same as --steps).
    #[arg(long, default_value_t = 0)]
    pub hr_steps: usize,
    #[arg(long, default_value_t = 0.4)]
    pub hr_strength: f64,
    #[arg(long, default_value_t = 1)]
    pub clip_skip: usize,
    /// Output file; .png, .jpg or .webp. A batch writes NAME-1.png, NAME-2.png, ...
    #[arg(long, short)]
    pub out: PathBuf,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let format = ImageFormat::from_path(&args.out)?;
    let init_image = match &args.init_image {
        Some(path) => {
            let bytes =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Some(decode_image(&bytes)?)
        }
        None => None,
    };
    let resolved = args.model.resolve()?;
    let request = GenerationRequest {
        model: Some(resolved.name.clone()),
        prompt: args.prompt,
        negative_prompt: args.negative,
        steps: args.steps,
        cfg_scale: args.cfg,
        guidance_rescale: args.guidance_rescale,
        sampler: args.sampler,
        scheduler: args.scheduler,
        seed: Some(args.seed),
        width: args.width,
        height: args.height,
        batch_size: Some(args.batch),
        init_image,
        denoising_strength: args.strength,
        // The model's VAE: the weights.toml entry's or --vae (set on the model spec).
        vae: None,
        hires: args.hires.then(|| HiresRequest {
            scale: args.hr_scale,
            second_pass_steps: args.hr_steps,
            denoising_strength: args.hr_strength,
            upscaler: "Latent".into(),
        }),
        clip_skip: Some(args.clip_skip),
        format: Some(format.extension().to_string()),
        preview_every: None,
        ..Default::default()
    }
    .validate(&resolved.defaults)?;

    eprintln!("loading {} ...", resolved.name);
    let mut model = LocalModel::load(&resolved.config)?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("{bar:40} step {pos}/{len} {elapsed_precise} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let result = model.generate(
        &request,
        &mut |p| {
            bar.set_length(p.total as u64);
            bar.set_position(p.step as u64);
        },
        &CancelToken::new(),
    )?;
    bar.finish_and_clear();

    let many = result.images.len() > 1;
    for (i, img) in result.images.iter().enumerate() {
        let path = if many {
            let stem = args.out.file_stem().unwrap_or_default().to_string_lossy();
            args.out
                .with_file_name(format!("{stem}-{}.{}", i + 1, format.extension()))
        } else {
            args.out.clone()
        };
        write_atomically(&path, &img.bytes)?;
        println!(
            "{} ({}x{}, seed {})",
            path.display(),
            img.width,
            img.height,
            img.seed
        );
    }
    eprintln!(
        "{} steps, UNet {:.0} ms/step, VAE decode {:.0} ms, total {:.2} s",
        result.timings.unet_steps,
        result.timings.unet_ms_per_step(),
        result.timings.vae_decode_ms,
        result.timings.total_ms / 1000.0
    );
    Ok(())
}

/// Writes to a temporary file beside the target and renames, so a crash never leaves half a file.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}
