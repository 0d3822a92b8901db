"""The store split by role: reads always current, writes only under the lock, schema versions read."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from conftest import CliRunner
from PIL import Image

import mmindex
from mmindex.errors import TableError
from mmindex.ingest.pipeline import IndexOptions, run_index
from mmindex.ingest.sources import open_source
from mmindex.models.clip import ClipEmbedder
from mmindex.schema import META_SCHEMA_VERSION, PROVENANCE_FIELDS
from mmindex.store import migrate
from mmindex.store.generations import generations
from mmindex.store.lock import TableBusy
from mmindex.store.reader import Store
from mmindex.store.upkeep import table_stats
from mmindex.store.writer import open_writer


@pytest.fixture
def indexed(corpus: Path, tmp_path: Path, tiny_clip: str) -> Path:
    db = tmp_path / "db"
    embedder = ClipEmbedder.load(tiny_clip)
    run_index(open_source(str(corpus)), embedder, Store(str(db)), IndexOptions(batch_size=8))
    return db


def test_a_read_handle_sees_what_a_writer_commits_later(indexed: Path) -> None:
    reader = Store(str(indexed))
    assert reader.lancedb_table().count_rows() == 24
    with open_writer(Store(str(indexed))) as writer:
        writer.delete_rows([reader.lancedb_table().search().limit(1).to_arrow()["id"][0].as_py()])
    assert reader.lancedb_table().count_rows() == 23 and reader.info().rows == 23


def test_the_writer_is_exclusive(indexed: Path) -> None:
    with open_writer(Store(str(indexed))), pytest.raises(TableBusy):
        with open_writer(Store(str(indexed)), timeout=0):
            pass


def test_a_table_written_by_a_newer_mmindex_is_refused(indexed: Path, cli: CliRunner) -> None:
    Store(str(indexed)).lancedb_table().update_field_metadata(
        {"path": "id", "metadata": {META_SCHEMA_VERSION.decode(): "99"}}
    )
    with pytest.raises(TableError, match="schema version 99, written by a newer mmindex"):
        Store(str(indexed)).info()
    result = cli("stats", "--db", str(indexed))
    assert result.returncode == 2 and "upgrade mmindex" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_an_older_table_is_migrated_by_its_writer_and_its_rows_keep_working(
    indexed: Path, corpus: Path, tiny_clip: str
) -> None:
    """A version 1 table (no thumbnail, provenance nor embedding-mode columns) gets them from its first
    writer, one version at a time: old rows read them as null, and runs after the migration write
    whole rows."""
    old = Store(str(indexed)).lancedb_table()
    old.drop_columns(["thumbnail", "embed_mode", *(field.name for field in PROVENANCE_FIELDS)])
    old.update_field_metadata({"path": "id", "metadata": {META_SCHEMA_VERSION.decode(): "1"}})
    store = Store(str(indexed))
    assert migrate.table_version(store.lancedb_table().schema) == 1
    with open_writer(store) as writer:
        writer.prepare(store.info().model or "", store.info().dim or 0)
        assert writer.migrations == [
            f"migrated {store.describe()} to schema version {v}" for v in (2, 3, 4, 5)
        ]
    table = Store(str(indexed)).lancedb_table()
    assert migrate.table_version(table.schema) == 5 and "thumbnail" in table.schema.names
    (only,) = generations(table.schema)  # one generation, active, its vectors left where they were
    assert (
        only.state == "active" and only.model == store.info().model and only.image_column == "image_embedding"
    )
    assert table.schema.field("image_embedding").metadata[b"mmindex.generation"] == only.name.encode()
    for column in ("thumbnail", "synthetic", "embed_mode"):
        assert table.to_arrow().column(column).null_count == 24
    assert table_stats(Store(str(indexed)))["embed_modes"] == {"not recorded": 24}

    (corpus / "set-a" / "new.png").write_bytes(next(corpus.glob("set-a/*.png")).read_bytes())
    report = run_index(open_source(str(corpus)), ClipEmbedder.load(tiny_clip), Store(str(indexed)))
    assert report.indexed == 1 and Store(str(indexed)).info().rows == 25
    assert Store(str(indexed)).lancedb_table().to_arrow().column("thumbnail").null_count == 24
    assert table_stats(Store(str(indexed)))["embed_modes"] == {"fp32 on cpu": 1, "not recorded": 24}
    with open_writer(Store(str(indexed))) as writer:
        writer.prepare(store.info().model or "", store.info().dim or 0)
        assert writer.migrations == []  # already current


def test_thumbnails_can_be_left_out(corpus: Path, tmp_path: Path, tiny_clip: str) -> None:
    store = Store(str(tmp_path / "plain"))
    options = IndexOptions(batch_size=8, thumbnails=None)
    run_index(open_source(str(corpus)), ClipEmbedder.load(tiny_clip), store, options)
    assert store.lancedb_table().to_arrow().column("thumbnail").null_count == store.info().rows == 24


def test_the_thumbnail_backfill_fills_old_rows_resumably(indexed: Path, cli: CliRunner) -> None:
    """An old table's rows get thumbnails from `thumbnails`: in parts (as a killed run would leave
    them), skipping an unreadable image for good unless asked, and through the CLI's flow."""
    old = Store(str(indexed)).lancedb_table()
    old.drop_columns(["thumbnail"])
    old.update_field_metadata({"path": "id", "metadata": {META_SCHEMA_VERSION.decode(): "1"}})
    broken = sorted(indexed.parent.glob("corpus/**/*.jpg"))[0]
    broken.write_bytes(b"not an image any more")

    first = mmindex.thumbnails(db=str(indexed), limit=10)
    assert first.scanned == 10 and first.thumbnails + first.failed == 10
    table = Store(str(indexed)).lancedb_table()
    assert table.count_rows("thumbnail IS NULL") == 24 - first.thumbnails

    result = cli("thumbnails", "--db", str(indexed), "--json")
    assert result.returncode == 0, result.stderr
    rest = json.loads(result.stdout.strip().splitlines()[-1])
    assert rest["kind"] == "thumbnails" and rest["scanned"] == 14
    assert first.thumbnails + rest["thumbnails"] == 23 and first.failed + rest["failed"] == 1
    assert table.count_rows("thumbnail IS NULL") == 1 and table.count_rows() == 24  # the row stays
    failure = Store(str(indexed)).failure_rows("stage = 'thumbnail'")
    assert len(failure) == 1 and failure[0]["key"].endswith(broken.name)

    assert mmindex.thumbnails(db=str(indexed)).scanned == 0  # nothing left but a known failure
    assert mmindex.thumbnails(db=str(indexed), retry_failed=True).failed == 1
    data = table.search().where("thumbnail IS NOT NULL").select(["thumbnail"]).limit(1).to_arrow()
    assert Image.open(io.BytesIO(data["thumbnail"][0].as_py())).format == "WEBP"


def test_a_run_in_another_mode_says_the_table_now_mixes_modes(
    indexed: Path, corpus: Path, tiny_clip: str
) -> None:
    (corpus / "set-a" / "new.png").write_bytes(next(corpus.glob("set-a/*.png")).read_bytes())
    bf16 = ClipEmbedder.load(tiny_clip, precision="bf16")
    report = run_index(open_source(str(corpus)), bf16, Store(str(indexed)))
    assert report.indexed == 1
    assert any("this run embedded in bf16 weights on cpu, but 24 rows" in note for note in report.notes)
    assert table_stats(Store(str(indexed)))["embed_modes"] == {"fp32 on cpu": 24, "bf16 weights on cpu": 1}
