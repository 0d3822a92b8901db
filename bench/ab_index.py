"""Interleaved A/B of `mmindex index`: this checkout against another one (e.g. a worktree of an older
commit), on the same corpus and model, against one running Prefect server, a fresh table each run.

    git worktree add /tmp/base <commit>
    python bench/ab_index.py --before /tmp/base --corpus .bench/corpus-900 --model .bench/vit-b32-random

Runs alternate (before, after, after, before, ...) so drift of the machine's speed hits both sides;
prints each run's stage seconds and the per-pair after/before ratios with their median. Build the
corpus and model first with bench/index_throughput.py (it leaves them in .bench/).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from index_throughput import start_prefect  # bench/ is on sys.path when this runs as a script

HERE = Path(__file__).resolve().parents[1]


def index_once(checkout: Path, corpus: Path, model: Path, env: dict[str, str]) -> dict[str, Any]:
    run_env = {**env, "PYTHONPATH": str(checkout)}  # that checkout's mmindex comes first
    db = tempfile.mkdtemp(prefix="ab-db-")
    command = [sys.executable, "-m", "mmindex.cli", "index", str(corpus), "--db", db, "--model", str(model),
               "--batch-size", "32", "--no-progress", "--json"]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, env=run_env, cwd=checkout, capture_output=True, text=True)
    wall = time.perf_counter() - started
    shutil.rmtree(db, ignore_errors=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    report = json.loads(result.stdout.splitlines()[-1])
    return {
        "wall": wall,
        "images_per_s": report["indexed"] / report["seconds"],
        "stages": report["stage_seconds"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--corpus", type=Path, default=HERE / ".bench" / "corpus-900")
    parser.add_argument("--model", type=Path, default=HERE / ".bench" / "vit-b32-random")
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()
    env = {**os.environ, "PREFECT_HOME": tempfile.mkdtemp(), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    env.pop("PREFECT_API_URL", None)
    server, url = start_prefect(env)
    env["PREFECT_API_URL"] = url
    sides = {"before": args.before.resolve(), "after": HERE}
    runs: dict[str, list[dict[str, Any]]] = {"before": [], "after": []}
    try:
        for pair in range(args.pairs):
            for side in ("before", "after") if pair % 2 == 0 else ("after", "before"):
                run = index_once(sides[side], args.corpus, args.model, env)
                runs[side].append(run)
                stages = {name: round(seconds, 1) for name, seconds in run["stages"].items()}
                print(f"{side:<6} wall {run['wall']:6.1f} s  {run['images_per_s']:6.2f} images/s  {stages}")
    finally:
        server.terminate()
    for figure in ("images_per_s", "wall"):
        ratios = [a[figure] / b[figure] for a, b in zip(runs["after"], runs["before"], strict=True)]
        shown = ", ".join(f"{ratio:.3f}" for ratio in ratios)
        print(f"after/before {figure}: {shown}  (median {statistics.median(ratios):.3f})")


if __name__ == "__main__":
    main()
