"""The scripts that produced the shipped toy weights still run (a few steps, on a few images)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from mmindex.models.captioner import Captioner
from mmindex.models.clip import ClipEmbedder
from mmindex.models.resolve import resolve_model


def training_script() -> ModuleType:
    path = Path(__file__).resolve().parents[2] / "scripts" / "train_toy.py"
    spec = importlib.util.spec_from_file_location("train_toy", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_toy_training_scripts_run_and_save_loadable_models(tmp_path: Path) -> None:
    """A few steps of each script save a model that loads; its evaluation tells the shipped toy
    models (trained for thousands of steps) from these barely trained ones."""
    script = training_script()
    clip = script.train_clip(tmp_path / "clip", steps=3, images=48, batch=16)
    captioner = script.train_captioner(tmp_path / "captioner", steps=3, images=48, batch=16)
    shipped_clip = script.evaluate_clip(Path(resolve_model("toy-clip").location), count=96)
    shipped_captioner = script.evaluate_captioner(Path(resolve_model("toy-captioner").location), count=48)
    assert shipped_clip["precision_at_10"] >= 0.8 > clip["precision_at_10"]
    assert shipped_captioner["exact"] >= 0.6 > captioner["exact"]
    assert ClipEmbedder.load(str(tmp_path / "clip")).dim == 64
    assert Captioner.load(str(tmp_path / "captioner")).family == "blip"
