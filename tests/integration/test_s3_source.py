"""The S3 source against a real local S3 endpoint (moto_server), with and without a faulty proxy between.

What users see: which objects become items (keys, uris, ETag versions, sidecars, manifest captions),
the exact bytes read back through 503s, dropped connections and truncated bodies, one-line check()
errors within seconds, and no credentials in any message.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import posixpath
import random
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_support import (
    DROP,
    SLOW_DOWN,
    TEST_SECRET_KEY,
    TRUNCATE,
    AuthS3,
    Faults,
    FaultyProxy,
    S3Bucket,
    free_port,
    upload_corpus,
)

from mmindex.config import Settings
from mmindex.errors import ConfigError, FetchError, SourceError
from mmindex.ingest.sources.base import ScanFilter, ScanProblem, SourceItem
from mmindex.ingest.sources.local import LocalSource
from mmindex.ingest.sources.s3 import (
    S3Config,
    S3ManifestSource,
    S3Source,
    lance_storage_options,
    load_s3_caption_manifest,
)
from mmindex.ingest.sources.s3.listing import sidecar_safe_prefix
from mmindex.ingest.sources.sidecar import parse_sidecar, sidecar_names

ProxyFactory = Callable[..., FaultyProxy]


def items_of(source: S3Source | S3ManifestSource) -> list[SourceItem]:
    entries = list(source.scan())
    assert all(isinstance(entry, SourceItem) for entry in entries), entries
    return [entry for entry in entries if isinstance(entry, SourceItem)]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# -- listing ----------------------------------------------------------------------------------------


def test_scan_lists_images_with_their_sidecars_and_reads_nothing(
    s3_bucket: S3Bucket, tmp_path: Path, faulty_proxy: ProxyFactory
) -> None:
    corpus = upload_corpus(s3_bucket, tmp_path / "corpus", prefix="photos/", count=12)
    s3_bucket.put_many(
        {
            "photos/.thumbs/small.jpg": b"hidden folder",
            "photos/set-a/.hidden.jpg": b"hidden file",
            "photos/set-a/README": b"\xff\xd8\xff extensionless: skipped, sniffing would cost a GET",
            "photos/set-a/": b"",
            "photos/notes.pdf": b"not an image",
            "elsewhere/outside.jpg": b"outside the prefix",
        }
    )
    proxy = faulty_proxy(s3_bucket.endpoint)
    source = S3Source(s3_bucket.uri("photos"), config=s3_bucket.config(proxy.endpoint))

    items = items_of(source)

    assert source.root == f"s3://{s3_bucket.name}/photos/"
    assert sorted(item.key for item in items) == sorted(corpus)
    assert proxy.object_gets(s3_bucket.name) == 0 and proxy.list_requests(s3_bucket.name) == 1
    for item in items:
        expected = corpus[item.key]
        assert item.uri == f"s3://{s3_bucket.name}/photos/{item.key}"
        assert item.size == len(expected.data)
        assert item.version == s3_bucket.etag("photos/" + item.key) == hashlib.md5(expected.data).hexdigest()
        assert item.modified_at is not None and item.modified_at.tzinfo is not None
        assert item.modified_at.utcoffset() == timedelta(0)
        if expected.sidecar_key is None:
            assert item.sidecar is None and item.sidecar_version is None
            continue
        assert item.sidecar == source.root + expected.sidecar_key
        assert item.sidecar_version == s3_bucket.etag("photos/" + expected.sidecar_key)
    assert any(i.sidecar and i.sidecar.endswith(".json") for i in items)
    assert any(i.sidecar and i.sidecar.endswith(".txt") for i in items)

    captioned = [item for item in items if item.sidecar]
    for item in captioned:
        assert item.sidecar is not None
        assert parse_sidecar(source.read_sidecar(item), item.sidecar).caption == corpus[item.key].caption
        assert source.read(item) == corpus[item.key].data
    assert proxy.object_gets(s3_bucket.name) == 2 * len(captioned)


TRICKY_GROUPS = [
    ("a/p.jpg", "a/p.json"),  # a .json sidecar
    ("a/q.json", "a/q.png"),  # the sidecar is listed before its image
    ("a/r.jpg", "a/r.jpg.txt"),  # photo.jpg.txt naming
    ("a/s.jpg", "a/s.jpg.txt", "a/s.json", "a/s.txt"),  # several: photo.txt wins
    ("a/t.json", "a/t.k.jpg", "a/t.k.txt", "a/t.png"),  # another image inside t's block
    ("a/u.d/v.jpg", "a/u.d/v.txt", "a/u.jpg", "a/u.txt"),  # a folder inside u's block
    ("a/w.jpg", "a/w2.txt"),  # no sidecar; an orphan sidecar
    ("b/frame.0001.jpg", "b/frame.0001.txt", "b/frame.0002.jpg"),  # dotted stems
    ("c/y.jpg", "c/y.jpg.png", "c/y.jpg.txt"),  # one sidecar that two images may claim
    ("d/.hidden/h.jpg", "d/.hidden/h.txt", "d/z.JPG", "d/z.txt"),  # hidden folder; upper-case extension
]
TRICKY_LAYOUT = [key for group in TRICKY_GROUPS for key in group]


def test_sidecars_pair_exactly_as_in_a_local_walk(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    s3_bucket.put_many({"tree/" + key: key.encode() for key in TRICKY_LAYOUT})
    for key in TRICKY_LAYOUT:
        path = tmp_path / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(key.encode())
    local = LocalSource(tmp_path)
    remote = S3Source(s3_bucket.uri("tree/"), config=s3_bucket.config())

    def pairs(entries: list[SourceItem], root: str) -> dict[str, str | None]:
        return {item.key: item.sidecar[len(root) :] if item.sidecar else None for item in entries}

    local_items = [entry for entry in local.scan() if isinstance(entry, SourceItem)]
    remote_items = items_of(remote)
    assert pairs(remote_items, remote.root) == pairs(local_items, local.root)
    assert pairs(remote_items, remote.root)["a/q.png"] == "a/q.json"
    assert pairs(remote_items, remote.root)["a/t.png"] == "a/t.json"
    assert pairs(remote_items, remote.root)["a/s.jpg"] == "a/s.txt"
    assert len(remote_items) == len({item.key for item in remote_items})  # each image once


def test_sidecar_pairing_on_random_layouts_matches_a_brute_force_lookup(
    aws_test_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The streaming pairer against "look every candidate up in the set of all keys", on random keys
    built to collide: nested blocks, dotted folders, hidden parts, photo.jpg.txt naming."""
    source = S3Source("s3://fuzz/", config=S3Config(endpoint_url="http://127.0.0.1:9"))
    parts = ["a", "b", "a.b", "x", "x.d", ".h", "a-1", "a.jpg"]
    suffixes = [".jpg", ".png", ".txt", ".json", ".jpg.txt", ".jpg.json", ".png.txt", "", ".k.jpg", ".pdf"]
    rng = random.Random(1)

    def visible(key: str) -> bool:
        return not any(part.startswith(".") for part in key.split("/"))

    for _ in range(400):
        keys = {
            "/".join(
                [
                    *(rng.choice(parts) for _ in range(rng.randint(0, 2))),
                    rng.choice(parts) + rng.choice(suffixes),
                ]
            )
            for _ in range(rng.randint(1, 25))
        }
        listing = [
            {"Key": k, "Size": 1, "ETag": f'"{k}"', "LastModified": datetime.now(UTC)} for k in sorted(keys)
        ]
        monkeypatch.setattr(
            source.objects, "list_objects", lambda bucket, prefix, size, listing=listing: iter(listing)
        )
        expected = {}
        for key in keys:
            if visible(key) and posixpath.splitext(key)[1] in (".jpg", ".png"):
                folder, slash, name = key.rpartition("/")
                candidates = [folder + slash + c for c in sidecar_names(name)]
                expected[key] = next((c for c in candidates if c in keys), None)
        paired = {
            item.key: item.sidecar[len(source.root) :] if item.sidecar else None for item in items_of(source)
        }
        assert paired == expected, sorted(keys)


def test_keys_are_relative_to_the_prefix_and_the_scan_filter_applies(s3_bucket: S3Bucket) -> None:
    early = {"data/2024/01/a.jpg", "data/2024/01/a.txt", "data/2024/01/b.png", "data/2024/02/c.jpg"}
    s3_bucket.put_many({key: key.encode() for key in early})
    latest_early = max(
        s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)["LastModified"] for key in early
    )
    late = ("data/2025/d.jpg", "data/2025/e.webp")
    deadline = time.monotonic() + 30
    while True:  # LastModified has one-second resolution: write the late keys until they are later
        s3_bucket.put_many({key: key.encode() for key in late})
        stamps = [
            s3_bucket.client.head_object(Bucket=s3_bucket.name, Key=key)["LastModified"] for key in late
        ]
        if min(stamps) > latest_early or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    boundary = s3_bucket.client.head_object(Bucket=s3_bucket.name, Key="data/2025/d.jpg")["LastModified"]

    def keys(scan_filter: ScanFilter) -> list[str]:
        source = S3Source(s3_bucket.uri("data"), scan_filter=scan_filter, config=s3_bucket.config())
        return sorted(item.key for item in items_of(source))

    everything = ["2024/01/a.jpg", "2024/01/b.png", "2024/02/c.jpg", "2025/d.jpg", "2025/e.webp"]
    assert keys(ScanFilter()) == everything
    assert keys(ScanFilter(include=["*.jpg"], exclude=["2024/02/*"])) == ["2024/01/a.jpg", "2025/d.jpg"]
    assert keys(ScanFilter(prefix="2024/")) == ["2024/01/a.jpg", "2024/01/b.png", "2024/02/c.jpg"]
    assert keys(ScanFilter(since=boundary)) == ["2025/d.jpg", "2025/e.webp"]
    assert keys(ScanFilter(until=boundary)) == everything[:3]

    # A prefix ending inside a file name still finds the sidecar (listed from "2024/01/a.").
    assert sidecar_safe_prefix("2024/01/a.j") == "2024/01/a."
    source = S3Source(
        s3_bucket.uri("data/"), scan_filter=ScanFilter(prefix="2024/01/a.j"), config=s3_bucket.config()
    )
    (item,) = items_of(source)
    assert (item.key, item.sidecar) == ("2024/01/a.jpg", s3_bucket.uri("data/2024/01/a.txt"))
    # A sidecar is paired even when the include globs do not match it.
    source = S3Source(
        s3_bucket.uri("data"), scan_filter=ScanFilter(include=["*/a.jpg"]), config=s3_bucket.config()
    )
    assert [i.sidecar for i in items_of(source)] == [s3_bucket.uri("data/2024/01/a.txt")]


def test_a_replaced_object_gets_a_new_version_and_a_stale_read_fails(s3_bucket: S3Bucket) -> None:
    s3_bucket.put_many({"p/x.jpg": b"first", "p/x.txt": b"a caption"})
    source = S3Source(s3_bucket.uri("p/"), config=s3_bucket.config(max_attempts=2))
    (before,) = items_of(source)
    assert before.version == hashlib.md5(b"first").hexdigest()

    s3_bucket.put("p/x.jpg", b"second")
    (after_image,) = items_of(source)
    assert after_image.version == hashlib.md5(b"second").hexdigest()
    assert after_image.fingerprint != before.fingerprint
    s3_bucket.put("p/x.txt", b"another caption")
    (after_sidecar,) = items_of(source)
    assert after_sidecar.version == after_image.version
    assert after_sidecar.sidecar_version != after_image.sidecar_version
    assert after_sidecar.fingerprint != after_image.fingerprint

    with pytest.raises(FetchError, match="changed after it was listed") as changed:
        source.read(before)  # If-Match: never the new bytes under the old version
    assert changed.value.retryable
    assert source.read(after_sidecar) == b"second"
    s3_bucket.client.delete_object(Bucket=s3_bucket.name, Key="p/x.jpg")
    with pytest.raises(FetchError, match="no longer exists") as deleted:
        source.read(after_sidecar)
    assert deleted.value.retryable and deleted.value.stage == "fetch"


# -- manifests --------------------------------------------------------------------------------------


def manifest_bytes(fmt: str, rows: list[dict[str, str]]) -> bytes:
    if fmt == "csv":
        lines = ["path,caption"] + [f"{row['path']},{row['caption']}" for row in rows]
        return ("\n".join(lines) + "\n").encode()
    if fmt == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows).encode()
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["csv", "jsonl", "parquet"])
def test_a_manifest_object_as_the_source(s3_bucket: S3Bucket, fmt: str) -> None:
    bucket = s3_bucket.name
    s3_bucket.put_many({"sets/img/a.jpg": b"aaa", "elsewhere/b.png": b"bbbb", "sets/img/c.jpg": b"c"})
    rows = [
        {"path": "img/a.jpg", "caption": "a red circle"},
        {"path": f"s3://{bucket}/elsewhere/b.png", "caption": "a blue square"},
        {"path": "./img/missing.jpg", "caption": "gone"},
        {"path": "img/c.jpg", "caption": "a green star"},
    ]
    s3_bucket.put(f"sets/m.{fmt}", manifest_bytes(fmt, rows))
    source = S3ManifestSource(s3_bucket.uri(f"sets/m.{fmt}"), config=s3_bucket.config())
    source.check()

    entries = list(source.scan())

    assert source.root == f"s3://{bucket}/sets/"
    assert [(type(e).__name__, e.key) for e in entries] == [
        ("SourceItem", "img/a.jpg"),
        ("SourceItem", f"s3://{bucket}/elsewhere/b.png"),
        ("ScanProblem", "img/missing.jpg"),
        ("SourceItem", "img/c.jpg"),
    ]
    a, b, problem, c = entries
    assert isinstance(a, SourceItem) and isinstance(b, SourceItem) and isinstance(problem, ScanProblem)
    assert (a.uri, a.caption, a.size, a.version) == (
        f"s3://{bucket}/sets/img/a.jpg",
        "a red circle",
        3,
        hashlib.md5(b"aaa").hexdigest(),
    )
    assert (b.uri, b.caption) == (f"s3://{bucket}/elsewhere/b.png", "a blue square")
    assert "does not exist" in problem.error and problem.uri == f"s3://{bucket}/sets/img/missing.jpg"
    assert source.read(b) == b"bbbb"
    filtered = S3ManifestSource(
        s3_bucket.uri(f"sets/m.{fmt}"), scan_filter=ScanFilter(include=["img/*"]), config=s3_bucket.config()
    )
    assert [e.key for e in filtered.scan()] == ["img/a.jpg", "img/missing.jpg", "img/c.jpg"]


def test_a_caption_manifest_for_a_prefix(s3_bucket: S3Bucket, tmp_path: Path) -> None:
    bucket = s3_bucket.name
    s3_bucket.put_many(
        {"p/a.jpg": b"a", "p/sub/b.jpg": b"b", "p/c.jpg": b"c", "p/c.txt": b"from the sidecar"}
    )
    rows = [
        {"path": "a.jpg", "caption": "relative"},
        {"path": f"s3://{bucket}/p/sub/b.jpg", "caption": "a full uri"},
        {"path": "c.jpg", "caption": "the manifest wins over the sidecar"},
        {"path": f"s3://{bucket}/other/x.jpg", "caption": "not under the root: ignored"},
    ]
    s3_bucket.put("captions/all.parquet", manifest_bytes("parquet", rows))
    (tmp_path / "local.jsonl").write_bytes(manifest_bytes("jsonl", rows))
    root = f"s3://{bucket}/p/"
    config = s3_bucket.config()

    from_s3 = load_s3_caption_manifest(s3_bucket.uri("captions/all.parquet"), root, config=config)
    from_disk = load_s3_caption_manifest(str(tmp_path / "local.jsonl"), root, config=config)

    expected = {"a.jpg": "relative", "sub/b.jpg": "a full uri", "c.jpg": "the manifest wins over the sidecar"}
    assert from_s3 == from_disk == expected
    source = S3Source(root, captions=from_s3, config=config)
    assert {item.key: item.caption for item in items_of(source)} == expected
    with pytest.raises(SourceError, match="does not exist"):
        load_s3_caption_manifest(s3_bucket.uri("captions/nope.csv"), root, config=config)


# -- reading through faults -------------------------------------------------------------------------


def test_reads_return_exact_bytes_through_503s_drops_and_truncated_bodies(
    s3_bucket: S3Bucket, tmp_path: Path, faulty_proxy: ProxyFactory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="mmindex.s3")
    corpus = upload_corpus(s3_bucket, tmp_path / "corpus", prefix="f/", count=30)
    proxy = faulty_proxy(s3_bucket.endpoint, Faults(slow_down=0.3, drop=0.1, truncate=0.15, seed=7))
    source = S3Source(s3_bucket.uri("f/"), config=s3_bucket.config(proxy.endpoint))

    items = items_of(source)  # the listing goes through the same faults
    with ThreadPoolExecutor(source.fetch_concurrency) as pool:
        first = list(pool.map(source.read, items))
        second = list(pool.map(source.read, items))

    assert sorted(item.key for item in items) == sorted(corpus)
    for item, data_1, data_2 in zip(items, first, second, strict=True):
        assert sha(data_1) == sha(data_2) == sha(corpus[item.key].data)
    assert proxy.injected[SLOW_DOWN] > 0 and proxy.injected[DROP] > 0 and proxy.injected[TRUNCATE] > 0
    # botocore does not retry a body cut short; the source's own retry did
    assert any("body broke off" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        (SLOW_DOWN, "SlowDown (HTTP 503) after 3 attempts"),
        (DROP, "cannot reach the S3 endpoint"),
        (TRUNCATE, "broke off while reading the object 3 times"),
    ],
)
def test_an_object_that_always_fails_raises_fetch_error_in_bounded_time(
    s3_bucket: S3Bucket, faulty_proxy: ProxyFactory, fault: str, reason: str
) -> None:
    s3_bucket.put_many({"x/good.jpg": b"good bytes", "x/bad.jpg": b"bad bytes" * 100})
    bad_path = f"/{s3_bucket.name}/x/bad.jpg"
    proxy = faulty_proxy(s3_bucket.endpoint, Faults(always={bad_path: fault}))
    source = S3Source(s3_bucket.uri("x/"), config=s3_bucket.config(proxy.endpoint, max_attempts=3))
    by_key = {item.key: item for item in items_of(source)}
    good, bad = by_key["good.jpg"], by_key["bad.jpg"]

    with pytest.raises(FetchError) as failure:
        source.read(bad)

    assert reason in str(failure.value) and "\n" not in str(failure.value)
    assert failure.value.retryable
    assert proxy.count("GET", path=bad_path) == 3  # bounded: max_attempts, then a failure, not a hang
    assert source.read(good) == b"good bytes"


# -- check() and errors -----------------------------------------------------------------------------


@pytest.mark.timeout(120)  # check() must fail in seconds, even against a dead endpoint: never hang
def test_check_names_a_missing_bucket_an_empty_prefix_and_a_dead_endpoint(
    s3_bucket: S3Bucket, silent_port: int
) -> None:
    s3_bucket.put("photos/a.jpg", b"a")
    S3Source(s3_bucket.uri("photos"), config=s3_bucket.config()).check()

    def failure(location: str, config: S3Config) -> str:
        with pytest.raises(SourceError) as error:  # the test's timeout bounds it; check() has short ones
            S3Source(location, config=config).check()
        message = str(error.value)
        assert "\n" not in message and TEST_SECRET_KEY not in message
        return message

    assert "bucket 'no-such-bucket' does not exist" in failure("s3://no-such-bucket/x", s3_bucket.config())
    assert "no objects under" in failure(s3_bucket.uri("typo/"), s3_bucket.config())
    closed = S3Config(endpoint_url=f"http://127.0.0.1:{free_port()}")
    assert "cannot reach the S3 endpoint" in failure(s3_bucket.uri("photos"), closed)
    hung = S3Config(endpoint_url=f"http://127.0.0.1:{silent_port}", read_timeout=1.0, connect_timeout=1.0)
    assert "cannot reach the S3 endpoint" in failure(s3_bucket.uri("photos"), hung)
    with pytest.raises(SourceError, match="bucket 'no-such-bucket' does not exist"):
        list(S3Source("s3://no-such-bucket/", config=s3_bucket.config(max_attempts=1)).scan())


@pytest.mark.parametrize(
    ("profile", "expected"),
    [
        ("reader", None),
        ("unknown-key", "InvalidAccessKeyId"),
        ("wrong-secret", "SignatureDoesNotMatch"),
        ("nobody", "access denied"),
    ],
)
def test_check_reports_bad_credentials(
    s3_auth: AuthS3, monkeypatch: pytest.MonkeyPatch, profile: str, expected: str | None
) -> None:
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(s3_auth.credentials_file))
    config = S3Config(endpoint_url=s3_auth.endpoint, profile=profile)
    source = S3Source(f"s3://{s3_auth.bucket}/photos/", config=config)
    if expected is None:
        source.check()
        assert [item.key for item in items_of(source)] == ["a.jpg"]
        return
    with pytest.raises(SourceError) as error:
        source.check()
    message = str(error.value)
    assert expected in message and "\n" not in message
    assert not any(secret in message or secret in source.describe() for secret in s3_auth.secrets)


def test_describe_and_errors_never_show_credentials(s3_bucket: S3Bucket, faulty_proxy: ProxyFactory) -> None:
    s3_bucket.put("a/x.jpg", b"x")
    source = S3Source(s3_bucket.uri("a"), config=s3_bucket.config())
    assert (
        source.describe()
        == f"S3 prefix s3://{s3_bucket.name}/a/ (endpoint {s3_bucket.endpoint}, region us-east-1)"
    )
    proxy = faulty_proxy(s3_bucket.endpoint, Faults(always={f"/{s3_bucket.name}/a/x.jpg": SLOW_DOWN}))
    failing = S3Source(s3_bucket.uri("a"), config=s3_bucket.config(proxy.endpoint, max_attempts=1))
    (item,) = items_of(failing)
    with pytest.raises(FetchError) as error:
        failing.read(item)
    with_userinfo = S3Source(
        s3_bucket.uri("a"), config=S3Config(endpoint_url=f"http://user:{TEST_SECRET_KEY}@127.0.0.1:9")
    )
    for text in (source.describe(), failing.describe(), str(error.value), with_userinfo.describe()):
        assert TEST_SECRET_KEY not in text
    with pytest.raises(SourceError, match="AWS profile 'no-such-profile' is not configured"):
        S3Source(s3_bucket.uri("a"), config=S3Config(profile="no-such-profile"))


def test_config_from_settings_and_from_boto3s_own_environment(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings.from_env(
        {
            "MMINDEX_S3_ENDPOINT": "http://127.0.0.1:9000",
            "MMINDEX_S3_REGION": "eu-west-1",
            "MMINDEX_S3_PROFILE": "p",
        }
    )
    config = S3Config.from_settings(settings)
    assert (config.endpoint_url, config.region, config.profile) == ("http://127.0.0.1:9000", "eu-west-1", "p")
    assert S3Config.from_settings(Settings()) == S3Config()
    with pytest.raises(ConfigError, match="not an http"):
        S3Config(endpoint_url="127.0.0.1:9000")

    s3_bucket.put("e/x.jpg", b"x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint)  # boto3's own variable, no S3Config field
    source = S3Source(s3_bucket.uri("e"))
    source.check()
    assert source.fetch_concurrency == 16
    assert [item.key for item in items_of(source)] == ["x.jpg"]


# -- streaming --------------------------------------------------------------------------------------


def test_the_scan_streams_page_by_page(s3_bucket: S3Bucket, faulty_proxy: ProxyFactory) -> None:
    s3_bucket.put_many({f"many/{i // 100:02d}/{i:05d}.jpg": b"" for i in range(1000)}, threads=8)
    proxy = faulty_proxy(s3_bucket.endpoint)
    source = S3Source(s3_bucket.uri("many"), config=s3_bucket.config(proxy.endpoint))
    source.page_size = 200

    scan = source.scan()
    first = next(scan)
    assert isinstance(first, SourceItem) and first.key == "00/00000.jpg"
    assert proxy.list_requests(s3_bucket.name) == 1  # the other four pages are not fetched yet
    rest = list(scan)
    assert len(rest) == 999 and proxy.list_requests(s3_bucket.name) == 5


def test_a_listing_that_fails_mid_scan_raises_source_error(
    s3_bucket: S3Bucket, faulty_proxy: ProxyFactory
) -> None:
    s3_bucket.put_many({f"l/{i:03d}.jpg": b"" for i in range(30)})
    after_first_page = Faults(
        slow_down=1.0, max_in_a_row=None, applies=lambda m, p, q: "continuation-token" in q
    )
    proxy = faulty_proxy(s3_bucket.endpoint, after_first_page)
    source = S3Source(s3_bucket.uri("l"), config=s3_bucket.config(proxy.endpoint, max_attempts=2))
    source.page_size = 10

    seen = []
    with pytest.raises(SourceError, match="listing s3://.* failed: S3 answered SlowDown"):
        for entry in source.scan():
            seen.append(entry)
    assert 0 < len(seen) <= 10  # nothing is invented past the hole; a partial listing never looks whole


# -- LanceDB on the same endpoint -------------------------------------------------------------------


def test_lance_storage_options_open_a_database_on_the_same_endpoint(s3_bucket: S3Bucket) -> None:
    import lancedb

    options = lance_storage_options(s3_bucket.config())
    assert options["endpoint"] == s3_bucket.endpoint and options["allow_http"] == "true"
    assert options["region"] == "us-east-1" and options["aws_secret_access_key"] == TEST_SECRET_KEY
    assert "aws_session_token" not in options and options["client_max_retries"] == "3"

    db = lancedb.connect(s3_bucket.uri("db"), storage_options=options)
    db.create_table("t", pa.table({"id": ["a", "b"], "n": [1, 2]}))
    reopened = lancedb.connect(s3_bucket.uri("db"), storage_options=options).open_table("t")
    assert reopened.count_rows() == 2
    keys = {o["Key"] for o in s3_bucket.client.list_objects_v2(Bucket=s3_bucket.name)["Contents"]}
    assert any(key.startswith("db/t.lance/") for key in keys)


def test_modified_at_is_utc(s3_bucket: S3Bucket) -> None:
    s3_bucket.put("u/x.jpg", b"x")
    (item,) = items_of(S3Source(s3_bucket.uri("u"), config=s3_bucket.config()))
    assert item.modified_at is not None and item.modified_at.tzinfo == UTC
