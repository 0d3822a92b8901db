"""Which way of running the model is fastest on this CPU, and does it keep the embeddings right?

    python bench/modes.py [--rounds 3] [--images 64]     # about 10 minutes on 2 cores

Each mode runs in a fresh process (plain transformers, a randomly initialised CLIP with the
ViT-B/32 configuration: the compute cost of openai/clip-vit-base-patch32) and reports image-tower
images/s on pre-made tensors, the latency of one short text query, and the lowest cosine of its
image embeddings to fp32's on the same inputs. The modes take turns, round after round (each round
starting one mode later), and each figure is the median over the rounds of its ratio to fp32 in the
same round, so the machine's drift cancels. The modes: fp32 (SDPA attention, transformers'
default), eager attention, torch.compile, bf16 autocast, bf16 weights, dynamic int8, one thread
instead of all, OpenMP's passive wait policy, and batch 16 / 64 instead of 32. Results:
bench/results/modes.json and a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from index_throughput import WORK, model_dir  # noqa: E402
from stable_index import cpu_model  # noqa: E402

CHILD = r"""
import json, sys, time
import numpy as np, torch
from transformers import CLIPModel, CLIPTokenizer
spec = json.loads(sys.argv[1])
torch.set_grad_enabled(False)  # not inference_mode: torch.compile cannot trace a function that enters it
if spec.get("threads"):
    torch.set_num_threads(spec["threads"])
kwargs = {"attn_implementation": spec.get("attention", "sdpa")}
if spec.get("weights") == "bf16":
    kwargs["dtype"] = torch.bfloat16
model = CLIPModel.from_pretrained(spec["model"], **kwargs).eval()
if spec.get("int8"):
    model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
dtype = torch.bfloat16 if spec.get("weights") == "bf16" else torch.float32
def image_forward(pixels):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.get("autocast", False)):
        return model.get_image_features(pixel_values=pixels.to(dtype)).pooler_output.float()
forward = image_forward
compile_seconds = 0.0
if spec.get("compile"):
    forward = torch.compile(image_forward, dynamic=False)
reference = np.load(spec["reference"])
probe = torch.from_numpy(np.load(spec["inputs"]))
start = time.perf_counter()
out = forward(probe[: spec["batch"]])  # warm-up (and compilation)
compile_seconds = time.perf_counter() - start
vectors = []
for offset in range(0, len(probe) - spec["batch"] + 1, spec["batch"]):
    vectors.append(forward(probe[offset : offset + spec["batch"]]).numpy())
vectors = np.concatenate(vectors)
vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
cosine = float((vectors * reference[: len(vectors)]).sum(1).min())
images = spec["images"]
batch = torch.randn(spec["batch"], 3, 224, 224)
done, start = 0, time.perf_counter()
while done < images:
    forward(batch)
    done += spec["batch"]
rate = done / (time.perf_counter() - start)
tokenizer = CLIPTokenizer.from_pretrained(spec["model"]) if spec.get("tokenizer") else None
text_ms = None
if tokenizer is not None:
    tokens = tokenizer(["a red bicycle leaning on a wall"], return_tensors="pt")
    def text():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=spec.get("autocast", False)):
            return model.get_text_features(**tokens)
    text()
    samples = []
    for _ in range(15):
        t = time.perf_counter(); text(); samples.append((time.perf_counter() - t) * 1000)
    text_ms = sorted(samples)[len(samples) // 2]
print(json.dumps({"rate": rate, "cosine": cosine, "warmup_s": compile_seconds, "text_ms": text_ms}))
"""

MODES: dict[str, dict[str, object]] = {
    "fp32 (SDPA)": {},
    "fp32, eager attention": {"attention": "eager"},
    "fp32, torch.compile": {"compile": True},
    "fp32, dynamic int8": {"int8": True},
    "bf16 autocast": {"autocast": True},
    "bf16 weights": {"weights": "bf16"},
    "fp32, 1 thread": {"threads": 1},
    "fp32, OMP_WAIT_POLICY=PASSIVE": {"env": {"OMP_WAIT_POLICY": "PASSIVE"}},
    "fp32, batch 16": {"batch": 16},
    "fp32, batch 64": {"batch": 64},
}


def native_bf16() -> bool:
    import torch

    capabilities = getattr(torch.cpu, "get_capabilities", dict)()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def reference(model: Path, count: int = 64) -> tuple[Path, Path]:
    import torch
    from transformers import CLIPModel

    inputs = np.random.default_rng(0).standard_normal((count, 3, 224, 224)).astype(np.float32)
    with torch.inference_mode():
        vectors = (
            CLIPModel.from_pretrained(model)
            .eval()
            .get_image_features(pixel_values=torch.from_numpy(inputs))
            .pooler_output.numpy()
        )
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    np.save(WORK / "modes-inputs.npy", inputs)
    np.save(WORK / "modes-reference.npy", vectors)
    return WORK / "modes-inputs.npy", WORK / "modes-reference.npy"


def run_mode(spec: dict[str, object]) -> dict[str, float]:
    env = {**os.environ, **spec.pop("env", {})}  # type: ignore[dict-item]
    result = subprocess.run(
        [sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True, env=env
    )
    if result.returncode != 0:
        return {"error": 1.0}
    data: dict[str, float] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--images", type=int, default=64, help="images timed per mode and round")
    parser.add_argument("--mode", action="append", help="only these modes (names as in the table)")
    args = parser.parse_args()
    model = model_dir()
    inputs, ref = reference(model)
    native = native_bf16()
    modes = {name: MODES[name] for name in (args.mode or MODES)}
    print(f"CPU: {cpu_model()} ({'native bf16' if native else 'no native bf16: bf16 is emulated'})")
    samples: dict[str, list[dict[str, float]]] = {name: [] for name in modes}
    names = list(modes)
    for round_number in range(1, args.rounds + 1):
        shift = (round_number - 1) % len(names)  # each round starts with another mode: no place bias
        for name in names[shift:] + names[:shift]:
            extra = modes[name]
            emulated = ("autocast" in extra or "weights" in extra) and not native
            spec = {
                "model": str(model), "inputs": str(inputs), "reference": str(ref), "batch": 32,
                "images": 8 if emulated else args.images, "tokenizer": True, **extra,
            }  # fmt: skip
            if emulated:
                spec["batch"] = 8
            result = run_mode(spec)
            samples[name].append(result)
            print(f"round {round_number} {name}: {result}", flush=True)
    base = samples["fp32 (SDPA)"]
    table = {}
    print("\n| mode | images/s | ratio to fp32 (range) | text query ms | min cosine to fp32 | warm-up s |")
    print("|---|---|---|---|---|---|")
    for name, runs in samples.items():
        good = [
            (run, fp) for run, fp in zip(runs, base, strict=True) if "error" not in run and "error" not in fp
        ]
        if not good:
            print(f"| {name} | failed | | | | |")
            table[name] = {"error": True}
            continue
        ratios = [run["rate"] / fp["rate"] for run, fp in good]
        row = {
            "images_per_s": statistics.median(run["rate"] for run, _ in good),
            "ratio": statistics.median(ratios),
            "ratio_range": [min(ratios), max(ratios)],
            "text_ms": statistics.median(run["text_ms"] for run, _ in good),
            "min_cosine": min(run["cosine"] for run, _ in good),
            "warmup_s": statistics.median(run["warmup_s"] for run, _ in good),
        }
        table[name] = row
        print(
            f"| {name} | {row['images_per_s']:.1f} | {row['ratio']:.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            f" "
            f"| {row['text_ms']:.1f} | {row['min_cosine']:.4f} | {row['warmup_s']:.1f} |"
        )
    out = HERE / "results" / "modes.json"
    out.write_text(json.dumps({"cpu": cpu_model(), "native_bf16": native, "modes": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
