# PyTorch's side of the SDXL benchmark: one SDXL-base-shaped UNet forward with CFG (batch 2) and
# random weights on the CPU, the figure `limner bench --model random:sdxl --no-decode` is held to.
# Usage: ~/kit/bin/python benches/torch/sdxl_unet_step.py THREADS HEIGHT WIDTH [CALLS]
# Prints the build time, each call's seconds and the process' peak RSS. Run it alternately with
# limner (torch, limner, torch) on the same machine.
import resource
import sys
import time

import torch
from diffusers import UNet2DConditionModel

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 2
H, W = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (1216, 832)
calls = int(sys.argv[4]) if len(sys.argv) > 4 else 2
torch.set_num_threads(threads)
# stabilityai/stable-diffusion-xl-base-1.0 unet/config.json
cfg = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    block_out_channels=(320, 640, 1280), attention_head_dim=(5, 10, 20),
    transformer_layers_per_block=(1, 2, 10), cross_attention_dim=2048, use_linear_projection=True,
    addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32,
)
torch.manual_seed(0)
t0 = time.time()
unet = UNet2DConditionModel(**cfg).eval()
print("build s", round(time.time() - t0, 1), flush=True)
x = torch.randn(2, 4, H // 8, W // 8)
ctx = torch.randn(2, 77, 2048)
added = {"text_embeds": torch.randn(2, 1280),
         "time_ids": torch.tensor([[H, W, 0, 0, H, W]] * 2, dtype=torch.float32)}
with torch.inference_mode():
    for i in range(calls):
        t0 = time.time()
        unet(x, 500, encoder_hidden_states=ctx, added_cond_kwargs=added)
        print(f"step {i}: {time.time() - t0:.2f} s", flush=True)
print("peak RSS MB", round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024), flush=True)
