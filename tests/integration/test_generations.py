"""Embedding generations: built beside the active one (resumably, catching up rows indexed meanwhile),
searched by name, switched atomically, rolled back, retired; a running server follows a switch."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import CliRunner
from starlette.testclient import TestClient

import mmindex
from mmindex.errors import ConfigError
from mmindex.flows.compare import compare_generations
from mmindex.ingest.reembed import ReembedOptions, coverage, run_reembed
from mmindex.models.clip import ClipEmbedder
from mmindex.server.app import create_app
from mmindex.store import generations
from mmindex.store.reader import Store
from mmindex.store.writer import open_writer
from mmindex.toy.shapes import write_corpus


@pytest.fixture
def table(shapes_db: Path, tmp_path: Path) -> Path:
    """A copy of the shapes table (toy CLIP, 64-d, 98 rows), free to change."""
    copy = tmp_path / "db"
    shutil.copytree(shapes_db, copy)
    return copy


async def artifacts_of(flow_run_id: Any) -> list[Any]:
    from prefect import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async with get_client() as client:
        return await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )


def as_json(result: object) -> object:
    assert result.returncode == 0, result.stderr  # type: ignore[attr-defined]
    return json.loads(result.stdout)  # type: ignore[attr-defined]


def test_a_generation_is_built_resumed_searched_switched_rolled_back_and_retired(
    table: Path, tiny_clip: str, cli: CliRunner, tmp_path: Path
) -> None:
    db = ["--db", str(table)]
    (active,) = as_json(cli("generations", *db, "--json"))
    assert active["state"] == "active" and active["model"] == "toy-clip" and active["rows_embedded"] == 98
    before = as_json(cli("search", "a red circle", *db, "--no-server", "--json"))
    assert "red-circle" in before[0]["key"]

    built = as_json(cli("reembed", "--model", tiny_clip, "--name", "tiny", "--limit", "30", *db, "--json"))
    assert built["generation"]["state"] == "building" and built["generation"]["rows_embedded"] == 30
    assert built["indexed"] == 30 and built["kind"] == "reembed"
    refused = cli("activate", "tiny", *db)
    assert (
        refused.returncode == 2
        and "covers 30 of 98 rows" in refused.stderr
        and "--allow-partial" in refused.stderr
    )

    # ingestion goes on during the build (the active model embeds the new rows); the build catches up
    write_corpus(tmp_path / "more", 5, seed=77)
    shutil.copytree(tmp_path / "more", table.parent / "added")
    indexed = cli("index", str(table.parent / "added"), *db, env={"MMINDEX_ORCHESTRATOR": "inprocess"})
    assert indexed.returncode == 0, indexed.stderr
    before = as_json(cli("search", "a red circle", *db, "--no-server", "--json"))
    finished = as_json(cli("reembed", "--model", tiny_clip, "--name", "tiny", *db, "--json"))
    assert finished["generation"]["state"] == "ready"
    assert finished["generation"]["rows_embedded"] == finished["generation"]["rows"] == 103
    assert finished["indexed"] == 103 - 30  # no row embedded twice
    assert (
        as_json(cli("search", "a red circle", *db, "--no-server", "--json")) == before
    )  # still the active one

    tiny = as_json(cli("search", "a red circle", *db, "--generation", "tiny", "--json"))
    assert [hit["score"] for hit in tiny] != [hit["score"] for hit in before]
    switched = as_json(cli("activate", "tiny", *db, "--json"))
    assert switched == {
        "active": "tiny",
        "model": switched["model"],
        "previous": "toy_clip",
        "rows_embedded": 103,
        "rows": 103,
    }
    assert (
        as_json(cli("search", "a red circle", *db, "--no-server", "--json")) == tiny
    )  # every reader follows
    listed = {g["name"]: g for g in as_json(cli("generations", *db, "--json"))}
    assert listed["tiny"]["state"] == "active" and listed["toy_clip"]["state"] == "ready"
    assert Store(str(table)).info().dim == ClipEmbedder.load(tiny_clip).dim

    back = as_json(cli("activate", "toy_clip", *db, "--json"))
    assert back["active"] == "toy_clip" and back["previous"] == "tiny"
    assert as_json(cli("search", "a red circle", *db, "--no-server", "--json"))[:5] == before[:5]

    assert cli("retire", "toy_clip", *db).returncode == 2  # the active one stays
    assert as_json(cli("retire", "tiny", *db, "--json"))["state"] == "retired"
    names = Store(str(table)).lancedb_table().schema.names
    assert not any(name.endswith("__tiny") for name in names)
    assert cli("activate", "tiny", *db).returncode == 2


def test_a_generation_from_the_stored_thumbnails_and_a_changed_row_is_emptied_in_the_others(
    table: Path, tiny_clip: str
) -> None:
    store = Store(str(table))
    embedder = ClipEmbedder.load(tiny_clip)
    report, built = run_reembed(store, embedder, ReembedOptions(name="thumbs", from_="thumbnails"))
    assert built.state == "ready" and report.indexed == 98 and coverage(store, built) == (98, 98)
    vectors = store.lancedb_table().search().select([built.image_column]).limit(None).to_arrow()
    norms = np.linalg.norm(np.stack(vectors[built.image_column].to_numpy(zero_copy_only=False)), axis=1)
    assert np.allclose(norms, 1.0, atol=1e-4)

    # an upsert of a changed image leaves no stale vector in the other generations
    table_handle = store.lancedb_table()
    row = table_handle.search().limit(1).to_arrow()
    with open_writer(store) as writer:
        writer.upsert_rows(row.drop_columns([built.image_column, built.text_column]))
    assert coverage(store, built) == (97, 98)
    listed = {g["name"]: g for g in mmindex.connect(str(table)).generations()}
    assert listed["thumbs"]["state"] == "building"  # a row it lacks again, until a run catches up
    again, _ = run_reembed(store, embedder, ReembedOptions(name="thumbs", from_="thumbnails"))
    assert again.indexed == 1 and coverage(store, built) == (98, 98)


def test_a_running_server_follows_a_switch_without_a_restart_and_generations_compare(
    table: Path, tiny_clip: str, cli: CliRunner, tmp_path: Path
) -> None:
    store = Store(str(table))
    run_reembed(store, ClipEmbedder.load(tiny_clip), ReembedOptions(name="tiny"))

    compared = as_json(cli("compare", "toy_clip", "tiny", "--db", str(table), "--json"))
    trained, untrained = (compared["generations"][name] for name in ("toy_clip", "tiny"))
    assert compared["queries"] == compared["labelled_queries"] > 10
    assert trained["caption_to_image"]["r10"] > untrained["caption_to_image"]["r10"]  # the trained toy wins
    assert trained["image_to_caption"]["r1"] > untrained["image_to_caption"]["r1"]
    assert 0.0 <= compared["overlap_at_10"] < 1.0 and compared["disagreements"]
    worst = compared["disagreements"][0]
    assert len(worst["toy_clip"]) == 3 and worst["overlap"] == min(
        d["overlap"] for d in compared["disagreements"]
    )
    (tmp_path / "queries.txt").write_text("a red circle\nsomething no caption says\n")
    mixed = as_json(
        cli(
            "compare",
            "toy_clip",
            "tiny",
            "--db",
            str(table),
            "--queries",
            str(tmp_path / "queries.txt"),
            "--json",
        )
    )
    assert mixed["queries"] == 2 and mixed["labelled_queries"] == 1
    every = mmindex.connect(str(table)).search("a red circle", k=2, columns=["*"]).to_arrow().column_names
    assert not any("embedding" in name for name in every)  # no generation's vectors among the columns
    with pytest.raises(ConfigError, match="no column 'image_embedding__tiny'"):
        mmindex.connect(str(table)).search("a red circle", columns=["image_embedding__tiny"])
    grid = mmindex.connect(str(table)).side_by_side("a red circle", "toy_clip", "tiny")._repr_html_()
    assert "toy_clip" in grid and "tiny" in grid and grid.count("<img") == 20
    state = compare_generations(a="toy_clip", b="tiny", db=str(table), return_state=True)
    assert state.is_completed() and state.result()["overlap_at_10"] == compared["overlap_at_10"]
    (artifact,) = asyncio.run(artifacts_of(state.state_details.flow_run_id))
    assert "| caption to image R@1 |" in artifact.data and "Where they disagree most" in artifact.data
    client = TestClient(create_app(mmindex.connect(str(table)), warm=False), base_url="http://127.0.0.1:8000")

    def scores(**params: str) -> list[float]:
        response = client.get("/api/search", params={"q": "a green star", "k": "5", **params})
        assert response.status_code == 200, response.text
        return [hit["score"] for hit in response.json()["hits"]]

    old, tiny = scores(), scores(generation="tiny")
    assert old != tiny
    with open_writer(store) as writer:
        generations.activate(writer.images, "tiny")
    assert scores() == pytest.approx(tiny, abs=1e-5)  # the next query answers with the new model
    assert scores(generation="toy_clip") == pytest.approx(old, abs=1e-5)
    assert client.get("/api/search", params={"q": "x", "generation": "nosuch"}).status_code == 400


def test_indices_follow_a_switch_and_a_rebuild_keeps_one_index_per_column(
    table: Path, tiny_clip: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from collections import Counter

    from mmindex.store import upkeep

    store = Store(str(table))
    store.vector_index_min_rows = 50  # the 98-row table gets vector indices, the new generation too
    with open_writer(store) as writer:
        upkeep.refresh_indices(writer)
    run_reembed(store, ClipEmbedder.load(tiny_clip), ReembedOptions(name="tiny"))
    indexed = Counter(index.columns[0] for index in store.lancedb_table().list_indices())
    assert indexed["image_embedding"] == indexed["image_embedding__tiny"] == 1  # built with the generation
    with open_writer(store) as writer:
        generations.activate(writer.images, "tiny")
        monkeypatch.setattr(upkeep, "REBUILD_GROWTH", 0.5)  # every vector index is rebuilt
        upkeep.refresh_indices(writer)
    indexed = Counter(index.columns[0] for index in store.lancedb_table().list_indices())
    assert indexed["image_embedding"] == indexed["image_embedding__toy_clip"] == 1, indexed
    hits = mmindex.connect(str(table)).search("a red circle", k=3)
    assert len(hits) == 3 and mmindex.connect(str(table)).generations()[0]["name"] == "tiny"


def test_a_sharded_build_resumes_and_holds_what_the_same_model_made_at_index_time(
    table: Path, cli: CliRunner
) -> None:
    db = ["--db", str(table), "--runner", "sharded", "--shard-size", "16", "--commit-every", "2"]
    part = as_json(cli("reembed", "--model", "toy-clip", "--name", "shd", "--limit", "40", *db, "--json"))
    assert part["generation"]["rows_embedded"] == part["indexed"] == 40
    rest = as_json(cli("reembed", "--model", "toy-clip", "--name", "shd", *db, "--json"))
    assert rest["indexed"] == 98 - 40 and rest["generation"]["state"] == "ready"
    rows = Store(str(table)).lancedb_table().search().limit(None).to_arrow()
    for canonical in ("image_embedding", "text_embedding"):
        valid = rows[canonical].is_valid().to_numpy(zero_copy_only=False)
        ours = np.stack(rows[f"{canonical}__shd"].filter(valid).to_numpy(zero_copy_only=False))
        np.testing.assert_allclose(
            ours, np.stack(rows[canonical].filter(valid).to_numpy(zero_copy_only=False)), atol=1e-5
        )


def test_a_row_whose_source_is_gone_is_a_failure_row_and_its_thumbnail_finishes_the_build(
    tmp_path: Path,
) -> None:
    write_corpus(tmp_path / "corpus", 12, seed=8)
    db = str(tmp_path / "db")
    mmindex.index(str(tmp_path / "corpus"), db=db, model="toy-clip", progress=False)
    gone = sorted((tmp_path / "corpus").rglob("*.jpg"))[0]
    gone.unlink()
    first = mmindex.reembed(db=db, model="toy-clip", name="again", progress=False)
    assert (first.indexed, first.failed) == (11, 1) and first.generation["state"] == "building"
    (failure,) = Store(db).failure_rows("stage = 'reembed'")
    assert failure["key"] == gone.relative_to(tmp_path / "corpus").as_posix()
    retry = mmindex.reembed(db=db, model="toy-clip", name="again", progress=False)  # tried once, then done
    assert (retry.indexed, retry.failed) == (0, 1)
    previews = mmindex.reembed(db=db, model="toy-clip", name="again", from_="thumbnails", progress=False)
    assert previews.indexed == 1 and previews.generation["state"] == "ready"
    assert Store(db).failure_rows("stage = 'reembed'") == []
