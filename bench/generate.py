"""Text-to-image throughput: the toy generator and a randomly initialised pipeline with the real
configuration of the default model (stabilityai/sd-turbo: the SD 2.1 UNet, VAE and OpenCLIP-H text
encoder), through `mmindex generate`'s own generation path, each in a fresh process with its peak RSS.

    python bench/generate.py [--size 512] [--images 2] [--device cpu]   # about 5 minutes on 2 cores

sd-turbo makes an image in one step without guidance (what mmindex uses for it by default); compute
cost does not depend on the weights' values, so random weights time it right. No weights are
downloaded: the configuration is written out below.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile

ARM = r"""
import json, sys, time
from pathlib import Path
arm, size, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
device, work = sys.argv[4], Path(sys.argv[5])
from mmindex.models.generator import ImageSettings, load_generator
if arm == "toy":
    generator, steps = load_generator("toy-generator"), 1
else:
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from mmindex.toy.models import clip_tokenizer
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=1024, use_linear_projection=True,
    )
    vae = AutoencoderKL(
        block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )
    tokenizer = clip_tokenizer(max_length=77)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_attention_heads=16,
        num_hidden_layers=23, max_position_embeddings=77, hidden_act="gelu", projection_dim=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    ))
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       timestep_spacing="trailing", steps_offset=1)
    StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
                            safety_checker=None, feature_extractor=None,
                            requires_safety_checker=False).save_pretrained(str(work / "sd-turbo-config"))
    del unet, vae, text
    generator, steps = load_generator(str(work / "sd-turbo-config"), device=device), 1
settings = ImageSettings(steps=steps, guidance=0.0 if arm != "toy" else None, width=size, height=size)
generator.generate(["warm up"], [0], settings)
started = time.perf_counter()
for i in range(count):
    generator.generate([f"a red circle {i}"], [i], settings)
seconds = time.perf_counter() - started
peak = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"arm": arm, "size": size, "images_per_second": count / seconds,
                  "seconds_per_image": seconds / count, "peak_rss_mb": round(peak / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument("--toy-images", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        for arm, size, count in (("toy", 256, args.toy_images), ("sd-turbo-config", args.size, args.images)):
            done = subprocess.run(
                [sys.executable, "-c", ARM, arm, str(size), str(count), args.device, work],
                capture_output=True, text=True,
            )  # fmt: skip
            if done.returncode:
                print(done.stderr[-3000:], file=sys.stderr)
                continue
            print(json.dumps(json.loads(done.stdout.strip().splitlines()[-1])))


if __name__ == "__main__":
    main()
