"""The toy models mmindex ships: a CLIP, a BLIP captioner and a text-to-image model, trained on generated
coloured shapes (`scripts/train_toy.py` reproduces them), selectable by name wherever a model id is
accepted."""

from __future__ import annotations

from pathlib import Path

WEIGHTS = Path(__file__).parent / "weights"
TOY_MODELS = {
    "toy-clip": WEIGHTS / "clip",
    "toy-captioner": WEIGHTS / "captioner",
    "toy-generator": WEIGHTS / "generator",
}
