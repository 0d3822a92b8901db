"""Embedding generations: what `reembed --from thumbnails` costs in retrieval quality against
`--from source`, and how fast a generation is built.

    python bench/generations.py [--images 480]

Writes a shapes corpus (the toy CLIP's world), indexes it with the toy CLIP, then builds two more
generations of the same model, one from the sources and one from the stored thumbnails (~256 px
WebP previews), and compares each with `mmindex compare`'s measures on the table's human captions.
The generation from the sources must equal the active one (a check of the path); the one from
thumbnails shows what previews lose. Prints rows/s of each build and the comparison.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import mmindex
from mmindex.ingest.reembed import ReembedOptions, run_reembed
from mmindex.models.clip import ClipEmbedder
from mmindex.store.reader import Store
from mmindex.toy.shapes import write_corpus


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=480)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus, db = Path(tmp) / "corpus", str(Path(tmp) / "db")
        write_corpus(corpus, args.images, seed=5, captioned_fraction=0.6)
        mmindex.index(str(corpus), db=db, model="toy-clip", device="cpu")
        store, embedder = Store(db), ClipEmbedder.load("toy-clip", device="cpu")
        rates = {}
        for name, origin in (("from_source", "source"), ("from_thumbnails", "thumbnails")):
            started = time.perf_counter()
            report, _ = run_reembed(store, embedder, ReembedOptions(name=name, from_=origin))
            rates[name] = report.indexed / (time.perf_counter() - started)
        index = mmindex.connect(db)
        active = index.generations()[0]["name"]
        results = {}
        for name in ("from_source", "from_thumbnails"):
            comparison = index.compare(active, name, queries=200)
            results[name] = comparison.to_dict()
            print(
                f"--- {active} (from the sources at index time) vs {name}: {rates[name]:.0f} rows/s to build"
            )
            print("\n".join(comparison.lines()[:9]))
        print(json.dumps({"images": args.images, "rows_per_s": rates, "comparisons": results}))


if __name__ == "__main__":
    main()
