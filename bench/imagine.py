"""Does "imagine" help? Text-only vs imagined search on the toy corpus, same queries, same table.

    python bench/imagine.py [--images 240] [--imagine 4]   # about a minute on 2 cores

A corpus of generated shapes (their captions held back, so search must go by pixels) is indexed with
the toy CLIP; for each of the 24 "a {colour} {shape}" queries, precision@10 of plain text-to-image
search and of `imagine=N` with the toy generator (N images made for the query, their image-to-image
results fused with the text results by reciprocal rank), and the time per query of each.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import mmindex
from mmindex.toy.shapes import COLOURS, SHAPES, write_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=240)
    parser.add_argument("--imagine", type=int, default=4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus"
        truth = {
            str(path): shape
            for path, shape, _ in write_corpus(corpus, args.images, seed=11, captioned_fraction=0.0)
        }
        db = str(Path(tmp) / "db")
        mmindex.index(str(corpus), db=db, model="toy-clip", progress=False)
        index = mmindex.connect(db)
        index.search("warm up", imagine=1, generator="toy-generator")
        figures: dict[str, list[float]] = {"text": [], "imagine": [], "text_ms": [], "imagine_ms": []}
        for colour in COLOURS:
            for shape in SHAPES:
                query = f"a {colour} {shape}"
                for arm, extra in (
                    ("text", {}),
                    ("imagine", {"imagine": args.imagine, "generator": "toy-generator"}),
                ):
                    started = time.perf_counter()
                    hits = index.search(query, k=10, **extra)
                    figures[f"{arm}_ms"].append((time.perf_counter() - started) * 1000)
                    right = sum(
                        1 for h in hits if (truth[h.uri].colour, truth[h.uri].shape) == (colour, shape)
                    )
                    figures[arm].append(right / 10)
    print(json.dumps({
        "images": args.images, "imagined_per_query": args.imagine,
        "precision_at_10_text": round(statistics.mean(figures["text"]), 3),
        "precision_at_10_imagine": round(statistics.mean(figures["imagine"]), 3),
        "queries_better / worse / same": [
            sum(i > t for t, i in zip(figures["text"], figures["imagine"], strict=True)),
            sum(i < t for t, i in zip(figures["text"], figures["imagine"], strict=True)),
            sum(i == t for t, i in zip(figures["text"], figures["imagine"], strict=True)),
        ],
        "ms_per_query_text": round(statistics.median(figures["text_ms"]), 1),
        "ms_per_query_imagine": round(statistics.median(figures["imagine_ms"]), 1),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
