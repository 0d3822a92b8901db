"""The toy models mmindex ships: a CLIP and a BLIP captioner trained on generated coloured shapes
(`scripts/train_toy.py` reproduces them), selectable by name wherever a model id is accepted."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
TOY_MODELS = {
    "toy-clip": WEIGHTS / "clip",
    "toy-captioner": WEIGHTS / "captioner",
}
