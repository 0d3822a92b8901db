"""Fine-tuning on a table's own captions: the toy CLIP learns colours it never saw, keeps the ones it
knew, and the result loads and indexes; the split, resume, failures and bad arguments behave."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CliRunner
from PIL import Image

import mmindex
from mmindex.finetuning.data import HOLDOUT, TRAIN, PairQuery, Split
from mmindex.finetuning.metrics import text_to_image_recall
from mmindex.models.clip import ClipEmbedder
from mmindex.store.reader import Store
from mmindex.toy.shapes import COLOURS, NEW_COLOURS, SHAPES, write_corpus

HOLDOUT_SHARE = 0.25
TRAINING = ["--epochs", "8", "--lr", "5e-4", "--batch-size", "32", "--holdout", str(HOLDOUT_SHARE)]


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A 288-image table of nine colours (three the toy CLIP never saw), two exact copies and one
    broken file, fine-tuned through the command line (as a Prefect flow) with a control set."""
    root = tmp_path_factory.mktemp("finetune")
    corpus = root / "corpus"
    colours = (*COLOURS, *NEW_COLOURS)
    written = write_corpus(corpus, 288, seed=3, captioned_fraction=1.0, size_range=(64, 128), colours=colours)
    copies = corpus / "copies"
    copies.mkdir()
    for path, _, _ in written[:2]:
        shutil.copy(path, copies / path.name)
        shutil.copy(path.with_suffix(".txt"), copies / path.with_suffix(".txt").name)
    control = root / "control"  # fresh images of the colours the toy CLIP knows
    write_corpus(control, 96, seed=11, captioned_fraction=1.0, size_range=(64, 128))
    db = root / "db"
    mmindex.index(str(corpus), db=str(db), model="toy-clip", thumbnails=False, progress=False)
    (corpus / "set-a" / written[4][0].name).write_bytes(b"\xff\xd8\xff no longer an image")
    out = root / "tuned"
    command = [sys.executable, "-m", "mmindex.cli", "finetune", "--db", str(db), "--out", str(out)]
    result = subprocess.run(
        [*command, *TRAINING, "--control", str(control), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr
    return {"db": db, "out": out, "corpus": corpus, "report": json.loads(result.stdout), "written": written}


def held_out_images(db: Path) -> tuple[list[Image.Image], list[str]]:
    pairs = list(PairQuery(Store(str(db))).pairs(Split(HOLDOUT_SHARE), HOLDOUT))
    images, captions = [], []
    for pair in pairs:
        try:
            images.append(Image.open(pair.item.uri.removeprefix("file://")).convert("RGB"))
        except OSError:  # the file broken after indexing
            continue
        captions.append(str(pair.caption))
    return images, captions


def recall_at_5(model: str, images: list[Image.Image], captions: list[str], colours: Any) -> float:
    embedder = ClipEmbedder.load(model)
    queries = [f"a {c} {s}" for c in colours for s in SHAPES if f"a {c} {s}" in captions]
    assert len(queries) >= 6
    vectors = embedder.embed_images(images)
    return text_to_image_recall(vectors, captions, embedder.embed_texts(queries), queries, 5)


def test_fine_tuning_learns_new_colours_and_keeps_the_old_ones(tuned: dict[str, Any]) -> None:
    images, captions = held_out_images(tuned["db"])
    out = str(tuned["out"])
    new_before, new_after = (recall_at_5(m, images, captions, NEW_COLOURS) for m in ("toy-clip", out))
    old_before, old_after = (recall_at_5(m, images, captions, COLOURS) for m in ("toy-clip", out))
    assert new_before <= 0.6, new_before  # the base model knows the shape, guesses the colour
    assert new_after >= 0.8, (new_before, new_after)
    assert old_after >= old_before - 0.1, (old_before, old_after)

    metrics = tuned["report"]["metrics"]
    control_before, control_after = (metrics[m]["control"]["text_to_image_r5"] for m in ("base", "finetuned"))
    assert control_after >= control_before - 0.1
    assert metrics["finetuned"]["holdout"]["mean_recall"] > metrics["base"]["holdout"]["mean_recall"]


def test_the_output_holds_metrics_a_model_card_and_loads_for_indexing(tuned: dict[str, Any]) -> None:
    out, report = tuned["out"], tuned["report"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["metrics"] == report["metrics"] and on_disk["rows"] == report["rows"]
    assert report["rows"][TRAIN] + report["rows"][HOLDOUT] == 290
    assert 1 <= report["best_epoch"] <= 8 and len(report["history"]) == 8
    card = (out / "README.md").read_text()
    assert "base_model: toy-clip" in card and "text→image R@5" in card and "learning_rate: 0.0005" in card
    assert report["table_version"] >= 1 and f"(version {report['table_version']})" in card
    assert report["failed"] == 1 and report["failures_by_stage"] == {"decode": 1}  # per epoch, once
    assert not (out / ".checkpoint").exists()

    db, corpus = str(tuned["db"]), tuned["corpus"]
    before = Store(db).lancedb_table().count_rows()
    built = mmindex.index(str(corpus), db=db, model=str(out), new_table="tuned", progress=False)
    assert built.indexed == before - 1  # every image but the one broken since
    assert Store(db).recorded_model() == "toy-clip" and Store(db).lancedb_table().count_rows() == before
    assert Store(db, "tuned").recorded_model() == str(out.resolve())
    hits = mmindex.connect(db, table="tuned").search("a cyan square", k=3)
    assert all("cyan" in str(hit.caption) for hit in hits), [hit.caption for hit in hits]


def test_the_split_keeps_exact_copies_on_one_side(tuned: dict[str, Any]) -> None:
    rows = Store(str(tuned["db"])).lancedb_table().search().select(["id", "sha256"]).limit(None).to_list()
    split = Split(HOLDOUT_SHARE)
    sides = defaultdict(set)
    for row in rows:
        sides[row["sha256"]].add(split.side(row["sha256"]))
    assert sum(1 for row in rows) - len(sides) == 2  # the two copies share their originals' hashes
    assert all(len(found) == 1 for found in sides.values())
    assert {side for found in sides.values() for side in found} == {TRAIN, HOLDOUT}


def test_the_flow_publishes_the_before_and_after_table(tuned: dict[str, Any]) -> None:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    async def artifacts() -> list[Any]:
        async with get_client() as client:
            runs = await client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["mmindex-finetune"]))
            )
            return await client.read_artifacts() if runs else []

    found = {a.key: a for a in asyncio.run(artifacts()) if a.key and a.key.startswith("finetune-images")}
    assert found["finetune-images"].type == "markdown" and "R@5" in str(found["finetune-images"].data)
    assert found["finetune-images-holdout"].type == "table"


def test_a_killed_fine_tune_resumes_from_its_last_epoch(tuned: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "resumed"
    command = [
        *(sys.executable, "-m", "mmindex.cli", "finetune", "--db", str(tuned["db"]), "--out", str(out)),
        *("--epochs", "6", "--batch-size", "64", "--lr", "5e-4", "--train-part", "last:1", "--json"),
    ]
    env = {**os.environ, "MMINDEX_ORCHESTRATOR": "inprocess"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / ".checkpoint" / "state.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert (out / ".checkpoint" / "state.pt").exists()

    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["resumed_from_epoch"] >= 1
    assert [record["epoch"] for record in report["history"]] == [1, 2, 3, 4, 5, 6]
    assert report["pairs_trained"] < 6 * report["rows"][TRAIN]  # the finished epochs were not redone
    assert (out / "metrics.json").exists() and not (out / ".checkpoint").exists()


def test_bad_arguments_exit_2_with_one_line(tuned: dict[str, Any], cli: CliRunner, tmp_path: Path) -> None:
    not_clip = tmp_path / "vit"
    from transformers import ViTConfig

    ViTConfig(
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64
    ).save_pretrained(not_clip)
    db, new_out = str(tuned["db"]), str(tmp_path / "new")
    cases = {
        "no human-captioned rows": ["--where", "key = 'nothing'"],
        "leaves 0 held-out pairs": ["--holdout", "0.0001"],
        "not a CLIP-style": ["--base", str(not_clip)],
        "--train-part must be": ["--train-part", "last:0"],
        "has only 3 layers": ["--train-part", "last:7"],
        "already holds a fine-tuned model": ["--out", str(tuned["out"])],
        "--wise-alpha must be a number from 0 to 1 or 'auto'": ["--wise-alpha", "1.5"],
    }
    for message, extra in cases.items():
        result = cli(
            "finetune", "--db", db, "--out", new_out, *extra, env={"MMINDEX_ORCHESTRATOR": "inprocess"}
        )
        assert result.returncode == 2, (message, result.stderr)
        assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not Path(new_out).exists()


def test_wise_alpha_auto_keeps_what_the_base_answered_and_reports_the_frontier(
    tuned: dict[str, Any], tmp_path: Path
) -> None:
    report = mmindex.finetune(
        db=str(tuned["db"]), out=str(tmp_path / "auto"), epochs=3, lr=5e-4, batch_size=32,
        holdout=HOLDOUT_SHARE, wise_alpha="auto", progress=False,
    )  # fmt: skip
    frontier = report.wise_frontier
    assert [row["alpha"] for row in frontier] == [step / 10 for step in range(11)]
    assert frontier[0]["known"] == 1.0  # the base answers the queries it answers
    chosen = report.hyperparameters["wise_alpha_chosen"]
    kept = [row["alpha"] for row in frontier if row["known"] >= 0.98]
    assert chosen == max(kept) and report.saved == "wise" and "wise" in report.metrics
    picked = next(row for row in frontier if row["alpha"] == chosen)
    assert picked["new"] >= frontier[0]["new"]  # what it gained on the queries the base missed
    assert "WiSE-FT frontier" in report.to_markdown() and "auto chose" in " ".join(report.notes)


def test_multi_positive_loss_does_not_punish_identical_captions() -> None:
    import torch

    from mmindex.finetuning.objective import contrastive_loss

    def gain_from_moving_twins_apart(captions: list[str]) -> float:
        """How much the loss falls when two near-identical pairs move further apart."""

        def loss(angle: float) -> float:
            vectors = torch.tensor([[1.0, 0.0, 0.0], [np.cos(angle), np.sin(angle), 0.0], [0.0, 0.0, 1.0]])
            return float(contrastive_loss(vectors, vectors, torch.tensor(np.log(100.0)), captions))

        return loss(0.1) - loss(0.3)

    assert gain_from_moving_twins_apart(["a red circle", "a red circle", "a blue star"]) <= 0  # both right
    assert gain_from_moving_twins_apart(["a red circle", "a red disc", "a blue star"]) > 0.1  # told apart


def test_lora_weights_merge_into_a_plain_model(tiny_clip: str) -> None:
    import torch
    from transformers import AutoTokenizer, CLIPModel

    from mmindex.finetuning.objective import TrainPart, plain_state, select_trainable

    model = CLIPModel.from_pretrained(tiny_clip)
    trainable = select_trainable(model, TrainPart("lora", lora_rank=4))
    assert trainable and all("lora_" in name for name in trainable)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("lora_b"):
                parameter.normal_()
    tokens = AutoTokenizer.from_pretrained(tiny_clip)(["a red circle"], return_tensors="pt")
    plain = CLIPModel.from_pretrained(tiny_clip)
    before = plain.get_text_features(**tokens).pooler_output
    plain.load_state_dict(plain_state(model))
    with torch.no_grad():
        assert torch.allclose(
            plain.get_text_features(**tokens).pooler_output,
            model.get_text_features(**tokens).pooler_output,
            atol=1e-5,
        )
        assert not torch.allclose(before, plain.get_text_features(**tokens).pooler_output, atol=1e-3)


def test_last_n_trains_only_the_top_blocks_and_the_heads(tiny_clip: str) -> None:
    from transformers import CLIPModel

    from mmindex.finetuning.objective import TrainPart, select_trainable

    model = CLIPModel.from_pretrained(tiny_clip)
    trainable = select_trainable(model, TrainPart.parse("last:1"))
    assert any(name.startswith("vision_model.encoder.layers.1.") for name in trainable)
    assert any(name.startswith("text_model.encoder.layers.1.") for name in trainable)
    assert not any(".layers.0." in name or "embeddings" in name for name in trainable)
    assert {"logit_scale", "visual_projection.weight", "text_projection.weight"} <= set(trainable)
