"""How to choose `--min-score`: on a generated corpus of coloured shapes indexed with the toy CLIP,
for each query "a {colour} {shape}", which cutoffs keep the images of that colour and shape (right) and
drop the others. Prints, per cutoff, the share of right images kept and the share of kept images that
are right (over all 24 queries). Takes about a minute on 2 cores.

    python bench/score_cutoff.py [--images 480]

The same recipe works on a real corpus: run a few queries whose right answers you know, look at the
scores of the right and the wrong hits, and put the cutoff where the two meet.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

import mmindex
from mmindex.toy.shapes import COLOURS, SHAPES, write_corpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=480)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        root = Path(work)
        write_corpus(root / "shapes", args.images, seed=11)
        mmindex.index(str(root / "shapes"), db=str(root / "db"), model="toy-clip", progress=False)
        index = mmindex.connect(str(root / "db"))
        right_scores: list[float] = []
        wrong_scores: list[float] = []
        for colour in COLOURS:
            for shape in SHAPES:
                for hit in index.search(f"a {colour} {shape}", k=len(index)):
                    kind = "-".join(Path(hit.key).stem.split("-")[1:])
                    (right_scores if kind == f"{colour}-{shape}" else wrong_scores).append(hit.score)
    right, wrong = np.array(right_scores), np.array(wrong_scores)
    print(f"right hits: median {np.median(right):.3f}, 5th percentile {np.percentile(right, 5):.3f}")
    print(f"wrong hits: median {np.median(wrong):.3f}, 99th percentile {np.percentile(wrong, 99):.3f}")
    print("| min_score | right images kept | kept images that are right |")
    print("|---|---|---|")
    for cutoff in np.round(np.arange(0.0, 0.56, 0.05), 2):
        kept_right, kept_wrong = int((right >= cutoff).sum()), int((wrong >= cutoff).sum())
        precision = kept_right / max(kept_right + kept_wrong, 1)
        print(f"| {cutoff:.2f} | {kept_right / len(right):.0%} | {precision:.0%} |")


if __name__ == "__main__":
    main()
