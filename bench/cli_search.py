"""`mmindex search` as a script calls it: wall time of the whole command, cold, in a fresh process
each time. Three ways, interleaved, on one table: in this process (`--no-server`: imports, model load,
query), through a running `mmindex serve` that the command finds by itself, and with `--server URL`.

    python bench/cli_search.py [--model toy-clip] [--images 200] [--runs 5]

With `--model openai/clip-vit-base-patch32` (downloaded once) it measures the real default model.
Prints medians in seconds and a JSON line with every run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mmindex
from mmindex.toy.shapes import write_corpus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy-clip")
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        write_corpus(root / "shapes", args.images, seed=5)
        db = str(root / "db")
        mmindex.index(str(root / "shapes"), db=db, model=args.model, progress=False)
        port = free_port()
        serve = [sys.executable, "-m", "mmindex.cli", "serve", "--db", db, "--port", str(port)]
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            search = [sys.executable, "-m", "mmindex.cli", "search", "a red circle", "--db", db, "--json"]
            ways = {
                "in process (--no-server)": [*search, "--no-server"],
                "found server": search,
                "--server URL": [*search, "--server", f"http://127.0.0.1:{port}"],
            }
            runs: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(args.runs):
                for name, command in ways.items():
                    runs[name].append(timed(command))
        finally:
            server.terminate()
            server.wait(timeout=30)
    for name, seconds in runs.items():
        print(f"{name:26s} median {statistics.median(seconds):6.2f} s  (min {min(seconds):.2f})")
    print(json.dumps({"model": args.model, "cpu": os.cpu_count(), "runs": runs}))


if __name__ == "__main__":
    main()
