"""The Prefect runner with no server configured: a temporary server that starts late costs nothing
but time, and one that never answers leaves the job to run in this process, said in its report."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mmindex.errors import ConfigError
from mmindex.flows.runner import STARTUP_TIMEOUT_S, startup_timeout
from mmindex.store.reader import Store
from mmindex.toy.shapes import write_corpus


def without_server(tmp_path: Path, **extra: str) -> dict[str, str]:
    """The environment of a user who never configured Prefect (a private PREFECT_HOME)."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    return {**env, "PREFECT_HOME": str(tmp_path / "prefect-home"), **extra}


def index_command(corpus: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "mmindex.cli", "index", str(corpus), "--db", str(db), "--model", "toy-clip",
            "--json"]  # fmt: skip


def last_json(output: str) -> dict[str, object]:
    result: dict[str, object] = json.loads(output.strip().splitlines()[-1])
    return result


def _spin(until: float) -> None:
    while time.time() < until:
        pass


@pytest.fixture
def cpu_hog() -> Iterator[None]:
    """Both cores kept busy, for at most four minutes whatever happens to the test."""
    until = time.time() + 240
    hogs = [multiprocessing.get_context("spawn").Process(target=_spin, args=(until,)) for _ in range(2)]
    for hog in hogs:
        hog.start()
    try:
        yield
    finally:
        for hog in hogs:
            hog.kill()
            hog.join()


def test_a_server_that_does_not_start_in_time_leaves_the_job_to_run_here(tmp_path: Path) -> None:
    corpus, db = tmp_path / "corpus", tmp_path / "db"
    write_corpus(corpus, 6, seed=2)
    env = without_server(tmp_path, MMINDEX_PREFECT_STARTUP_TIMEOUT="0.1")  # no server starts that fast
    result = subprocess.run(index_command(corpus, db), env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    report = last_json(result.stdout)
    assert report["indexed"] == Store(str(db)).info().rows == 6
    notes = [note for note in report["notes"] if "ran without Prefect" in note]  # type: ignore[attr-defined]
    assert len(notes) == 1 and "did not start within 0.1 s" in notes[0]
    assert "ran without Prefect" in result.stderr  # said where a person watching sees it too


def test_the_startup_timeout_is_checked_at_the_edge(monkeypatch: pytest.MonkeyPatch) -> None:
    assert startup_timeout() == STARTUP_TIMEOUT_S == 120
    for wrong, message in (("soon", "must be a number"), ("-1", "must not be negative")):
        monkeypatch.setenv("MMINDEX_PREFECT_STARTUP_TIMEOUT", wrong)
        with pytest.raises(ConfigError, match=f"MMINDEX_PREFECT_STARTUP_TIMEOUT {message}"):
            startup_timeout()


def test_four_concurrent_runs_on_a_busy_machine_all_finish_with_one_row_per_image(
    tmp_path: Path, cpu_hog: None
) -> None:
    """Each run starts its own temporary Prefect server while both cores are busy (Prefect's own
    20 s start-up limit failed such runs before any work)."""
    corpus, db = tmp_path / "corpus", tmp_path / "db"
    write_corpus(corpus, 12, seed=4)
    env = without_server(tmp_path)
    runs = [
        subprocess.Popen(
            index_command(corpus, db), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )  # fmt: skip
        for _ in range(4)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    for run, (_, stderr) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, stderr[-2000:]
    reports = [last_json(stdout) for stdout, _ in outputs]
    assert sum(int(report["indexed"]) for report in reports) == 12  # type: ignore[call-overload]
    rows = Store(str(db)).lancedb_table().to_arrow()
    assert rows.num_rows == len(set(rows.column("uri").to_pylist())) == 12
