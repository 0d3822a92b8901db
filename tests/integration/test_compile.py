"""torch.compile of the image tower: compiled only for long runs, kept only when faster, and a
compiler failure never costs a run anything but the speed-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mmindex.ingest.pipeline import IndexOptions, run_index
from mmindex.ingest.sources import open_source
from mmindex.models.clip import ClipEmbedder
from mmindex.models.compiled import CompilePolicy
from mmindex.store.reader import Store


def test_auto_compiles_only_a_long_run_and_drops_a_compiled_pass_that_is_not_faster() -> None:
    embedder = ClipEmbedder.load("toy-clip")
    full, short = embedder._probe_pixels(4), embedder._probe_pixels(3)
    eager = embedder.embed_pixels(full)
    policy = CompilePolicy("auto", batch_size=4)
    policy.after_batch(embedder, 4, 1.0, remaining=100)  # 25 s of eager work left: not worth compiling
    assert policy.state == "eager" and embedder._compiled is None
    policy.after_batch(embedder, 4, 1.0, remaining=10_000)  # 2,500 s left: a real torch.compile
    assert policy.state == "judging" and embedder._compiled is not None
    np.testing.assert_allclose(embedder.embed_pixels(full), eager, atol=1e-4)
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    embedder.embed_pixels(short)  # a short last batch runs eagerly rather than recompiling
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    for _ in range(3):
        policy.after_batch(embedder, 4, 2.0, remaining=10_000)  # the compiled pass measured slower
    assert policy.state == "given up" and embedder._compiled is None
    assert "did not pay off (0.50x" in policy.notes[-1]


def test_a_compiler_failure_leaves_the_run_eager_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, corpus: Path
) -> None:
    def broken_compiler(forward: Any, **options: Any) -> Any:
        def run(*args: Any) -> Any:
            raise RuntimeError("InductorError: no working C++ compiler found")

        return run

    monkeypatch.setattr(torch, "compile", broken_compiler)  # what a machine without a compiler does
    embedder = ClipEmbedder.load("toy-clip")
    store = Store(str(tmp_path / "db"))
    report = run_index(open_source(str(corpus)), embedder, store, IndexOptions(batch_size=2, compile="on"))
    assert report.indexed == store.lancedb_table().count_rows() > 2
    assert any("torch.compile failed" in note and "no working C++ compiler" in note for note in report.notes)


def test_sharded_workers_compile_by_the_same_policy_and_report_a_failure_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, corpus: Path
) -> None:
    import mmindex

    def broken_compiler(forward: Any, **options: Any) -> Any:
        raise RuntimeError("InductorError: no working C++ compiler found")

    monkeypatch.setattr(torch, "compile", broken_compiler)
    db = str(tmp_path / "db")
    report = mmindex.index(
        str(corpus), db=db, model="toy-clip", progress=False, runner="sharded", shard_size=4, compile="on",
        batch_size=2,
    )  # fmt: skip
    assert report.indexed == Store(db).lancedb_table().count_rows() > 4  # more than one shard, all written
    failed = [note for note in report.notes if "torch.compile failed" in note]
    assert len(failed) == 1 and "no working C++ compiler" in failed[0]


def test_a_compiled_pass_that_breaks_mid_run_falls_back_to_eager_and_says_so() -> None:
    embedder = ClipEmbedder.load("toy-clip")
    pixels = embedder._probe_pixels(4)
    eager = embedder.embed_pixels(pixels)

    def broken(tensor: Any) -> Any:
        raise RuntimeError("BackendCompilerFailed: recompile for a new guard failed")

    policy = CompilePolicy("on", batch_size=4, state="judging")
    embedder._compiled = (4, broken)  # as if compiled earlier in the run
    np.testing.assert_array_equal(embedder.embed_pixels(pixels), eager)  # this batch is not lost
    assert embedder._compiled is None and "BackendCompilerFailed" in str(embedder.compile_lost)
    policy.after_batch(embedder, 4, 1.0, remaining=10_000)
    assert policy.state == "given up" and "failed mid-run" in policy.notes[-1]


def test_auto_refuses_a_compiled_pass_that_would_change_the_stored_embeddings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Whether a run compiles depends on timings, so `auto` keeps only a compiled pass whose
    embeddings equal the eager ones within 1e-5 (bf16 ones drift by ~2e-3); `on` keeps it anyway."""

    def drifting_compiler(forward: Any, **options: Any) -> Any:
        def run(pixels: Any) -> Any:
            vectors = forward(pixels).pooler_output
            return vectors * (1 + 1e-2 * torch.randn_like(vectors))  # as a kernel with other rounding

        return run

    monkeypatch.setattr(torch, "compile", drifting_compiler)
    embedder = ClipEmbedder.load("toy-clip")
    pixels = embedder._probe_pixels(4)
    eager = embedder.embed_pixels(pixels)
    policy = CompilePolicy("auto", batch_size=4)
    policy.after_batch(embedder, 4, 1.0, remaining=10_000)
    assert policy.state == "given up" and embedder._compiled is None
    assert "compiled embeddings differ from eager ones by up to" in policy.notes[-1]
    np.testing.assert_array_equal(embedder.embed_pixels(pixels), eager)

    forced = CompilePolicy("on", batch_size=4)
    forced.after_batch(embedder, 4, 1.0, remaining=None)
    assert forced.state == "judging" and embedder._compiled is not None
    assert np.abs(embedder.embed_pixels(pixels) - eager).max() > 1e-5
