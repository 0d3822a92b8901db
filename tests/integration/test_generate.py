"""`mmindex generate` with a tiny randomly initialised diffusers pipeline built from configs: images
and sidecars written, each image reproducible from its own seed whatever the batch, provenance rows
in the table, reruns that make nothing twice, and exit 2 for what cannot be generated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import CliRunner
from PIL import Image

import mmindex
from mmindex.finetuning.data import HOLDOUT, TRAIN, PairQuery, Split
from mmindex.store.reader import Store
from mmindex.store.upkeep import table_stats

PROMPTS = ["a red circle", "a blue square"]
SMALL = {"size": "32x32", "steps": 2, "guidance": 0.0}


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> str:
    from mmindex.toy.models import tiny_text_to_image

    return str(tiny_text_to_image(tmp_path_factory.mktemp("tiny-sd")))


def pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"), dtype=np.int16)


def test_generated_images_carry_their_provenance_into_the_table(
    tiny_pipeline: str, corpus: Path, tmp_path: Path
) -> None:
    out, db = tmp_path / "made", str(tmp_path / "db")
    mmindex.index(str(corpus), db=db, model="toy-clip", progress=False)  # real images first
    report = mmindex.generate(
        PROMPTS, out=str(out), n=2, seed=7, model=tiny_pipeline, batch_size=3, db=db, progress=False, **SMALL
    )
    assert (report.generated, report.indexed, report.failed) == (4, 4, 0)
    images = sorted(out.glob("*.png"))
    assert [p.name for p in images] == sorted(
        ["a-red-circle-s7.png", "a-red-circle-s8.png", "a-blue-square-s9.png", "a-blue-square-s10.png"]
    )
    assert all(Image.open(p).size == (32, 32) for p in images)
    sidecar = json.loads((out / "a-blue-square-s9.json").read_text())
    assert sidecar == {
        "caption": "a blue square",
        "generated": {"model": tiny_pipeline, "seed": 9, "steps": 2, "guidance": 0.0},
    }
    rows = Store(db).lancedb_table().to_arrow().to_pylist()
    made = {Path(r["uri"]).name: r for r in rows if r["synthetic"]}
    assert set(made) == {p.name for p in images}
    row = made["a-red-circle-s8.png"]
    assert (row["caption"], row["caption_source"], row["generator"]) == (
        "a red circle",
        "prompt",
        tiny_pipeline,
    )
    assert (row["generation_seed"], row["generation_steps"], row["generation_guidance"]) == (8, 2, 0.0)
    assert sum(1 for r in rows if r["synthetic"] is False) == 24  # the real images say so too
    captions = table_stats(Store(db))["captions"]
    assert captions["prompt"] == 4 and sum(captions.values()) == len(rows) == 28  # every row counted once

    # search selects, excludes or includes them, and says which hits are synthetic
    found = mmindex.connect(db)
    only = found.search("a red circle", k=50, synthetic="only")
    assert len(only) == 4 and all(hit.synthetic for hit in only)
    assert {hit.uri for hit in only} == {str(p) for p in images}
    real = found.search("a red circle", k=50, synthetic="exclude")
    assert len(real) == 24 and not any(hit.synthetic for hit in real)
    assert len(found.search("a red circle", k=50)) == 28 and "synthetic" in only.to_list()[0]

    # fine-tuning may train on them (with generated captions allowed) but never holds them out
    split = Split(holdout=0.9, seed=1)
    query = PairQuery(Store(db), include_generated=True)
    held_out = {pair.item.uri for pair in query.pairs(split, HOLDOUT)}
    trained = {pair.item.uri for pair in query.pairs(split, TRAIN)}
    assert {str(p) for p in images} <= trained and not held_out & {str(p) for p in images}
    assert held_out  # real images are held out as usual

    # each image is made again from its seed alone, in another batch, and a rerun makes nothing
    again = mmindex.generate(
        ["a blue square"], out=str(tmp_path / "alone"), seed=10, model=tiny_pipeline, index=False,
        batch_size=1, progress=False, **SMALL,
    )  # fmt: skip
    assert again.generated == 1
    difference = np.abs(
        pixels(tmp_path / "alone" / "a-blue-square-s10.png") - pixels(out / "a-blue-square-s10.png")
    )
    assert difference.max() <= 2  # the same image (batched convolutions may differ in the last bit)
    rerun = mmindex.generate(
        PROMPTS, out=str(out), n=2, seed=7, model=tiny_pipeline, db=db, progress=False, **SMALL
    )
    assert (rerun.generated, rerun.unchanged, rerun.indexed) == (0, 4, 0)


def test_what_cannot_be_generated_exits_2_with_one_line(
    cli: CliRunner, tmp_path: Path, tiny_pipeline: str
) -> None:
    not_a_pipeline = cli("generate", "a cat", "--out", str(tmp_path / "o"), "--model", "toy-clip")
    assert not_a_pipeline.returncode == 2
    assert "not a diffusers pipeline" in not_a_pipeline.stderr and "Traceback" not in not_a_pipeline.stderr
    bad_size = cli(
        "generate", "a cat", "--out", str(tmp_path / "o"), "--model", tiny_pipeline, "--size", "30x30"
    )
    assert bad_size.returncode == 2 and "multiples of 8" in bad_size.stderr
    nothing = cli("generate", "--out", str(tmp_path / "o"), "--model", tiny_pipeline)
    assert nothing.returncode == 2 and "at least one prompt" in nothing.stderr


def test_the_toy_generator_draws_what_it_is_told_and_imagined_search_uses_it(tmp_path: Path) -> None:
    from mmindex.models.clip import ClipEmbedder
    from mmindex.toy.shapes import COLOURS, SHAPES, Shape, write_corpus

    specs = [Shape(c, s) for c in COLOURS for s in SHAPES]
    out = tmp_path / "drawn"
    report = mmindex.generate(
        [s.caption for s in specs], out=str(out), n=2, model="toy-generator", size="64x64", index=False,
        progress=False,
    )  # fmt: skip
    assert report.generated == 48 and report.models.startswith("toy-generator")
    files = sorted(out.glob("*.png"))
    asked = [json.loads(p.with_suffix(".json").read_text())["caption"] for p in files]
    clip = ClipEmbedder.load("toy-clip")
    labels = clip.embed_texts([s.caption for s in specs])
    guesses = [
        specs[i] for i in np.argmax(clip.embed_images([Image.open(p) for p in files]) @ labels.T, axis=1)
    ]
    colour_right = np.mean([g.colour in a for g, a in zip(guesses, asked, strict=True)])
    both_right = np.mean([g.caption == a for g, a in zip(guesses, asked, strict=True)])
    assert colour_right >= 0.9 and both_right >= 0.6, (colour_right, both_right)

    corpus, db = tmp_path / "corpus", str(tmp_path / "db")
    write_corpus(corpus, 48, seed=2, captioned_fraction=0.0)
    mmindex.index(str(corpus), db=db, model="toy-clip", progress=False)
    found = mmindex.connect(db).search("a red circle", k=5, imagine=2, generator="toy-generator")
    assert found.score_kind == "rrf" and len(found) == 5
    assert sum("red-circle" in hit.key for hit in found) >= 1


def test_a_batch_the_model_fails_on_is_recorded_and_the_run_goes_on(tmp_path: Path) -> None:
    from mmindex.ingest.synthetic import Output, plan_images, run_generate
    from mmindex.models.generator import ImageSettings, load_generator

    class RunsOutOfMemoryOnStars:  # the toy generator, failing the way a GPU would on one batch
        def __init__(self) -> None:
            self.inner = load_generator("toy-generator")
            self.model_id, self.compute = self.inner.model_id, self.inner.compute

        def generate(
            self, prompts: list[str], seeds: list[int], settings: ImageSettings
        ) -> list[Image.Image]:
            if any("star" in prompt for prompt in prompts):
                raise RuntimeError("CUDA out of memory")
            return self.inner.generate(prompts, seeds, settings)

        def defaults(self, settings: ImageSettings) -> ImageSettings:
            return self.inner.defaults(settings)

    planned = plan_images(["a red circle", "a blue star", "a green square"], 2, 0)
    report = run_generate(RunsOutOfMemoryOnStars(), planned, ImageSettings(width=32, height=32),
                          Output(str(tmp_path)), batch_size=2)  # fmt: skip
    assert (report.generated, report.failed) == (4, 2) and report.failures_by_stage["generate"] == 2
    assert sorted(p.stem for p in tmp_path.glob("*.png")) == [
        "a-green-square-s4", "a-green-square-s5", "a-red-circle-s0", "a-red-circle-s1"
    ]  # fmt: skip
