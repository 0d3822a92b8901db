"""Captions per second, batched against one image at a time, and where the time goes.

    python bench/caption_throughput.py [--images 32] [--batch 16]     # about 10 minutes on 2 cores

A randomly initialised BLIP with the configuration of Salesforce/blip-image-captioning-base (the real
model's compute cost), the same generated JPEGs (640x480 .. 1920x1080) and the same generation
settings for both ways; once in fp32 and once under bf16 autocast (`--precision bf16`). Random
weights never emit the end token, so every caption runs to max_new_tokens: the cost of the longest
captions, in both arms alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / ".bench"
sys.path.insert(0, str(HERE))


def time_captioning(captioner: Any, pixels: np.ndarray, batch: int) -> tuple[float, float]:
    """Seconds to caption every image batched, and (extrapolated from 16 images) one at a time."""
    captioner.caption_pixels(pixels[:2])  # warm-up
    start = time.perf_counter()
    for first in range(0, len(pixels), batch):
        captioner.caption_pixels(pixels[first : first + batch])
    batched = time.perf_counter() - start
    count = min(len(pixels), 16)
    start = time.perf_counter()
    for index in range(count):
        captioner.caption_pixels(pixels[index : index + 1])
    return batched, (time.perf_counter() - start) * len(pixels) / count


def main() -> None:
    from index_throughput import corpus

    from mmindex.decode import decode
    from mmindex.models.captioner import Captioner, GenerationSettings
    from mmindex.toy.models import real_size_blip

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=20)
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    model = WORK / "blip-base-random"
    if not (model / "model.safetensors").exists():
        real_size_blip(model)
    settings = GenerationSettings(max_new_tokens=args.max_new_tokens)
    paths = sorted(corpus(max(args.images, 300)).glob("*.jpg"))[: args.images]
    results: dict[str, float] = {
        "images": len(paths),
        "batch": args.batch,
        "max_new_tokens": args.max_new_tokens,
    }
    for precision in ("fp32", "bf16"):
        captioner = Captioner.load(str(model), device="cpu", precision=precision, settings=settings)
        start = time.perf_counter()
        pixels = np.stack(
            [
                captioner.preprocess(decode(p.read_bytes(), min_side=captioner.preprocess.min_side).image)
                for p in paths
            ]
        )
        decode_s = time.perf_counter() - start
        batched_s, single_s = time_captioning(captioner, pixels, args.batch)
        results[f"{precision}_batched_captions_per_s"] = len(pixels) / batched_s
        results[f"{precision}_single_captions_per_s"] = len(pixels) / single_s
        results[f"{precision}_speedup_batched_vs_single"] = single_s / batched_s
        results[f"{precision}_generate_ms_per_image_batched"] = 1000 * batched_s / len(pixels)
        results["decode_ms_per_image"] = 1000 * decode_s / len(pixels)
        results[f"{precision}_decode_share_batched"] = decode_s / (decode_s + batched_s)
    (WORK / "caption_throughput.json").write_text(json.dumps(results, indent=2))
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}")


if __name__ == "__main__":
    main()
