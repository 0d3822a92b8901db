"""What `mmindex finetune --wise-alpha auto` chooses, and the gain/loss frontier it reports.

    python bench/wise_auto.py [--epochs 8] [--lr 5e-4]   # about a minute on 2 cores

The corpus of the fine-tuning tests: 288 captioned shapes in nine colours, three of which the toy
CLIP never saw, indexed with the toy CLIP, a quarter held out. Prints the fine-tune's summary: the
held-out figures of the base, the tuned and the chosen interpolation, and the frontier per alpha.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import mmindex
from mmindex.toy.shapes import COLOURS, NEW_COLOURS, write_corpus


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        colours = (*COLOURS, *NEW_COLOURS)
        write_corpus(
            root / "corpus", 288, seed=3, captioned_fraction=1.0, size_range=(64, 128), colours=colours
        )
        db = str(root / "db")
        mmindex.index(str(root / "corpus"), db=db, model="toy-clip", thumbnails=False, progress=False)
        report = mmindex.finetune(
            db=db, out=str(root / "tuned"), epochs=args.epochs, lr=args.lr, batch_size=32, holdout=0.25,
            wise_alpha="auto", progress=False,
        )  # fmt: skip
        print("\n".join(report.summary_lines()))


if __name__ == "__main__":
    main()
