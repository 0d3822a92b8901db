"""The scripts that produced the shipped toy weights still run (a few steps, on a few images)."""

from __future__ import annotations

from pathlib import Path

from mmindex.caption import Captioner
from mmindex.embed import ClipEmbedder
from mmindex.toy.train import train_captioner, train_clip


def test_toy_training_scripts_run_and_save_loadable_models(tmp_path: Path) -> None:
    clip = train_clip(tmp_path / "clip", steps=3, images=48, batch=16)
    captioner = train_captioner(tmp_path / "captioner", steps=3, images=48, batch=16)
    assert 0.0 <= clip["precision_at_10"] <= 1.0 and 0.0 <= captioner["exact"] <= 1.0
    assert ClipEmbedder.load(str(tmp_path / "clip")).dim == 64
    assert Captioner.load(str(tmp_path / "captioner")).family == "blip"
