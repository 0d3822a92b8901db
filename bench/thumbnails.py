"""What storing thumbnails costs an index run: time per image and bytes per thumbnail.

    python bench/thumbnails.py            # about 5 minutes on 2 cores

On the generated photo-like JPEGs of bench/index_throughput.py (640x480 .. 1920x1080) and a randomly
initialised CLIP with the real ViT-B/32 configuration, it indexes the same corpus in this process with
thumbnails off, WebP (the default) and JPEG, in interleaved rounds (the machine's speed drifts), and
reports per mode: the median wall time relative to "off" with its spread, the thumbnail stage's own
seconds per image as a share of the run, and the average thumbnail size.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from index_throughput import corpus, model_dir

from mmindex.ingest.pipeline import IndexOptions, run_index
from mmindex.ingest.sources import open_source
from mmindex.ingest.thumbnail import Thumbnailer
from mmindex.models.clip import ClipEmbedder
from mmindex.store.reader import Store

MODES = {"off": None, "webp": Thumbnailer(format="webp"), "jpeg": Thumbnailer(format="jpeg")}


def one_run(source: Path, embedder: ClipEmbedder, mode: str, work: Path) -> dict[str, float]:
    db = work / f"db-{mode}"
    shutil.rmtree(db, ignore_errors=True)
    options = IndexOptions(batch_size=32, thumbnails=MODES[mode])
    report = run_index(open_source(str(source)), embedder, Store(str(db)), options)
    sizes = Store(str(db)).lancedb_table().to_arrow().column("thumbnail").to_pylist()
    made = [len(data) for data in sizes if data]
    return {
        "seconds": report.seconds,
        "thumbnail_seconds": report.stage_seconds.get("thumbnail", 0.0),
        "images": report.indexed,
        "bytes": sum(made) / len(made) if made else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    source = corpus(args.images)
    embedder = ClipEmbedder.load(str(model_dir()), device="cpu")
    runs: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory() as tmp:
        one_run(source, embedder, "off", Path(tmp))  # warm-up: page cache, lazy imports
        for _ in range(args.rounds):
            for mode in MODES:
                runs[mode].append(one_run(source, embedder, mode, Path(tmp)))
    print(f"{args.images} images, {args.rounds} interleaved rounds; {embedder.compute}")
    print("| thumbnails | run time vs off (median, min-max) | thumbnail stage share | ms/image | bytes |")
    print("|---|---|---|---|---|")
    for mode in MODES:
        ratios = [run["seconds"] / off["seconds"] for run, off in zip(runs[mode], runs["off"], strict=True)]
        share = statistics.median(run["thumbnail_seconds"] / run["seconds"] for run in runs[mode])
        per_image = statistics.median(1000 * run["thumbnail_seconds"] / run["images"] for run in runs[mode])
        size = statistics.median(run["bytes"] for run in runs[mode])
        print(
            f"| {mode} | {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}) | {share:.1%} "
            f"| {per_image:.2f} | {size:.0f} |"
        )


if __name__ == "__main__":
    main()
