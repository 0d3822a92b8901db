"""How fast `mmindex index` embeds compared with the model alone, and how much memory it needs.

    python bench/index_throughput.py            # about 9 minutes on 2 cores; results in .bench/

On generated JPEGs of realistic sizes (640x480 .. 1920x1080) and a randomly initialised CLIP with the
real ViT-B/32 configuration (the compute cost of openai/clip-vit-base-patch32), it reports:

- steady-state images/s of `mmindex index` (the CLI, through the Prefect flow): the difference
  between a 300- and a 900-image run, so start-up cancels out (each run twice, the faster counts);
- model-only images/s: forward passes on pre-made tensors, same batch size, threads and precision
  (`--precision`, default auto: bf16 on a CPU with fast native bf16, else fp32), and for comparison
  in fp32, bf16 and dynamic int8;
- the loop a user writes from the transformers docs (PIL open -> processor -> model), same model;
- start-up seconds, with a running Prefect server and with the temporary one Prefect starts itself;
- peak RSS of the indexing process for 1x (300) and 4x (1200) the corpus.

Every figure comes from this one run, so ratios are comparable even on a noisy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

HERE = Path(__file__).resolve().parent
WORK = HERE.parent / ".bench"
SIZES = [(640, 480), (800, 600), (1024, 768), (1280, 720), (1600, 900), (1920, 1080), (1080, 1440)]
BATCH = 32


def photo_like(index: int, rng: random.Random) -> Image.Image:
    from mmindex.toy.shapes import all_shapes, render

    size = rng.choice(SIZES)
    image = render(all_shapes()[index % 24], size, rng)
    texture = Image.effect_noise(size, 30).convert("RGB")
    return Image.blend(image, texture, 0.2).filter(ImageFilter.GaussianBlur(1))


def corpus(count: int) -> Path:
    """`count` JPEGs, built incrementally: the larger corpora hard-link the smaller ones' files."""
    pool = WORK / "jpegs"
    pool.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    for index in range(count):
        path = pool / f"{index:05d}.jpg"
        state = rng.getstate()
        if not path.exists():
            photo_like(index, rng).save(path, quality=88)
        rng.setstate(state)
        rng.random()
    root = WORK / f"corpus-{count}"
    if not root.exists():
        root.mkdir()
        for index in range(count):
            os.link(pool / f"{index:05d}.jpg", root / f"{index:05d}.jpg")
    return root


def model_dir() -> Path:
    from mmindex.toy.models import real_size_clip

    directory = WORK / "vit-b32-random"
    if not (directory / "model.safetensors").exists():
        real_size_clip(directory)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_prefect(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "prefect",
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--no-ui",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/api"
    for _ in range(600):
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return server, url
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("Prefect server did not start")


def timed_index(source: Path, model: Path, env: dict[str, str], precision: str) -> dict[str, float]:
    """Run `mmindex index` in a fresh process; wall seconds and the process's peak RSS (MiB)."""
    db = Path(tempfile.mkdtemp(prefix="bench-db-", dir=WORK))
    command = [
        sys.executable,
        "-m",
        "mmindex.cli",
        "index",
        str(source),
        "--db",
        str(db),
        "--model",
        str(model),
        "--batch-size",
        str(BATCH),
        "--precision",
        precision,
        "--no-progress",
        "--json",
    ]
    probe = (
        "import json, resource, subprocess, sys, time\n"
        f"start = time.perf_counter(); done = subprocess.run({command!r}, capture_output=True, text=True)\n"
        "wall = time.perf_counter() - start\n"
        "if done.returncode: sys.exit(done.stderr)\n"
        "rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024\n"
        "report = json.loads(done.stdout.splitlines()[-1])\n"
        "print(json.dumps({'seconds': wall, 'rss_mib': rss, 'report': report}))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True
    )
    shutil.rmtree(db, ignore_errors=True)
    data = json.loads(result.stdout)
    return {"seconds": data["seconds"], "rss_mib": data["rss_mib"], "indexed": data["report"]["indexed"]}


def model_only(model: Path, batches: int = 8, **load: Any) -> float:
    """Images/s of the image tower alone on pre-made [32, 3, 224, 224] tensors, in a fresh process
    (so it runs exactly like the indexer's forward passes, with the same torch threads)."""
    code = (
        "import json, sys, time, numpy as np\n"
        "from mmindex.models.clip import ClipEmbedder\n"
        f"e = ClipEmbedder.load({str(model)!r}, device='cpu', **{load!r})\n"
        f"x = np.random.default_rng(0).normal(size=({BATCH}, 3, 224, 224)).astype(np.float32)\n"
        "e.embed_pixels(x)\n"
        "start = time.perf_counter()\n"
        f"for _ in range({batches}): e.embed_pixels(x)\n"
        f"print({BATCH * batches} / (time.perf_counter() - start))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def docs_loop(model: Path, source: Path, count: int = 192) -> float:
    """The loop from the transformers docs: open with PIL, run the processor, call the model."""
    import torch
    from transformers import AutoProcessor, CLIPModel

    clip = CLIPModel.from_pretrained(model).eval()
    processor = AutoProcessor.from_pretrained(model)
    paths = sorted(source.glob("*.jpg"))[:count]
    start = time.perf_counter()
    for first in range(0, len(paths), BATCH):
        images = [Image.open(p).convert("RGB") for p in paths[first : first + BATCH]]
        with torch.no_grad():
            inputs = processor(images=images, return_tensors="pt")
            features = clip.get_image_features(**inputs).pooler_output
            features / features.norm(dim=-1, keepdim=True)
    return len(paths) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--small", type=int, default=300)
    parser.add_argument("--large", type=int, default=900)
    parser.add_argument("--precision", default="auto", help="for the index runs and the model-only figure")
    parser.add_argument(
        "--repeats", type=int, default=2, help="index runs per corpus size; the fastest counts"
    )
    args = parser.parse_args()
    WORK.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PREFECT_HOME": str(WORK / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "DO_NOT_TRACK": "1",
        "HF_HUB_OFFLINE": "1",
    }
    env.pop("PREFECT_API_URL", None)
    model = model_dir()
    small, large, huge = corpus(args.small), corpus(args.large), corpus(4 * args.small)
    empty = WORK / "corpus-empty"
    empty.mkdir(exist_ok=True)

    results: dict[str, float] = {}
    results["startup_temporary_server_s"] = timed_index(empty, model, env, args.precision)["seconds"]
    model_runs = [model_only(model, precision=args.precision)]
    server, url = start_prefect(env)
    try:
        served = {**env, "PREFECT_API_URL": url}
        results["startup_running_server_s"] = timed_index(empty, model, served, args.precision)["seconds"]
        small_runs, large_runs = [], []
        for _ in range(args.repeats):  # alternated, so that each figure sees the same machine
            small_runs.append(timed_index(small, model, served, args.precision))
            model_runs.append(model_only(model, precision=args.precision))
            large_runs.append(timed_index(large, model, served, args.precision))
            model_runs.append(model_only(model, precision=args.precision))
        run_huge = timed_index(huge, model, served, args.precision)
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    run_small = min(small_runs, key=lambda run: run["seconds"])
    run_large = min(large_runs, key=lambda run: run["seconds"])
    results["index_small_s"], results["index_large_s"] = run_small["seconds"], run_large["seconds"]
    steady = (args.large - args.small) / (run_large["seconds"] - run_small["seconds"])
    results["index_steady_img_s"] = steady
    results["model_only_img_s"] = float(np.median(model_runs))
    results["model_only_int8_img_s"] = model_only(model, quantize="int8")
    results["model_only_bf16_img_s"] = model_only(model, precision="bf16")
    results["model_only_fp32_img_s"] = model_only(model, precision="fp32")
    results["docs_loop_img_s"] = docs_loop(model, small)
    results["ratio_index_to_model"] = steady / results["model_only_img_s"]
    # the docs loop runs in fp32, so it is compared with the fp32 model alone
    results["ratio_docs_loop_to_fp32_model"] = results["docs_loop_img_s"] / results["model_only_fp32_img_s"]
    results["rss_1x_mib"], results["rss_4x_mib"] = run_small["rss_mib"], run_huge["rss_mib"]
    results["rss_growth_4x"] = run_huge["rss_mib"] / run_small["rss_mib"] - 1
    import torch

    from mmindex.models.precision import native_bf16

    results["torch_threads"] = torch.get_num_threads()
    results["auto_is_bf16_on_this_cpu"] = float(native_bf16())
    (WORK / f"index_throughput_{args.precision}.json").write_text(json.dumps(results, indent=2))
    width = max(map(len, results))
    for key, value in results.items():
        print(f"{key:<{width}}  {value:10.3f}")


if __name__ == "__main__":
    main()
