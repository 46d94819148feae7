# PyTorch's side of the SD-Turbo benchmark: diffusers' StableDiffusionPipeline with SD 2.1-base-
# shaped random weights (SD-Turbo's shape: OpenCLIP-H text encoder, SD 2.1 UNet, the SD VAE),
# 512x512, 1 step of Euler a on trailing timesteps (SD-Turbo's scheduler config), guidance 0
# (no negative pass), on the CPU: the figure `limner bench --model random:sd21 --steps 1 --cfg 0`
# is compared with. `--tiny` decodes with AutoencoderTiny (TAESD-shaped, random) instead of the
# VAE, the counterpart of limner's `--decoder taesd`.
# Usage: ~/kit/bin/python benches/torch/turbo_e2e.py [THREADS] [--tiny] [--size N]
# Prints the text encoder, UNet, VAE decode and end-to-end seconds and the peak RSS. Run it
# alternately with limner (torch, limner, torch) on the same machine.
import argparse
import os
import resource
import time

import torch
from diffusers import (AutoencoderKL, AutoencoderTiny, EulerAncestralDiscreteScheduler,
                       StableDiffusionPipeline, UNet2DConditionModel)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("threads", nargs="?", type=int, default=2)
ap.add_argument("--tiny", action="store_true", help="decode with AutoencoderTiny (TAESD shape)")
ap.add_argument("--size", type=int, default=512)
args = ap.parse_args()
torch.set_num_threads(args.threads)
here = os.path.dirname(os.path.abspath(__file__))
presets = os.path.join(here, "..", "..", "src", "engine", "presets")

torch.manual_seed(0)
t0 = time.time()
# stabilityai/sd-turbo's unet/config.json (= SD 2.1-base's).
unet = UNet2DConditionModel(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024, use_linear_projection=True,
    flip_sin_to_cos=True, freq_shift=0, norm_num_groups=32).eval()
vae = AutoencoderKL(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
    block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4, sample_size=512, scaling_factor=0.18215).eval()
# OpenCLIP ViT-H/14's text tower as SD 2.x ships it (23 of its 24 layers).
text_encoder = CLIPTextModel(CLIPTextConfig(
    vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
    num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu", projection_dim=1024)).eval()
tokenizer = CLIPTokenizer(os.path.join(presets, "clip", "vocab.json"),
                          os.path.join(presets, "clip", "merges.txt"), pad_token="!",
                          model_max_length=77)
# stabilityai/sd-turbo's scheduler/scheduler_config.json, run as Euler a.
scheduler = EulerAncestralDiscreteScheduler(
    beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000,
    prediction_type="epsilon", steps_offset=1, timestep_spacing="trailing")
pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                               scheduler=scheduler, safety_checker=None, feature_extractor=None,
                               requires_safety_checker=False)
pipe.set_progress_bar_config(disable=True)
if args.tiny:
    pipe.vae = AutoencoderTiny().eval()  # its defaults are TAESD's shape
print("build s", round(time.time() - t0, 1), "decoder", "taesd" if args.tiny else "vae", flush=True)

prompt = "portrait of a dwarf cleric, detailed face"
size = args.size
with torch.inference_mode():
    for run in ("warm-up", "timed"):
        g = torch.Generator().manual_seed(42)
        start = time.time()
        t = time.time()
        embeds, _ = pipe.encode_prompt(prompt, "cpu", 1, False)
        text_s = time.time() - t
        t = time.time()
        latents = pipe(prompt_embeds=embeds, num_inference_steps=1, guidance_scale=0.0,
                       width=size, height=size, generator=g, output_type="latent").images
        unet_s = time.time() - t
        t = time.time()
        scale = getattr(pipe.vae.config, "scaling_factor", 1.0)
        image = pipe.vae.decode(latents / scale).sample
        pipe.image_processor.postprocess(image, output_type="pil")
        vae_s = time.time() - t
        total = time.time() - start
        print(f"{run}: text {text_s:.2f} s, unet {unet_s:.2f} s (1 step, batch 1), "
              f"decode {vae_s:.2f} s, end to end {total:.2f} s", flush=True)
print("peak RSS MB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), flush=True)
