"""The GPU path's figures: model-only, decode-only and end-to-end images/s on one CUDA device.

    bash bench/gpu.sh                  # sets up what it needs, then runs this (under 8 minutes)
    python bench/gpu.py [--images 20000] [--hd-images 3000] [--batch 1024]

On generated photo-like JPEGs of ImageNet size (about 500x375) and 1080p, with a randomly
initialised CLIP of the ViT-B/32 configuration (the compute cost of openai/clip-vit-base-patch32):

- model only: the image tower on pre-made CUDA tensors, fp16 and bf16 weights (what `--precision
  auto` picks on CUDA), synchronised, at the batch size;
- decode only: JPEG bytes in memory -> [B, 3, 224, 224] uint8 on the GPU, (a) Pillow in a thread
  per host core (mmindex's CPU path: draft-mode decode, resize, crop), (b) nvImageCodec batch
  decoding plus torch resizing on the GPU (`mmindex.models.device_decode`), when it is installed;
- end to end: `mmindex index DIR --device cuda` (a fresh process, in-process orchestrator, model
  loading excluded by the run's own clock), without and with thumbnails.

Results: bench/results/gpu.json and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from index_throughput import model_dir  # noqa: E402

WORK = Path(os.environ.get("MMINDEX_GPU_BENCH_DIR", tempfile.gettempdir())) / "mmindex-gpu-bench"
IMAGENET_SIZES = [(500, 375), (500, 333), (375, 500), (500, 400), (640, 480), (400, 300)]
HD_SIZES = [(1920, 1080)]


def jpeg(arguments: tuple[int, tuple[int, int]]) -> bytes:
    from PIL import Image, ImageDraw, ImageFilter

    seed, size = arguments
    rng = random.Random(seed)
    image = Image.new("RGB", size, tuple(rng.randrange(256) for _ in range(3)))
    draw = ImageDraw.Draw(image)
    for _ in range(12):
        box = (
            sorted(rng.randrange(size[0]) for _ in range(2)),
            sorted(rng.randrange(size[1]) for _ in range(2)),
        )
        draw.ellipse(
            (box[0][0], box[1][0], box[0][1], box[1][1]), fill=tuple(rng.randrange(256) for _ in range(3))
        )
    texture = Image.effect_noise(size, 30).convert("RGB")
    image = Image.blend(image, texture, 0.2).filter(ImageFilter.GaussianBlur(1))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def corpus(name: str, count: int, sizes: list[tuple[int, int]]) -> Path:
    root = WORK / f"{name}-{count}"
    if root.exists() and len(list(root.glob("*.jpg"))) == count:
        return root
    root.mkdir(parents=True, exist_ok=True)
    jobs = [(seed, sizes[seed % len(sizes)]) for seed in range(count)]
    with ProcessPoolExecutor() as pool:
        for seed, data in enumerate(pool.map(jpeg, jobs, chunksize=64)):
            (root / f"{seed:06d}.jpg").write_bytes(data)
    return root


def synchronised_rate(run: Any, images_per_call: int, seconds: float = 6.0) -> float:
    import torch

    run()
    torch.cuda.synchronize()
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        run()
        calls += 1
    torch.cuda.synchronize()
    return calls * images_per_call / (time.perf_counter() - start)


def model_only(model: Path, batch: int) -> dict[str, float]:
    import torch
    from transformers import CLIPModel

    rates = {}
    for name, dtype in (("fp16 weights", torch.float16), ("bf16 weights", torch.bfloat16)):
        clip = CLIPModel.from_pretrained(model, dtype=dtype).eval().cuda()
        pixels = torch.randn(batch, 3, 224, 224, device="cuda", dtype=dtype)

        def run(clip: Any = clip, pixels: Any = pixels) -> None:
            with torch.inference_mode():
                clip.get_image_features(pixel_values=pixels)

        rates[name] = synchronised_rate(run, batch)
        del clip, pixels
        torch.cuda.empty_cache()
    return rates


def decode_only(root: Path, batch: int, limit: int) -> dict[str, float]:
    import numpy as np
    import torch
    from transformers import CLIPImageProcessorPil

    from mmindex.decode import decode
    from mmindex.models.device_decode import DeviceDecoder, nvimgcodec_decoder
    from mmindex.models.preprocess import preprocessor_for

    preprocess = preprocessor_for(CLIPImageProcessorPil()).as_uint8()  # type: ignore[union-attr]
    blobs = [path.read_bytes() for path in sorted(root.glob("*.jpg"))[:limit]]
    rates: dict[str, float] = {}
    threads = os.cpu_count() or 1

    def cpu_one(blob: bytes) -> np.ndarray:
        return preprocess(decode(blob, min_side=224).image)

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(cpu_one, blobs[:batch]))
        start = time.perf_counter()
        for offset in range(0, len(blobs), batch):
            pixels = np.stack(list(pool.map(cpu_one, blobs[offset : offset + batch])))
            torch.from_numpy(pixels).pin_memory().cuda(non_blocking=True)
        torch.cuda.synchronize()
        rates[f"Pillow, {threads} threads"] = len(blobs) / (time.perf_counter() - start)
    if nvimgcodec_decoder() is not None:
        decoder = DeviceDecoder(preprocess, torch.device("cuda"))
        decoder(blobs[:batch])
        torch.cuda.synchronize()
        start = time.perf_counter()
        for offset in range(0, len(blobs), batch):
            decoder(blobs[offset : offset + batch])
        torch.cuda.synchronize()
        rates["nvImageCodec + torch resize on the GPU"] = len(blobs) / (time.perf_counter() - start)
    return rates


def end_to_end(root: Path, model: Path, batch: int, thumbnails: bool) -> tuple[float, dict[str, Any]]:
    db = Path(tempfile.mkdtemp(prefix="gpu-db-", dir=WORK))
    command = [
        sys.executable, "-m", "mmindex.cli", "index", str(root), "--db", str(db), "--model", str(model),
        "--device", "cuda", "--batch-size", str(batch), "--no-progress", "--json",
        *([] if thumbnails else ["--no-thumbnails"]),
    ]  # fmt: skip
    env = {**os.environ, "MMINDEX_ORCHESTRATOR": "inprocess"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
        return 0.0, {}
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["indexed"] / report["seconds"], report


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=20_000, help="ImageNet-size JPEGs")
    parser.add_argument("--hd-images", type=int, default=3_000, help="1080p JPEGs")
    parser.add_argument("--batch", type=int, default=1024)
    args = parser.parse_args()
    import torch

    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py needs a CUDA device (torch sees none)")
    WORK.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    model = model_dir()
    imagenet = corpus("imagenet-size", args.images, IMAGENET_SIZES)
    hd = corpus("1080p", args.hd_images, HD_SIZES)
    device = torch.cuda.get_device_name()
    print(f"{device}; {os.cpu_count()} host cores; torch {torch.__version__}; corpora ready in "
          f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
    results: dict[str, Any] = {"device": device, "host_cores": os.cpu_count(), "batch": args.batch}
    results["model_only"] = model_only(model, args.batch)
    print("model only:", results["model_only"], flush=True)
    results["decode_only"] = {
        "imagenet-size": decode_only(imagenet, args.batch, 8192),
        "1080p": decode_only(hd, args.batch, 2048),
    }
    print("decode only:", results["decode_only"], flush=True)
    results["end_to_end"] = {}
    for name, root in (("imagenet-size", imagenet), ("1080p", hd)):
        for thumbnails in (False, True):
            rate, report = end_to_end(root, model, args.batch, thumbnails)
            key = f"{name}, {'with' if thumbnails else 'no'} thumbnails"
            results["end_to_end"][key] = {
                "images_per_s": rate,
                "stages": report.get("stages"),
                "models": report.get("models"),
            }
            print(f"end to end {key}: {rate:.0f} img/s", flush=True)
    out = HERE / "results" / "gpu.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"\n{device}, batch {args.batch} (total {time.perf_counter() - started:.0f} s)\n")
    print("| figure | images/s |\n|---|---|")
    for name, rate in results["model_only"].items():
        print(f"| model only, {name} | {rate:,.0f} |")
    for corpus_name, rates in results["decode_only"].items():
        for name, rate in rates.items():
            print(f"| decode only, {corpus_name}, {name} | {rate:,.0f} |")
    for name, row in results["end_to_end"].items():
        print(f"| end to end, {name} | {row['images_per_s']:,.0f} |")


if __name__ == "__main__":
    main()
