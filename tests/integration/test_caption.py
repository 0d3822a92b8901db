"""Caption generation: every model family, provenance, resumable backfill, recaption, bad input."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CliRunner

from mmindex.errors import ModelError
from mmindex.ingest.backfill import CaptionOptions, run_caption
from mmindex.ingest.pipeline import IndexOptions, run_index
from mmindex.ingest.sources import open_source
from mmindex.models.captioner import Captioner, GenerationSettings
from mmindex.models.clip import ClipEmbedder
from mmindex.models.execution import BF16_AUTOCAST, BF16_WEIGHTS, FP32
from mmindex.query.search import Searcher
from mmindex.store.reader import Store
from mmindex.store.writer import open_writer
from mmindex.toy.models import tiny_blip, tiny_git, tiny_vision_encoder_decoder
from mmindex.toy.shapes import samples, write_corpus

BUILDERS = {"blip": tiny_blip, "git": tiny_git, "vision-encoder-decoder": tiny_vision_encoder_decoder}


@pytest.fixture(scope="session")
def tiny_captioners(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("captioners")
    return {family: str(build(root / family)) for family, build in BUILDERS.items()}


@pytest.fixture(scope="module")
def toy_captioner() -> Captioner:
    return Captioner.load("toy-captioner")


def rows(db: Path) -> dict[str, dict[str, object]]:
    return {row["key"]: row for row in Store(str(db)).lancedb_table().to_arrow().to_pylist()}


@pytest.mark.parametrize("family", list(BUILDERS))
def test_every_family_loads_and_generates_in_batches_with_and_without_a_prompt(
    tiny_captioners: dict[str, str], family: str
) -> None:
    images = [image for _, image in samples(5, seed=2)]
    plain = Captioner.load(tiny_captioners[family], settings=GenerationSettings(max_new_tokens=6))
    prompted = Captioner.load(
        tiny_captioners[family],
        settings=GenerationSettings(max_new_tokens=6, num_beams=2, prompt="a photo of"),
    )
    assert plain.family == family
    for captioner in (plain, prompted):
        captions = captioner.caption_images(images)
        assert len(captions) == 5 and all(c is None or isinstance(c, str) for c in captions)
    batched = plain.caption_images(images)
    assert batched == [plain.caption_images([image])[0] for image in images]  # batching changes nothing


def test_toy_captioner_names_shape_and_colour_for_most_images(toy_captioner: Captioner) -> None:
    specs, images = zip(*samples(96, seed=404), strict=True)
    captions = toy_captioner.caption_images(list(images))
    right = sum(caption == spec.caption for caption, spec in zip(captions, specs, strict=True))
    assert right >= 0.8 * len(specs)


def test_bf16_captions_match_fp32_for_nearly_every_image() -> None:
    """`auto` runs under bf16 on CPUs with fast native bf16: that must not change what is said."""
    fp32 = Captioner.load("toy-captioner", precision="fp32")
    bf16 = Captioner.load("toy-captioner", precision="bf16")
    assert fp32.mode is FP32 and bf16.mode in (BF16_WEIGHTS, BF16_AUTOCAST)
    assert "in bf16" in bf16.compute
    images = [image for _, image in samples(48, seed=405)]
    pairs = zip(fp32.caption_images(images), bf16.caption_images(images), strict=True)
    assert sum(a == b for a, b in pairs) >= 0.9 * len(images)


def test_a_prompt_steers_the_caption_and_is_stripped_from_it(toy_captioner: Captioner) -> None:
    """The toy captioner always starts with "a": prompting it with "a" must give, greedily, exactly the
    rest of its unprompted caption, and the prompt itself must not appear in the stored text."""
    prompted = Captioner.load("toy-captioner", settings=GenerationSettings(prompt="a"))
    images = [image for _, image in samples(24, seed=77)]
    plain = toy_captioner.caption_images(images)
    steered = prompted.caption_images(images)
    assert all(caption and caption.startswith("a ") for caption in plain)
    assert steered == [caption[2:] for caption in plain if caption]


def test_index_caption_missing_writes_provenance_and_never_touches_human_captions(
    corpus: Path, tmp_path: Path, tiny_clip: str, tiny_captioners: dict[str, str]
) -> None:
    db = tmp_path / "db"
    embedder = ClipEmbedder.load(tiny_clip)
    captioner = Captioner.load(tiny_captioners["blip"], settings=GenerationSettings(max_new_tokens=4))
    human = {p.with_suffix("").name: p.read_text().strip() for p in corpus.rglob("*.txt")}

    report = run_index(
        open_source(str(corpus)), embedder, Store(str(db)), IndexOptions(batch_size=8), captioner=captioner
    )

    table = rows(db)
    assert report.captioned > 0 and report.captioned + report.caption_failed == 24 - len(human)
    for key, row in table.items():
        stem = Path(key).stem
        if stem in human:
            assert (row["caption"], row["caption_source"], row["caption_model"]) == (
                human[stem],
                "human",
                None,
            )
        elif row["caption"] is not None:
            assert row["caption_source"] == "generated" and row["caption_model"] == tiny_captioners["blip"]
            assert row["captioned_at"] is not None and row["text_embedding"] is not None


def test_backfill_is_resumable_and_recaption_only_replaces_generated_captions(
    corpus: Path, tmp_path: Path, tiny_clip: str, tiny_captioners: dict[str, str]
) -> None:
    db = tmp_path / "db"
    embedder = ClipEmbedder.load(tiny_clip)
    store = Store(str(db))
    run_index(open_source(str(corpus)), embedder, store, IndexOptions(batch_size=8))
    missing = sum(1 for row in rows(db).values() if row["caption"] is None)
    blip = Captioner.load(tiny_captioners["blip"], settings=GenerationSettings(max_new_tokens=4))

    first = run_caption(Store(str(db)), blip, embedder, CaptionOptions(batch_size=2, limit=3))
    after_first = rows(db)
    done_first = {k: r["captioned_at"] for k, r in after_first.items() if r["caption_source"] == "generated"}
    second = run_caption(Store(str(db)), blip, embedder, CaptionOptions(batch_size=2))
    after_second = rows(db)

    assert first.scanned == 3 and second.scanned == missing - 3  # the second run skipped finished rows
    assert all(after_second[k]["captioned_at"] == when for k, when in done_first.items())
    assert run_caption(Store(str(db)), blip, embedder, CaptionOptions()).scanned == 0

    git = Captioner.load(tiny_captioners["git"], settings=GenerationSettings(max_new_tokens=4))
    recaptioned = run_caption(Store(str(db)), git, embedder, CaptionOptions(recaption=True))
    final = rows(db)
    generated = [r for r in final.values() if r["caption_source"] == "generated"]
    assert recaptioned.scanned == len(generated) == missing
    assert all(r["caption_model"] == tiny_captioners["git"] for r in generated)
    assert all(
        final[k]["caption"] == after_second[k]["caption"]
        for k, r in final.items()
        if r["caption_source"] == "human"
    )


class ChokesOnBlue:
    """A real captioner that raises for bluish images, to prove one bad image costs only its caption.
    (No real model fails on demand, so the failure is injected around a real one.)"""

    def __init__(self, inner: Captioner) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.compute = inner.compute
        self.preprocess = inner.preprocess

    def caption_pixels(self, pixels: np.ndarray) -> list[str | None]:
        if any(image[2].mean() > image[0].mean() + 0.5 for image in pixels):
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return self.inner.caption_pixels(pixels)


def test_an_image_the_captioner_chokes_on_becomes_a_failure_row(
    tmp_path: Path, toy_captioner: Captioner
) -> None:
    write_corpus(tmp_path / "corpus", 24, seed=8, captioned_fraction=0.0)
    db = tmp_path / "db"
    embedder = ClipEmbedder.load("toy-clip")
    report = run_index(
        open_source(str(tmp_path / "corpus")), embedder, Store(str(db)), IndexOptions(batch_size=8),
        captioner=ChokesOnBlue(toy_captioner),
    )  # fmt: skip
    failures = Store(str(db)).failure_rows()
    assert report.indexed == 24 and report.failed == 0
    assert report.caption_failed == len(failures) >= 1 and report.captioned == 24 - len(failures)
    assert {f["stage"] for f in failures} == {"caption"} and all("blue" in f["key"] for f in failures)
    assert "illegal memory access" in failures[0]["error"]


def test_generated_captions_are_searchable_by_full_text_and_hybrid(
    tmp_path: Path, toy_captioner: Captioner
) -> None:
    write_corpus(tmp_path / "corpus", 48, seed=9, captioned_fraction=0.0)
    db = tmp_path / "db"
    embedder = ClipEmbedder.load("toy-clip")
    run_index(open_source(str(tmp_path / "corpus")), embedder, Store(str(db)), captioner=toy_captioner)
    searcher = Searcher(Store(str(db)), embedder)

    text_hits = searcher.fulltext("yellow star", k=3)
    assert text_hits and all(h.caption_source == "generated" for h in text_hits)
    assert "yellow star" in (text_hits[0].caption or "") and "yellow-star" in text_hits[0].key
    hybrid = searcher.hybrid("a green circle", k=3)
    assert "green-circle" in hybrid[0].key
    assert hybrid[0].score >= hybrid[-1].score


def test_caption_command_contract_and_refusals(
    cli: CliRunner, corpus: Path, tmp_path: Path, tiny_clip: str
) -> None:
    db = str(tmp_path / "db")
    assert cli("index", str(corpus), "--db", db, "--model", "toy-clip").returncode == 0
    result = cli("caption", "--db", db, "--caption-model", "toy-captioner", "--limit", "2", "--json")
    assert result.returncode == 0, result.stderr
    import json

    counts = json.loads(result.stdout.strip().splitlines()[-1])
    assert isinstance(counts["captioned"], int) and isinstance(counts["failed"], int)
    assert counts["captioned"] + counts["failed"] == 2

    not_captioner = cli("caption", "--db", db, "--caption-model", tiny_clip)
    assert not_captioner.returncode == 2 and "not an image-captioning model" in not_captioner.stderr
    unknown = cli("caption", "--db", db, "--caption-model", "nobody/no-such-captioner")
    assert unknown.returncode == 2 and len(unknown.stderr.strip().splitlines()) == 1
    if not __import__("torch").cuda.is_available():
        no_gpu = cli("caption", "--db", db, "--caption-model", "toy-captioner", "--device", "cuda")
        assert no_gpu.returncode == 2 and "no CUDA device" in no_gpu.stderr
    stats = json.loads(cli("stats", "--db", db, "--json").stdout)
    assert stats["captions"]["generated"] == 2


def test_a_killed_backfill_resumes_without_redoing_finished_chunks(tmp_path: Path) -> None:
    write_corpus(tmp_path / "corpus", 120, seed=12, captioned_fraction=0.0, size_range=(48, 64))
    db = tmp_path / "db"
    run_index(open_source(str(tmp_path / "corpus")), ClipEmbedder.load("toy-clip"), Store(str(db)))
    command = [
        sys.executable,
        "-m",
        "mmindex.cli",
        "caption",
        "--db",
        str(db),
        "--caption-model",
        "toy-captioner",
        "--batch-size",
        "4",
        "--no-progress",
        "--json",
    ]
    env = {**os.environ, "MMINDEX_WRITE_ROWS": "4", "MMINDEX_WRITE_SECONDS": "0", "MMINDEX_CHUNK_SIZE": "4"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        try:
            if Store(str(db)).lancedb_table().count_rows("caption IS NOT NULL") >= 20:
                break
        except Exception:  # a commit may be in flight; poll again
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = {k: r["captioned_at"] for k, r in rows(db).items() if r["caption"] is not None}
    assert 0 < len(before) < 120
    # images the killed run already failed for good (an empty caption) are not retried by the rerun
    given_up = [f for f in Store(str(db)).failure_rows() if not f["retryable"]]

    resumed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    import json

    counts = json.loads(resumed.stdout.strip().splitlines()[-1])
    after = rows(db)
    assert counts["captioned"] + counts["failed"] == 120 - len(before) - len(given_up)
    assert all(after[k]["captioned_at"] == when for k, when in before.items())
    assert sum(r["caption"] is not None for r in after.values()) + counts["failed"] + len(given_up) == 120


def test_model_errors_before_any_work(tiny_clip: str, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not an image-captioning model"):
        Captioner.load(tiny_clip)
    with pytest.raises(ModelError, match="does not exist"):
        Captioner.load(str(tmp_path / "nothing-here"))
    with pytest.raises(ModelError, match="at least 1"):
        Captioner.load("toy-captioner", settings=GenerationSettings(max_new_tokens=0))


def test_backfill_failures_do_not_pile_up_and_limit_counts_only_rows_taken(
    corpus: Path, tmp_path: Path, tiny_clip: str, tiny_captioners: dict[str, str]
) -> None:
    db = tmp_path / "db"
    embedder = ClipEmbedder.load(tiny_clip)
    run_index(open_source(str(corpus)), embedder, Store(str(db)), IndexOptions(batch_size=8))
    missing = sorted(key for key, row in rows(db).items() if row["caption"] is None)
    gone = corpus / missing[0]
    gone.unlink()  # its row stays (no prune): the backfill cannot read it
    blip = Captioner.load(tiny_captioners["blip"], settings=GenerationSettings(max_new_tokens=3))

    for _ in range(3):
        run_caption(Store(str(db)), blip, embedder, CaptionOptions(batch_size=2, limit=1))
    failures = [f for f in Store(str(db)).failure_rows() if f["stage"] == "caption"]
    assert [f["key"] for f in failures] == [missing[0]] and failures[0]["retryable"] is True
    # the unreadable row was retried each time, yet `limit=1` still captioned one row per run
    assert sum(1 for row in rows(db).values() if row["caption_source"] == "generated") >= 2


def test_the_writer_never_overwrites_a_human_caption(corpus: Path, tmp_path: Path, tiny_clip: str) -> None:
    import pyarrow as pa

    db = tmp_path / "db"
    embedder = ClipEmbedder.load(tiny_clip)
    run_index(open_source(str(corpus)), embedder, Store(str(db)), IndexOptions(batch_size=8))
    human = next(row for row in rows(db).values() if row["caption_source"] == "human")
    update = pa.table(
        {"id": [human["id"]], "caption": ["generated over it"], "caption_source": ["generated"]}
    )
    with open_writer(Store(str(db))) as writer:
        writer.update_captions(update)  # as a backfill with a malicious --where would
    assert rows(db)[human["key"]]["caption"] == human["caption"]


class OutOfMemory:
    """A captioner whose every call fails as a GPU that ran out of memory would: a passing fault."""

    def __init__(self, inner: Captioner) -> None:
        self.inner, self.model_id, self.compute = inner, inner.model_id, inner.compute
        self.preprocess = inner.preprocess

    def caption_pixels(self, pixels: np.ndarray) -> list[str | None]:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_a_transient_caption_error_is_retryable_and_a_backfill_retries_it(
    tmp_path: Path, toy_captioner: Captioner
) -> None:
    write_corpus(tmp_path / "corpus", 12, seed=9, captioned_fraction=0.0)
    db, embedder = tmp_path / "db", ClipEmbedder.load("toy-clip")
    first = run_index(
        open_source(str(tmp_path / "corpus")), embedder, Store(str(db)), IndexOptions(batch_size=4),
        captioner=OutOfMemory(toy_captioner),
    )  # fmt: skip
    failures = Store(str(db)).failure_rows()
    assert first.indexed == 12 and first.caption_failed == 12 == len(failures)
    assert all(f["stage"] == "caption" and f["retryable"] for f in failures)
    assert "OutOfMemoryError" in failures[0]["error"]

    backfill = run_caption(Store(str(db)), toy_captioner, embedder, CaptionOptions(batch_size=4))
    assert (backfill.captioned, backfill.failed) == (12, 0)
    assert Store(str(db)).failure_rows() == []


def test_index_with_caption_missing_does_not_caption_its_own_failures_twice(
    tmp_path: Path, toy_captioner: Captioner
) -> None:
    """The leftover pass of `index --caption-missing` captions the source's older rows only: the
    images this run just failed to caption wait for the next run (not the same run's second pass)."""
    from mmindex.jobs.spec import IndexJob
    from mmindex.report import RunReport
    from mmindex.run import RunHooks, run_job

    write_corpus(tmp_path / "corpus", 12, seed=10, captioned_fraction=0.0)
    job = IndexJob(source=str(tmp_path / "corpus"), db=str(tmp_path / "db"), model="toy-clip",
                   caption_missing=True, caption_model="toy-captioner", batch_size=4)  # fmt: skip
    calls = []

    def broken_captioner(models: object) -> OutOfMemory:
        calls.append(models)
        return OutOfMemory(toy_captioner)

    report = run_job(job, hooks=RunHooks(load_captioner=broken_captioner))
    assert isinstance(report, RunReport)
    assert (report.indexed, report.captioned, report.caption_failed) == (12, 0, 12)
    assert len(Store(str(tmp_path / "db")).failure_rows()) == 12 and len(calls) == 1
