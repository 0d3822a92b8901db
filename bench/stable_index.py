"""End-to-end `mmindex index` against plain transformers, in interleaved pairs that hold still.

    python bench/stable_index.py [--pairs 5] [--images 300] [--precision auto]   # ~10 minutes on 2 cores

These shared machines drift 2-3x within an hour, so a figure taken minutes after another means
little. Each pair here is: one `mmindex index` run (a fresh process, in-process orchestrator; its
report's own images/s, model loading excluded), then the baseline right after it: plain transformers
in a fresh process (`CLIPModel.get_image_features` on pre-made tensors, same batch, the best of
fp32, bf16 autocast and bf16 weights), then the machine's fp32 and bf16 matrix-multiply peaks. Every
ratio is taken within one pair; the verdict is the median pairwise ratio with its range, and a run
whose ratios spread more than 20% of their median is flagged as not to be trusted.

The model is a randomly initialised CLIP with the ViT-B/32 configuration (the compute cost of
openai/clip-vit-base-patch32: 8.8 GFLOP per 224 px image in the image tower).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from index_throughput import BATCH, WORK, corpus, model_dir  # noqa: E402

GFLOP_PER_IMAGE = 8.8
SPREAD_LIMIT = 0.2

BASELINE = """
import json, sys, time, torch
from transformers import CLIPModel
model = CLIPModel.from_pretrained(sys.argv[1]).eval()
x = torch.randn({batch}, 3, 224, 224)
native = bool(getattr(torch.cpu, "get_capabilities", dict)().get("avx512_bf16")
              or getattr(torch.cpu, "get_capabilities", dict)().get("amx_bf16"))
def rate(run, batches, images):
    inputs = x[:images]
    with torch.inference_mode():
        run(inputs); start = time.perf_counter()
        for _ in range(batches): run(inputs)
        return images * batches / (time.perf_counter() - start)
modes = {{"fp32": lambda t: model.get_image_features(pixel_values=t)}}
def autocast(t):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return model.get_image_features(pixel_values=t)
modes["bf16 autocast"] = autocast
half = CLIPModel.from_pretrained(sys.argv[1], dtype=torch.bfloat16).eval()
modes["bf16 weights"] = lambda t: half.get_image_features(pixel_values=t.to(torch.bfloat16))
# emulated bf16 (no native support) is an order of magnitude slower: a few images show that
rates = {{name: rate(run, 6, {batch}) if name == "fp32" or native else rate(run, 1, 4)
         for name, run in modes.items()}}
print(json.dumps(rates))
"""

PEAKS = """
import json, time, torch
def peak(dtype, size=1024, repeats=20):
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats): a @ b
        best = max(best, 2 * size ** 3 * repeats / (time.perf_counter() - start) / 1e12)
    return best
print(json.dumps({"fp32": peak(torch.float32), "bf16": peak(torch.bfloat16, repeats=4)}))
"""


def run_json(arguments: list[str]) -> dict[str, float]:
    result = subprocess.run(arguments, capture_output=True, text=True, check=True)
    data: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def index_rate(source: Path, model: Path, precision: str) -> tuple[float, str]:
    """Images/s of one `mmindex index` run by its own report, and how its model ran."""
    db = Path(tempfile.mkdtemp(prefix="stable-db-", dir=WORK))
    command = [
        sys.executable, "-m", "mmindex.cli", "index", str(source), "--db", str(db), "--model", str(model),
        "--batch-size", str(BATCH), "--precision", precision, "--no-thumbnails", "--no-progress", "--json",
    ]  # fmt: skip
    env = {**__import__("os").environ, "MMINDEX_ORCHESTRATOR": "inprocess"}
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    shutil.rmtree(db, ignore_errors=True)
    report = json.loads(result.stdout.strip().splitlines()[-1])
    return report["indexed"] / report["seconds"], str(report.get("models", ""))


def cpu_model() -> str:
    try:
        return next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if "model name" in line)
    except (OSError, StopIteration):
        import platform

        return platform.processor() or "unknown CPU"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=5)
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--precision", action="append", help="index precision(s) [auto and fp32]")
    args = parser.parse_args()
    precisions = args.precision or ["auto", "fp32"]
    source, model = corpus(args.images), model_dir()
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    flags = [flag for flag in ("avx512_bf16", "amx_bf16") if capabilities.get(flag)]
    print(
        f"CPU: {cpu_model()} ({', '.join(flags) or 'no native bf16'}); "
        f"torch threads {torch.get_num_threads()}"
    )
    print(f"{args.pairs} pairs of {args.images} images, batch {BATCH}\n")
    ratios: dict[str, list[float]] = {p: [] for p in precisions}
    shares: dict[str, list[float]] = {p: [] for p in precisions}
    modes: dict[str, list[float]] = {}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    labels: dict[str, str] = {}
    for pair in range(1, args.pairs + 1):
        rates = {}
        for precision in precisions:
            rates[precision], labels[precision] = index_rate(source, model, precision)
        baseline = run_json([sys.executable, "-c", BASELINE.format(batch=BATCH), str(model)])
        peak = run_json([sys.executable, "-c", PEAKS])
        best = max(baseline.values())
        for name, value in baseline.items():
            modes.setdefault(name, []).append(value)
        for name, value in peak.items():
            peaks[name].append(value)
        cells = []
        for precision in precisions:
            ratios[precision].append(rates[precision] / best)
            dtype = "bf16" if "bf16" in labels[precision] else "fp32"
            shares[precision].append(rates[precision] * GFLOP_PER_IMAGE / 1000 / peak[dtype])
            cells.append(f"index {precision} {rates[precision]:.1f} img/s")
        print(
            f"pair {pair}: {', '.join(cells)}; model only best {best:.1f} "
            f"({max(baseline, key=baseline.__getitem__)}); peaks fp32 {peak['fp32'] * 1000:.0f}, bf16 "
            f"{peak['bf16'] * 1000:.0f} GFLOP/s",
            flush=True,
        )

    def summary(values: list[float]) -> str:
        return f"{statistics.median(values):.2f} ({min(values):.2f}-{max(values):.2f})"

    print("\n| figure | median (range) over pairs |\n|---|---|")
    for precision in precisions:
        values = ratios[precision]
        spread = (max(values) - min(values)) / statistics.median(values)
        flag = "" if spread <= SPREAD_LIMIT else f" **spread {spread:.0%}: not to be trusted**"
        print(
            f"| index `--precision {precision}` ({labels[precision]}) / model only "
            f"| {summary(values)}{flag} |"
        )
        print(
            f"| index `--precision {precision}`: share of the same pair's matmul peak "
            f"| {summary(shares[precision])} |"
        )
    for name, values in modes.items():
        print(f"| model only, plain transformers, {name} (img/s) | {summary(values)} |")
    for name, values in peaks.items():
        print(f"| matmul peak {name} (GFLOP/s) | {summary([v * 1000 for v in values])} |")


if __name__ == "__main__":
    main()
