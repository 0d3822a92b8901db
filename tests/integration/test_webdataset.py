"""Webdataset tar shards as a source: KEY.jpg + KEY.txt/KEY.json samples, locally and on the moto S3
server, with every runner; stable TAR#KEY uris, a changed tar re-read, a corrupt member a failure row."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from s3_support import S3Bucket

import mmindex
from mmindex.config import Settings
from mmindex.errors import SourceError
from mmindex.ingest.sources import open_source
from mmindex.store.reader import Store
from mmindex.toy.shapes import write_corpus


def write_shards(corpus: Path, out: Path, per_tar: int = 5) -> dict[str, str | None]:
    """Pack a generated corpus into tars (captions as .txt, or as .json for every third sample);
    returns the expected caption of each `TAR#KEY` key. The last sample of the last tar is corrupt."""
    images = sorted(p for p in corpus.rglob("*") if p.suffix in (".jpg", ".png"))
    out.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    for start in range(0, len(images), per_tar):
        name = f"shard-{start // per_tar:05d}.tar"
        with tarfile.open(out / name, "w") as archive:
            for index, image in enumerate(images[start : start + per_tar], start):
                key = f"{index:06d}"
                data = image.read_bytes() if index < len(images) - 1 else b"\xff\xd8 truncated jpeg"
                sidecar = image.with_suffix(".txt")
                caption = sidecar.read_text().strip() if sidecar.exists() else None
                members = {f"{key}{image.suffix}": data}
                if caption and index % 3 == 0:
                    members[f"{key}.json"] = json.dumps({"caption": caption, "width": 1}).encode()
                elif caption:
                    members[f"{key}.txt"] = caption.encode()
                for member, body in members.items():
                    info = tarfile.TarInfo(member)
                    info.size = len(body)
                    archive.addfile(info, io.BytesIO(body))
                expected[f"{name}#{key}"] = caption
    return expected


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str | None]]:
    root = tmp_path_factory.mktemp("wds")
    write_corpus(root / "corpus", 14, seed=4)
    return root / "shards", write_shards(root / "corpus", root / "shards")


def test_local_shards_index_with_captions_failures_and_incremental_reruns(
    shards: tuple[Path, dict[str, str | None]], tmp_path: Path
) -> None:
    folder, expected = shards
    assert open_source(str(folder)).describe().startswith("webdataset")  # detected: only .tar files
    db = str(tmp_path / "db")
    report = mmindex.index(str(folder), db=db, model="toy-clip", progress=False)
    assert (report.scanned, report.indexed, report.failed) == (14, 13, 1)
    rows = {row["key"]: row for row in Store(db).lancedb_table().to_arrow().to_pylist()}
    corrupt = max(expected)
    assert set(rows) == set(expected) - {corrupt}
    assert {key: row["caption"] for key, row in rows.items()} == {k: expected[k] for k in rows}
    assert all(row["uri"] == f"{folder}/{key}" for key, row in rows.items())
    failures = Store(db).lancedb_table(failures=True).to_arrow().to_pylist()
    assert [(f["key"], f["stage"]) for f in failures] == [(corrupt, "decode")]

    sharded = mmindex.index(str(folder), db=str(tmp_path / "sharded"), model="toy-clip", progress=False,
                            runner="sharded", shard_size=4)  # fmt: skip
    assert (sharded.indexed, sharded.failed) == (13, 1)
    again = mmindex.index(str(folder), db=db, model="toy-clip", progress=False)
    assert (again.unchanged, again.indexed) == (13, 0)

    # a rewritten tar is re-read: all its samples are changed, the others untouched
    first = sorted(folder.glob("*.tar"))[0]
    first.write_bytes(first.read_bytes())
    changed = mmindex.index(str(folder), db=db, model="toy-clip", progress=False)
    assert (changed.changed, changed.unchanged, changed.indexed) == (5, 8, 5)

    # rows read back by uri (the thumbnail backfill) find their member in the tar
    mmindex.index(str(folder), db=str(tmp_path / "bare"), model="toy-clip", progress=False, thumbnails=False)
    filled = mmindex.thumbnails(db=str(tmp_path / "bare"))
    assert (filled.thumbnails, filled.failed) == (13, 0)


def test_shards_on_s3_and_a_truncated_tar(
    shards: tuple[Path, dict[str, str | None]],
    s3_bucket: S3Bucket,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder, expected = shards
    for tar in sorted(folder.glob("*.tar")):
        s3_bucket.put(f"wds/{tar.name}", tar.read_bytes())
    whole = (folder / "shard-00000.tar").read_bytes()
    s3_bucket.put("wds/shard-00009.tar", whole[: len(whole) // 2 + 100])  # breaks off mid-member
    monkeypatch.setenv("MMINDEX_S3_ENDPOINT", s3_bucket.endpoint)
    db = str(tmp_path / "db")
    report = mmindex.index(s3_bucket.uri("wds"), db=db, model="toy-clip", progress=False, format="webdataset")
    assert report.listing_incomplete and report.failures_by_stage["scan"] == 1
    rows = {row["key"]: row for row in Store(db).lancedb_table().to_arrow().to_pylist()}
    assert set(expected) - {max(expected)} <= set(rows)
    assert rows["shard-00001.tar#000005"]["uri"] == s3_bucket.uri("wds/shard-00001.tar#000005")
    assert rows["shard-00001.tar#000005"]["caption"] == expected["shard-00001.tar#000005"]
    settings = Settings.from_env(db=db, s3_endpoint=s3_bucket.endpoint)
    assert Store.from_settings(settings).lancedb_table().count_rows() == len(rows)


def test_format_option_is_checked(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="--format"):
        open_source(str(tmp_path), format="zip")
