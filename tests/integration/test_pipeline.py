"""Indexing into a real LanceDB: awkward files, incremental reruns, changed files, pruning."""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmindex.errors import TableError
from mmindex.ingest.pipeline import IndexOptions, run_index
from mmindex.ingest.sources import ScanFilter, open_source
from mmindex.models.clip import ClipEmbedder
from mmindex.query.search import Searcher
from mmindex.report import RunReport
from mmindex.store.reader import Store


@pytest.fixture(scope="module")
def embedder(tiny_clip: str) -> ClipEmbedder:
    return ClipEmbedder.load(tiny_clip)


def index(source: Path | str, db: Path, embedder: ClipEmbedder, **options: object) -> RunReport:
    scan_filter = options.pop("scan_filter", None)
    return run_index(
        open_source(str(source), scan_filter=scan_filter),  # type: ignore[arg-type]
        embedder,
        Store(str(db)),
        IndexOptions(batch_size=5, **options),  # type: ignore[arg-type]
    )


def rows(db: Path) -> list[dict[str, object]]:
    return Store(str(db)).lancedb_table().to_arrow().sort_by("key").to_pylist()


def add_awkward_files(root: Path) -> None:
    awkward = root / "awkward"
    awkward.mkdir()
    (awkward / "empty.jpg").write_bytes(b"")
    (awkward / "garbage.png").write_bytes(os.urandom(2048))
    (awkward / "disguised.jpg").write_text("I am a text file\n")
    good = next(root.glob("set-a/*.jpg")).read_bytes()
    (awkward / "truncated.jpg").write_bytes(good[: len(good) // 4])
    Image.new("RGBA", (20, 20), (0, 0, 0, 0)).save(awkward / "transparent.png")
    (awkward / "transparent.txt").write_bytes(b"caf\xe9 cr\xe8me")  # Latin-1, not UTF-8


def test_a_corpus_with_awkward_files_indexes_every_good_image(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    add_awkward_files(corpus)
    db = tmp_path / "db"

    report = index(corpus, db, embedder)

    keys = [r["key"] for r in rows(db)]
    assert len(keys) == len(set(keys)) == 25  # 24 shapes + the transparent PNG
    assert report.scanned == 29 and report.indexed == 25 and report.failed == 4 and report.warnings == 1
    failures = {r["key"]: r for r in Store(str(db)).failure_rows()}
    assert {k for k, r in failures.items() if r["severity"] == "error"} == {
        "awkward/empty.jpg",
        "awkward/garbage.png",
        "awkward/disguised.jpg",
        "awkward/truncated.jpg",
    }
    assert all(failures[k]["stage"] == "decode" for k in failures if k != "awkward/transparent.png")
    assert failures["awkward/transparent.png"]["stage"] == "sidecar"
    transparent = next(r for r in rows(db) if r["key"] == "awkward/transparent.png")
    assert transparent["caption"] == "caf\ufffd cr\ufffdme" and transparent["caption_source"] == "human"


def test_rows_hold_what_the_schema_promises(corpus: Path, tmp_path: Path, embedder: ClipEmbedder) -> None:
    db = tmp_path / "db"
    index(corpus, db, embedder)
    table = rows(db)
    first = table[0]
    path = Path(str(first["uri"]))
    assert first["key"] == path.relative_to(corpus.resolve()).as_posix()
    assert first["size"] == path.stat().st_size and first["version"] == str(path.stat().st_mtime_ns)
    with Image.open(path) as image:
        assert (first["width"], first["height"]) == image.size and first["format"] == image.format
    captioned = [r for r in table if r["caption"] is not None]
    uncaptioned = [r for r in table if r["caption"] is None]
    assert captioned and uncaptioned
    assert all(r["caption_source"] == "human" and r["text_embedding"] is not None for r in captioned)
    assert all(r["caption_source"] is None and r["text_embedding"] is None for r in uncaptioned)
    assert {r["embed_model"] for r in table} == {embedder.model_id}
    vector = np.asarray(first["image_embedding"])
    assert vector.shape == (embedder.dim,) and abs(np.linalg.norm(vector) - 1) < 1e-4
    assert Store(str(db)).info().model == embedder.model_id


def test_an_unchanged_rerun_reads_nothing_and_writes_nothing(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    add_awkward_files(corpus)
    db = tmp_path / "db"
    index(corpus, db, embedder)
    store = Store(str(db))
    versions = (store.lancedb_table().version, store.lancedb_table(failures=True).version)

    again = index(corpus, db, embedder)

    assert (again.unchanged, again.known_failures, again.indexed, again.failed) == (25, 4, 0, 0)
    assert "read" not in again.stage_seconds and "decode" not in again.stage_seconds
    reopened = Store(str(db))
    assert (reopened.lancedb_table().version, reopened.lancedb_table(failures=True).version) == versions


def test_a_run_that_opened_the_table_before_another_run_wrote_starts_from_that_runs_work(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    """What a run that waited for the table's lock sees: its handle predates the other run's commits."""
    db = tmp_path / "db"
    index(corpus, db, embedder)
    waiting = Store(str(db))
    assert (
        waiting.lancedb_table().count_rows() == 24
    )  # opened (as choosing the model does) before the next run
    Image.new("RGB", (64, 48), (10, 200, 30)).save(corpus / "set-a" / "late.png")
    assert index(corpus, db, embedder).indexed == 1

    report = run_index(open_source(str(corpus)), embedder, waiting, IndexOptions(batch_size=5))

    assert (report.indexed, report.unchanged) == (0, 25)


def test_a_changed_file_is_reembedded_in_place(corpus: Path, tmp_path: Path, embedder: ClipEmbedder) -> None:
    db = tmp_path / "db"
    index(corpus, db, embedder)
    target = sorted(corpus.glob("set-a/*.jpg"))[0]
    before = next(r for r in rows(db) if r["uri"] == str(target.resolve()))
    Image.new("RGB", (300, 200), (0, 0, 0)).save(target)
    os.utime(target, ns=(time.time_ns(), time.time_ns() + 10**9))

    report = index(corpus, db, embedder)

    after = [r for r in rows(db) if r["uri"] == str(target.resolve())]
    assert report.changed == 1 and report.indexed == 1 and len(rows(db)) == 24
    assert len(after) == 1
    assert after[0]["sha256"] != before["sha256"] and (after[0]["width"], after[0]["height"]) == (300, 200)
    assert not np.allclose(after[0]["image_embedding"], before["image_embedding"])


def test_editing_only_a_caption_sidecar_updates_the_caption(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    db = tmp_path / "db"
    index(corpus, db, embedder)
    sidecar = sorted(corpus.glob("set-*/*.txt"))[0]
    sidecar.write_text("a completely new caption")
    os.utime(sidecar, ns=(time.time_ns(), time.time_ns() + 10**9))

    report = index(corpus, db, embedder)

    assert report.changed == 1
    captions = Counter(r["caption"] for r in rows(db))
    assert captions["a completely new caption"] == 1


def test_prune_removes_rows_of_deleted_files_only_under_the_source_root(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    db = tmp_path / "db"
    other = tmp_path / "other"
    shutil.copytree(corpus / "set-b", other)
    index(corpus, db, embedder)
    index(other, db, embedder)
    total = len(rows(db))
    victims = sorted(corpus.glob("set-a/*.jpg"))[:2]
    for victim in victims:
        victim.unlink()

    assert index(corpus, db, embedder).pruned == 0  # without --prune nothing is removed
    report = index(corpus, db, embedder, prune=True)

    remaining = {r["uri"] for r in rows(db)}
    assert report.pruned == 2 and len(remaining) == total - 2
    assert not {str(v.resolve()) for v in victims} & remaining
    assert sum(1 for uri in remaining if str(uri).startswith(str(other.resolve()))) == len(
        list(other.glob("*.*g"))
    )


def test_prune_is_skipped_when_the_listing_was_filtered(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    db = tmp_path / "db"
    index(corpus, db, embedder)
    report = index(corpus, db, embedder, prune=True, scan_filter=ScanFilter(prefix="set-a/"))
    assert report.pruned == 0 and any("prune skipped" in note for note in report.notes)
    assert len(rows(db)) == 24


def test_known_failures_are_skipped_until_the_file_changes_or_retry_is_asked(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    db = tmp_path / "db"
    broken = corpus / "set-a" / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert index(corpus, db, embedder).failed == 1
    assert index(corpus, db, embedder).known_failures == 1
    assert index(corpus, db, embedder, retry_failed=True).failed == 1
    Image.new("RGB", (64, 64), (10, 200, 10)).save(broken, "JPEG")
    os.utime(broken, ns=(time.time_ns(), time.time_ns() + 10**9))
    fixed = index(corpus, db, embedder)
    assert (fixed.indexed, fixed.failed) == (1, 0)
    assert Store(str(db)).failure_rows() == []


def test_a_manifest_listing_an_image_twice_still_gives_one_row(
    tmp_path: Path, corpus: Path, embedder: ClipEmbedder
) -> None:
    images = sorted(corpus.glob("set-a/*.jpg"))[:3]
    manifest = tmp_path / "manifest.csv"
    lines = ["path,caption"] + [f"{p},one" for p in images] + [f"{images[0]},again"]
    manifest.write_text("\n".join(lines) + "\n")
    db = tmp_path / "db"
    index(manifest, db, embedder)
    assert sorted(Counter(r["uri"] for r in rows(db)).values()) == [1, 1, 1]


def test_a_table_refuses_another_model(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder, other_tiny_clip: str
) -> None:
    db = tmp_path / "db"
    index(corpus, db, embedder)
    with pytest.raises(TableError, match="was built with model"):
        index(corpus, db, ClipEmbedder.load(other_tiny_clip))


def test_vector_index_is_built_past_the_threshold_and_scores_stay_exact_cosines(
    tmp_path: Path, embedder: ClipEmbedder
) -> None:
    from mmindex.toy.shapes import write_corpus

    root = tmp_path / "big"
    write_corpus(root, 300, seed=11, size_range=(40, 60))
    store = Store(str(tmp_path / "db"))
    store.vector_index_min_rows = 256
    report = run_index(open_source(str(root)), embedder, store, IndexOptions(batch_size=64))
    assert any("created IVF_RQ index on image_embedding (300 rows" in note for note in report.notes)
    indexed = {index.columns[0]: index.index_type for index in store.lancedb_table().list_indices()}
    assert indexed["image_embedding"] == "IvfRq" and indexed["caption"] == "FTS"

    query = embedder.embed_texts(["a red circle"])[0]
    hits = Searcher(store, embedder).vector(query, k=10)
    table = store.lancedb_table().to_arrow()
    vectors = np.stack(table.column("image_embedding").to_numpy(zero_copy_only=False))
    exact = dict(zip(table.column("id").to_pylist(), vectors @ query, strict=True))
    assert [round(h.score, 4) for h in hits] == [round(float(exact[h.id]), 4) for h in hits]
    best = sorted(exact.values(), reverse=True)[:10]
    assert (
        len({round(h.score, 4) for h in hits} & {round(float(s), 4) for s in best}) >= 9
    )  # recall@10 >= 0.9


def test_rows_after_an_index_build_are_searched_and_growth_rebuilds_the_index(
    tmp_path: Path, embedder: ClipEmbedder
) -> None:
    from mmindex.store.upkeep import trained_rows
    from mmindex.toy.shapes import write_corpus

    store = Store(str(tmp_path / "db"))
    store.vector_index_min_rows = 200
    options = IndexOptions(batch_size=64, thumbnails=None)
    for part, count in (("a", 200), ("b", 100)):
        write_corpus(tmp_path / "src" / part, count, seed=len(part) + count, size_range=(40, 60))
        report = run_index(open_source(str(tmp_path / "src")), embedder, store, options)
    assert any("folded" in note for note in report.notes) and not any("rebuilt" in n for n in report.notes)
    assert trained_rows(store.lancedb_table().schema, "image_embedding") == 200
    table = store.lancedb_table()
    late = table.search().where("key LIKE 'b/%'").select(["id", "image_embedding"]).limit(5).to_arrow()
    searcher = Searcher(store, embedder)
    for row_id, vector in zip(late["id"].to_pylist(), late["image_embedding"].to_pylist(), strict=True):
        assert searcher.vector(np.asarray(vector), k=1)[0].id == row_id  # a row written after the build
    before = searcher.facts()
    assert searcher.facts() is before and "image_embedding" in before.indexed  # read once per version

    write_corpus(tmp_path / "src" / "c", 120, seed=5, size_range=(40, 60))
    report = run_index(open_source(str(tmp_path / "src")), embedder, store, options)
    assert any("rebuilt IVF_RQ index on image_embedding (420 rows" in note for note in report.notes)
    assert trained_rows(store.lancedb_table().schema, "image_embedding") == 420
    after = searcher.facts()  # the same searcher follows the table's new version and index
    assert after.version > before.version and trained_rows(after.schema, "image_embedding") == 420
    newest = table.search().where("key LIKE 'c/%'").select(["id", "image_embedding"]).limit(1).to_arrow()
    assert (
        searcher.vector(np.asarray(newest["image_embedding"][0].as_py()), k=1)[0].id
        == newest["id"][0].as_py()
    )


def versions(db: Path) -> tuple[int, int]:
    store = Store(str(db))
    return store.lancedb_table().version, store.lancedb_table(failures=True).version


def test_names_that_are_not_utf8_are_scan_problems_and_a_rerun_writes_nothing(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    image = next(corpus.glob("set-a/*.jpg")).read_bytes()
    with open(os.fsencode(corpus / "set-a") + b"/caf\xe9.jpg", "wb") as handle:  # a Latin-1 name
        handle.write(image)
    os.symlink(corpus / "gone.jpg", corpus / "dangling.jpg")
    db = tmp_path / "db"

    first = index(corpus, db, embedder)
    assert (first.indexed, first.failed) == (24, 2)
    problems = {f["key"]: f for f in Store(str(db)).failure_rows()}
    assert set(problems) == {"set-a/caf\\xe9.jpg", "dangling.jpg"}
    assert all(f["stage"] == "scan" for f in problems.values())

    before = versions(db)
    again = index(corpus, db, embedder, prune=True)
    assert (again.indexed, again.failed, again.known_failures, again.pruned) == (0, 0, 2, 0)
    assert versions(db) == before  # the same problems are not written again


def test_a_pathological_or_unreadable_sidecar_costs_only_the_caption(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    photos = sorted(p for p in corpus.glob("set-b/*.jpg") if not p.with_suffix(".txt").exists())[:2]
    nested, unreadable = photos
    nested.with_suffix(".json").write_text("[" * 100_000)  # json refuses it (RecursionError)
    unreadable.with_suffix(".txt").mkdir()  # a directory where a caption file should be
    db = tmp_path / "db"

    report = index(corpus, db, embedder)

    rows = {r["key"]: r for r in Store(str(db)).lancedb_table().to_arrow().to_pylist()}
    assert report.indexed == 24 and report.failed == 0
    assert (
        rows[f"set-b/{nested.name}"]["caption"] is None
        and rows[f"set-b/{unreadable.name}"]["caption"] is None
    )
    warnings = {f["key"]: f for f in Store(str(db)).failure_rows()}
    assert {warnings[f"set-b/{p.name}"]["stage"] for p in photos} == {"sidecar"}
    assert warnings[f"set-b/{unreadable.name}"]["retryable"] is True

    unreadable.with_suffix(".txt").rmdir()
    unreadable.with_suffix(".txt").write_text("now it can be read")
    again = index(corpus, db, embedder)  # the unreadable sidecar is retried although nothing changed
    rows = {r["key"]: r for r in Store(str(db)).lancedb_table().to_arrow().to_pylist()}
    assert again.indexed >= 1 and rows[f"set-b/{unreadable.name}"]["caption"] == "now it can be read"


def test_a_changed_file_that_no_longer_decodes_loses_its_stale_row(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    db = tmp_path / "db"
    index(corpus, db, embedder)
    victim = sorted(corpus.glob("set-a/*.jpg"))[0]
    victim.write_bytes(b"\xff\xd8\xff now broken")
    os.utime(victim, ns=(time.time_ns(), time.time_ns() + 10**9))

    report = index(corpus, db, embedder)

    keys = [r["key"] for r in rows(db)]
    assert report.failed == 1 and f"set-a/{victim.name}" not in keys and len(keys) == 23
    assert index(corpus, db, embedder).known_failures == 1


class BrokenPreprocessing:
    """The real embedder, with an image preprocessing that fails on every `every`-th image (as a bug in
    mmindex or a broken dependency would): not the files' fault."""

    def __init__(self, inner: ClipEmbedder, every: int) -> None:
        self.inner = inner
        self.model_id, self.compute, self.dim = inner.model_id, inner.compute, inner.dim
        self.embed_mode = inner.embed_mode
        real, calls = inner.preprocess, [0]

        class Preprocess:
            min_side = real.min_side

            def __call__(self, image: Image.Image) -> np.ndarray:
                calls[0] += 1
                if calls[0] % every == 0:
                    raise TypeError("unsupported operand in a preprocessing bug")
                return real(image)

        self.preprocess = Preprocess()

    def embed_pixels(self, pixels: np.ndarray) -> np.ndarray:
        return self.inner.embed_pixels(pixels)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.inner.embed_texts(texts)


def test_an_unexpected_error_is_retryable_and_the_next_run_retries_it(
    corpus: Path, tmp_path: Path, embedder: ClipEmbedder
) -> None:
    db = tmp_path / "db"
    report = index(corpus, db, BrokenPreprocessing(embedder, every=6))  # type: ignore[arg-type]
    failures = Store(str(db)).failure_rows()
    assert report.indexed == 20 and len(failures) == 4
    assert all(f["stage"] == "decode" and f["retryable"] for f in failures)
    assert all("unexpected TypeError" in f["error"] for f in failures)
    assert report.to_dict()["unexpected_failures"] == len(failures)

    again = index(corpus, db, embedder)
    assert (again.indexed, again.known_failures, again.unchanged) == (len(failures), 0, 24 - len(failures))
    assert Store(str(db)).failure_rows() == []


def test_a_run_where_most_items_fail_the_same_unexpected_way_stops_without_a_row_per_item(
    tmp_path: Path, embedder: ClipEmbedder
) -> None:
    from mmindex.errors import RunStopped
    from mmindex.toy.shapes import write_corpus

    write_corpus(tmp_path / "many", 200, seed=4, size_range=(40, 64))
    db = tmp_path / "db"
    broken = BrokenPreprocessing(embedder, every=1)
    with pytest.raises(
        RunStopped, match=r"64 of 64 items failed at decode with the same unexpected TypeError"
    ):
        index(tmp_path / "many", db, broken, chunk_size=32)  # type: ignore[arg-type]
    assert len(Store(str(db)).failure_rows()) == 64  # two finished chunks, not a row for each of 200


def test_chunks_read_ahead_are_not_judged_before_they_are_done(
    tmp_path: Path, embedder: ClipEmbedder
) -> None:
    """The next chunk loads while the current one is embedded; its failures must not count against
    the current one (a clean first chunk and a broken second one are half and half: no stop)."""
    from mmindex.toy.shapes import write_corpus

    write_corpus(tmp_path / "many", 128, seed=6, size_range=(40, 64))
    broken = BrokenPreprocessing(embedder, every=1)
    failing, calls = broken.preprocess, [0]

    class SecondHalfBreaks:
        min_side = embedder.preprocess.min_side

        def __call__(self, image: Image.Image) -> np.ndarray:
            calls[0] += 1
            return embedder.preprocess(image) if calls[0] <= 64 else failing(image)

    broken.preprocess = SecondHalfBreaks()
    db = tmp_path / "db"
    report = index(tmp_path / "many", db, broken, chunk_size=64)  # type: ignore[arg-type]
    assert report.indexed == 64 and len(Store(str(db)).failure_rows()) == 64


def test_a_selective_filter_on_an_indexed_table_still_gets_k_rows(
    tmp_path: Path, embedder: ClipEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IVF probes only some partitions; a filter that keeps a few rows must not lose them."""
    from mmindex.query import facts
    from mmindex.store import upkeep
    from mmindex.toy.shapes import write_corpus

    monkeypatch.setattr(upkeep, "ROWS_PER_PARTITION", 16)  # 300 rows -> 18 partitions ...
    monkeypatch.setattr(facts, "MIN_NPROBES", 1)  # ... of which each query probes one
    monkeypatch.setattr(facts, "NPROBE_SHARE", 0.0)
    monkeypatch.setattr(facts, "FILTERED_NPROBE_SHARE", 0.0)
    write_corpus(tmp_path / "src", 300, seed=4, size_range=(40, 60))
    store = Store(str(tmp_path / "db"))
    store.vector_index_min_rows = 256
    run_index(
        open_source(str(tmp_path / "src")), embedder, store, IndexOptions(batch_size=64, thumbnails=None)
    )
    where = "key LIKE '%-red-circle.%'"
    matching = store.lancedb_table().count_rows(where)
    assert 10 <= matching < 30
    query = embedder.embed_texts(["a blue star"])[0]  # far from the filtered rows
    hits = Searcher(store, embedder).vector(query, k=10, where=where)
    assert len(hits) == 10 and all("-red-circle." in hit.key for hit in hits)
    # several queries in one multi-vector query (the server's batches): each as if asked alone (with
    # one partition probed, an unfiltered query may find fewer than offset + k rows: the same ones)
    queries = embedder.embed_texts(["a blue star", "a red circle", "a green square"])
    searcher = Searcher(store, embedder)
    for where_clause in (where, None):
        together = searcher.vectors(list(queries), k=10, where=where_clause, offset=2)
        alone = [searcher.vector(vector, k=10, where=where_clause, offset=2) for vector in queries]
        assert [[hit.id for hit in found] for found in together] == [
            [hit.id for hit in found] for found in alone
        ]
    filtered = searcher.vectors(list(queries), k=10, where=where, offset=2)
    assert all(len(found) == 10 and all("-red-circle." in hit.key for hit in found) for found in filtered)
