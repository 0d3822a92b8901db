"""The index flow against a real Prefect server: task runs, artifacts and the returned counts."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

import pytest
from conftest import CliRunner
from prefect import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    FlowRunFilter,
    FlowRunFilterId,
)

from mmindex.flows.jobs import index  # type: ignore[attr-defined]
from mmindex.store.reader import Store
from mmindex.store.writer import open_writer


async def flow_run_record(flow_run_id: Any) -> tuple[Any, list[Any], list[Any]]:
    """The flow run, its task runs and its artifacts, once the server has recorded every task run's end
    (the server records task-run events asynchronously, a moment after the flow returns)."""
    async with get_client() as client:
        flow_run = await client.read_flow_run(flow_run_id)
        for _ in range(100):
            task_runs = await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if task_runs and all(run.state is not None and run.state.is_final() for run in task_runs):
                break
            await asyncio.sleep(0.2)
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return flow_run, task_runs, artifacts


def test_index_flow_runs_stages_as_tasks_and_publishes_a_summary(
    corpus: Path, tmp_path: Path, tiny_clip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    (corpus / "broken.jpg").write_bytes(b"\xff\xd8\xff not an image")
    db = str(tmp_path / "db")

    monkeypatch.setenv("MMINDEX_CHUNK_SIZE", "16")  # two chunks
    state = index(source=str(corpus), db=db, model=tiny_clip, batch_size=8, return_state=True)

    assert state.is_completed()
    counts = state.result()
    assert (counts["scanned"], counts["indexed"], counts["failed"]) == (25, 24, 1)
    assert Store(db).lancedb_table().count_rows() == 24

    flow_run, task_runs, artifacts = asyncio.run(flow_run_record(state.state_details.flow_run_id))
    names = {run.name.rsplit("-", 1)[0] for run in task_runs}
    assert names == {"embed", "load", "load-embedder", "write"}  # the steps run as tasks
    assert all(run.state.is_completed() for run in task_runs)
    by_type = {artifact.type: artifact for artifact in artifacts}
    assert {"markdown", "table", "progress"} <= set(by_type)
    assert str(corpus) in by_type["markdown"].data  # the summary names what was indexed
    assert "broken.jpg" in str(by_type["table"].data)
    assert float(by_type["progress"].data) == 100.0
    assert flow_run.parameters["source"] == str(corpus)
    assert flow_run.name.startswith("index ") and flow_run.name.endswith("/corpus -> images")  # not random


def test_a_bad_source_fails_the_flow_with_the_config_error(tmp_path: Path) -> None:
    state = index(source=str(tmp_path / "missing"), db=str(tmp_path / "db"), return_state=True)
    assert state.is_failed()
    try:
        state.result()
    except Exception as exc:  # the original exception type reaches the caller
        assert type(exc).__name__ == "SourceError" and "does not exist" in str(exc)
    else:
        raise AssertionError("a failed flow must raise its error")


def test_a_run_refuses_to_wait_past_lock_timeout_while_another_holds_the_table(
    cli: CliRunner, corpus: Path, tmp_path: Path
) -> None:
    from mmindex.store.reader import Store

    db = str(tmp_path / "db")
    with open_writer(Store(db)):  # another writer holds the table
        result = cli("index", str(corpus), "--db", db, "--model", "toy-clip", "--lock-timeout", "2")
    assert result.returncode == 2, result.stderr
    assert f"pid {os.getpid()}" in result.stderr and "gave up after" in result.stderr
    assert cli("index", str(corpus), "--db", db, "--model", "toy-clip").returncode == 0  # free again
