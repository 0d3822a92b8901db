"""Listing local corpora: what counts as an image, where captions come from, what is skipped."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmindex.errors import SourceError
from mmindex.ingest.sources import (
    LocalManifestSource,
    LocalSource,
    ScanFilter,
    ScanProblem,
    SourceItem,
    open_source,
)
from mmindex.ingest.sources.sidecar import parse_sidecar


def jpeg(path: Path, colour: tuple[int, int, int] = (200, 10, 10)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path, "JPEG")
    return path


def listed(source: object) -> tuple[dict[str, SourceItem], list[ScanProblem]]:
    items: dict[str, SourceItem] = {}
    problems: list[ScanProblem] = []
    for entry in source.scan():  # type: ignore[attr-defined]
        if isinstance(entry, ScanProblem):
            problems.append(entry)
        else:
            items[entry.key] = entry
    return items, problems


def test_walk_finds_images_recursively_and_skips_what_is_not_an_image(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    jpeg(tmp_path / "deep" / "er" / "b.JPEG")
    jpeg(tmp_path / ".hidden" / "c.jpg")
    jpeg(tmp_path / ".d.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "data.csv").write_text("x,y\n")
    (tmp_path / "README").write_text("no extension, but text")
    (tmp_path / "no_extension_jpeg").write_bytes((tmp_path / "a.jpg").read_bytes())

    items, problems = listed(LocalSource(tmp_path))

    assert sorted(items) == ["a.jpg", "deep/er/b.JPEG", "no_extension_jpeg"]
    assert problems == []
    assert items["deep/er/b.JPEG"].uri == str(tmp_path.resolve() / "deep" / "er" / "b.JPEG")


def test_symlink_loops_are_walked_once(tmp_path: Path) -> None:
    jpeg(tmp_path / "photos" / "x.jpg")
    os.symlink(tmp_path / "photos", tmp_path / "photos" / "loop")
    os.symlink(tmp_path, tmp_path / "photos" / "up")
    items, _ = listed(LocalSource(tmp_path))
    assert sorted(items) == ["photos/x.jpg"]


def test_broken_symlink_with_image_name_is_a_scan_problem(tmp_path: Path) -> None:
    os.symlink(tmp_path / "missing.jpg", tmp_path / "dangling.jpg")
    items, problems = listed(LocalSource(tmp_path))
    assert items == {}
    assert [p.key for p in problems] == ["dangling.jpg"]


def test_unreadable_directory_is_a_scan_problem_and_the_walk_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jpeg(tmp_path / "ok" / "a.jpg")
    jpeg(tmp_path / "locked" / "b.jpg")
    # Tests may run as root, who can read any directory: the permission error is injected instead.
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if Path(str(path)).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "scandir", scandir)
    items, problems = listed(LocalSource(tmp_path))
    assert list(items) == ["ok/a.jpg"]
    assert [(p.key, p.error) for p in problems] == [("locked/", "cannot list directory: Permission denied")]


def test_sidecars_txt_and_json_and_caption_origin_feeds_the_fingerprint(tmp_path: Path) -> None:
    jpeg(tmp_path / "a.jpg")
    (tmp_path / "a.txt").write_text("a red square\n")
    jpeg(tmp_path / "b.png")
    (tmp_path / "b.json").write_text(json.dumps({"caption": "from json", "width": 8}))
    jpeg(tmp_path / "c.jpg")

    items, _ = listed(LocalSource(tmp_path))

    assert items["a.jpg"].sidecar == str(tmp_path.resolve() / "a.txt")
    assert items["b.png"].sidecar == str(tmp_path.resolve() / "b.json")
    assert items["c.jpg"].sidecar is None
    before = items["a.jpg"].fingerprint
    os.utime(tmp_path / "a.txt", ns=(1, 1))
    after = listed(LocalSource(tmp_path))[0]["a.jpg"].fingerprint
    assert before != after  # editing only the caption makes the image "changed"


def test_sidecar_parsing_handles_broken_encodings_and_json_variants() -> None:
    assert parse_sidecar("a café\n".encode(), "x.txt").caption == "a café"
    broken = parse_sidecar(b"caf\xe9 au lait", "x.txt")
    assert broken.caption == "caf\ufffd au lait" and broken.warning and "byte 3" in broken.warning
    assert parse_sidecar("with bom".encode("utf-16"), "x.txt").caption == "with bom"
    assert parse_sidecar(b'{"text": "alt field"}', "x.json").caption == "alt field"
    bad_json = parse_sidecar(b"{not json", "x.json")
    assert bad_json.caption is None and bad_json.warning and "not valid JSON" in bad_json.warning
    assert parse_sidecar(b"   \n", "x.txt").caption is None


def write_manifest(path: Path, rows: list[dict[str, str]]) -> Path:
    if path.suffix == ".csv":
        lines = ["path,caption"] + [f'{r["path"]},"{r["caption"]}"' for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_manifest_as_source_lists_its_rows_with_captions(tmp_path: Path, suffix: str) -> None:
    jpeg(tmp_path / "img" / "one.jpg")
    jpeg(tmp_path / "img" / "two.jpg")
    jpeg(tmp_path / "img" / "unlisted.jpg")
    rows = [
        {"path": "img/one.jpg", "caption": "first, with a comma"},
        {"path": str(tmp_path / "img" / "two.jpg"), "caption": "second"},
        {"path": "img/missing.jpg", "caption": "gone"},
    ]
    source = open_source(str(write_manifest(tmp_path / f"m{suffix}", rows)))
    assert isinstance(source, LocalManifestSource)

    items, problems = listed(source)

    assert {k: v.caption for k, v in items.items()} == {
        "img/one.jpg": "first, with a comma",
        "img/two.jpg": "second",
    }
    assert [p.key for p in problems] == ["img/missing.jpg"]


def test_manifest_gives_captions_to_a_directory(tmp_path: Path) -> None:
    jpeg(tmp_path / "corpus" / "sub" / "one.jpg")
    (tmp_path / "corpus" / "sub" / "one.txt").write_text("sidecar loses")
    manifest = write_manifest(
        tmp_path / "captions.jsonl", [{"path": "sub/one.jpg", "caption": "manifest wins"}]
    )
    items, _ = listed(open_source(str(tmp_path / "corpus"), captions=str(manifest)))
    assert items["sub/one.jpg"].caption == "manifest wins"


def test_manifest_without_a_path_column_is_refused(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("name,caption\na.jpg,hi\n")
    with pytest.raises(SourceError, match="no image path column"):
        open_source(str(manifest))
    assert open_source(str(manifest), path_column="name") is not None


def test_missing_source_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="does not exist"):
        open_source(str(tmp_path / "nope"))


def test_scan_filter_globs_prefix_and_time_window(tmp_path: Path) -> None:
    jpeg(tmp_path / "2024" / "a.jpg")
    jpeg(tmp_path / "2024" / "b.png")
    jpeg(tmp_path / "2025" / "c.jpg")
    old = datetime(2020, 1, 1, tzinfo=UTC).timestamp()
    os.utime(tmp_path / "2024" / "a.jpg", (old, old))

    def keys(scan_filter: ScanFilter) -> list[str]:
        return sorted(listed(LocalSource(tmp_path, scan_filter=scan_filter))[0])

    assert keys(ScanFilter(include=("*.jpg",))) == ["2024/a.jpg", "2025/c.jpg"]
    assert keys(ScanFilter(exclude=("2025/*",))) == ["2024/a.jpg", "2024/b.png"]
    assert keys(ScanFilter(prefix="2024/")) == ["2024/a.jpg", "2024/b.png"]
    since = datetime.now(UTC) - timedelta(days=1)
    assert keys(ScanFilter(since=since)) == ["2024/b.png", "2025/c.jpg"]
    assert keys(ScanFilter(until=since)) == ["2024/a.jpg"]
    assert ScanFilter(prefix="x").is_partial and not ScanFilter().is_partial
