"""Training throughput of `mmindex finetune` for the real ViT-B/32 configuration, and a toy fine-tune.

    python bench/finetune.py [--rounds 3] [--steps 3] [--batch 16]   # about 15 minutes on 2 cores
    python bench/finetune.py --device cuda --batch 256 --steps 10     # the same on a GPU (not yet run)

Each (train part, precision) arm runs in a fresh process: a randomly initialised CLIP with the
configuration of openai/clip-vit-base-patch32 (its compute cost; weight values do not matter), the
same TrainingStep the fine-tune runs (forward, multi-positive loss, backward, AdamW), on synthetic
224 px pixels and captions, timed over `--steps` steps after one warm-up step. The arms are
interleaved over rounds and each figure is the median over rounds; peak RSS is the process's own.
Data loading is not included (see bench/index_throughput.py for decoding): these are the model's
figures. The last line times a whole toy fine-tune (`mmindex demo --finetune`'s settings).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / ".bench"
ARMS = [(part, precision) for part in ("full", "last:2", "lora") for precision in ("fp32", "bf16")]


def one_arm(model_dir: str, part: str, precision: str, steps: int, batch: int, device: str) -> dict[str, Any]:
    """Pairs per second of `steps` training steps (in this process) and its peak RSS."""
    import numpy as np
    import torch

    from mmindex.finetuning.objective import TrainPart, select_trainable, trainable_count
    from mmindex.finetuning.step import TrainingStep
    from mmindex.models.clip import load_parts
    from mmindex.models.precision import autocast_dtype
    from mmindex.models.resolve import pick_device, resolve_model

    torch.manual_seed(0)
    torch_device = pick_device(device)
    model, tokenizer, _ = load_parts(resolve_model(model_dir))
    train_part = TrainPart.parse(part)
    select_trainable(model, train_part)
    model.to(torch_device)
    step = TrainingStep(
        model,
        tokenizer,
        lr=train_part.default_lr,
        weight_decay=0.1,
        total_steps=steps + 1,
        warmup=0.1,
        autocast=autocast_dtype(torch_device, precision),
        max_text_tokens=77,
    )
    model.train()
    rng = np.random.default_rng(0)
    pixels = rng.standard_normal((batch, 3, 224, 224), dtype=np.float32)
    words = ["red", "green", "blue", "circle", "square", "star", "photo", "of", "a"]
    captions = [" ".join(rng.choice(words, size=8)) for _ in range(batch)]
    step(pixels, captions)  # warm-up: allocations, kernel choice
    start = time.perf_counter()
    for _ in range(steps):
        step(pixels, captions)
    if torch_device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    return {
        "part": part,
        "precision": precision,
        "pairs_per_second": steps * batch / seconds,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if torch_device.type == "cuda" else 0.0,
        "trainable": trainable_count(model),
    }


def toy_finetune_seconds() -> float:
    """Wall time of `mmindex demo --finetune` minus nothing: corpus, index, fine-tune, re-index, queries."""
    import shutil

    directory = WORK / "finetune-demo"
    shutil.rmtree(directory, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "mmindex.cli", "demo", "--finetune", "--dir", str(directory)],
        check=True,
        capture_output=True,
        env={**__import__("os").environ, "MMINDEX_ORCHESTRATOR": "inprocess"},
    )
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--device", default="cpu", help="cpu or cuda (try --batch 256 there)")
    parser.add_argument("--arm", nargs=2, metavar=("PART", "PRECISION"), help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.arm:
        print(json.dumps(one_arm(args.model_dir, *args.arm, args.steps, args.batch, args.device)))
        return

    from mmindex.toy.models import real_size_clip

    model_dir = WORK / "vit-b32-random"
    if not (model_dir / "config.json").exists():
        real_size_clip(model_dir)
    import platform

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line), "")
    print(
        f"CPU: {cpu or platform.processor()}; device {args.device}; batch {args.batch}, "
        f"{args.steps} timed steps per arm"
    )
    from mmindex.models.precision import native_bf16 as cpu_native_bf16

    native_bf16 = args.device != "cpu" or cpu_native_bf16()
    if not native_bf16:
        print("this CPU has no native bf16: bf16 arms are emulated, timed on 1 step of 4 pairs")
    results: dict[tuple[str, str], list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    for round_number in range(args.rounds):
        for part, precision in ARMS:
            small = precision == "bf16" and not native_bf16
            steps, batch = (1, 4) if small else (args.steps, args.batch)
            command = [
                sys.executable, __file__, "--arm", part, precision, "--model-dir", str(model_dir),
                "--steps", str(steps), "--batch", str(batch), "--device", args.device,
            ]  # fmt: skip
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            result = json.loads(output.strip().splitlines()[-1])
            results[(part, precision)].append(result)
            print(
                f"  round {round_number + 1} {part:7} {precision}: {result['pairs_per_second']:.2f} pairs/s"
            )
    print(
        "\n| train part | precision | trainable parameters | pairs/s (median, range) | peak RSS | peak GPU |"
    )
    print("|---|---|---|---|---|---|")
    for (part, precision), runs in results.items():
        rates = [run["pairs_per_second"] for run in runs]
        rss = max(run["peak_rss_mb"] for run in runs)
        print(
            f"| {part} | {precision} | {runs[0]['trainable']:,} | {statistics.median(rates):.2f} "
            f"({min(rates):.2f}-{max(rates):.2f}) | {rss:,.0f} MB | {runs[0]['peak_gpu_mb']:,.0f} MB |"
        )
    print(f"\ntoy fine-tune, whole `mmindex demo --finetune` (in-process): {toy_finetune_seconds():.0f} s")


if __name__ == "__main__":
    main()
