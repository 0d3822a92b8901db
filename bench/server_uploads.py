"""Memory of `mmindex serve` under large query uploads: 20 clients at once each upload a 49-megapixel
image (JPEG, then PNG) to `POST /api/search`; the server's peak resident memory (VmHWM) is read from
/proc before and after. At most UPLOAD_SLOTS uploads are held and decoded at once.

    python bench/server_uploads.py [--clients 20] [--megapixels 49]

Linux only (reads /proc). Prints the figures and a JSON line.
"""

from __future__ import annotations

import argparse
import io
import json
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image, ImageDraw

import mmindex
from mmindex.server.app import UPLOAD_SLOTS
from mmindex.toy.shapes import write_corpus


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def memory_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def big_image(megapixels: int, kind: str) -> bytes:
    side = int((megapixels * 1_000_000) ** 0.5)
    image = Image.new("RGB", (side, side), (240, 240, 235))
    ImageDraw.Draw(image).ellipse((side // 4, side // 4, 3 * side // 4, 3 * side // 4), fill=(215, 35, 35))
    out = io.BytesIO()
    image.save(out, format=kind, quality=90) if kind == "JPEG" else image.save(out, format=kind)
    return out.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=20)
    parser.add_argument("--megapixels", type=int, default=49)
    args = parser.parse_args()
    figures: dict[str, object] = {
        "clients": args.clients,
        "megapixels": args.megapixels,
        "slots": UPLOAD_SLOTS,
    }
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        write_corpus(root / "shapes", 48, seed=5)
        db = str(root / "db")
        mmindex.index(str(root / "shapes"), db=db, model="toy-clip", progress=False)
        port = free_port()
        serve = [
            sys.executable,
            "-m",
            "mmindex.cli",
            "serve",
            "--db",
            db,
            "--port",
            str(port),
            "--no-access-log",
        ]
        server = subprocess.Popen(serve, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline:
                try:
                    urllib.request.urlopen(url + "/healthz", timeout=1)
                    break
                except OSError:
                    time.sleep(0.5)
            figures["idle_rss_mb"] = round(memory_mb(server.pid, "VmRSS"))
            for kind in ("JPEG", "PNG"):
                data = big_image(args.megapixels, kind)

                def upload(_: int, data: bytes = data, kind: str = kind) -> int:
                    files = {"image": (f"big.{kind.lower()}", data)}
                    return httpx.post(
                        url + "/api/search", files=files, params={"k": 3}, timeout=600
                    ).status_code

                started = time.perf_counter()
                with ThreadPoolExecutor(args.clients) as pool:
                    statuses = list(pool.map(upload, range(args.clients)))
                figures[kind] = {
                    "upload_mb": round(len(data) / 1e6, 1),
                    "statuses": sorted(set(statuses)),
                    "seconds": round(time.perf_counter() - started, 1),
                    "peak_rss_mb_so_far": round(memory_mb(server.pid, "VmHWM")),
                }
        finally:
            server.terminate()
            server.wait(timeout=30)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
