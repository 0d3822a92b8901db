"""S3 listing and fetch figures against a local moto_server. Prints a table; not a test.

    .venv/bin/python bench/s3_listing.py [--images 16000] [--sidecars 4000] [--fetch-objects 256]

(a) The cost of an unchanged re-run's planning: S3Source.scan() (streamed listing, sidecar pairing,
    filters) plus a comparison of every item against a LanceDB table that already holds all of them
    (Store.load_state + IndexedState.status), versus a bare boto3 list_objects_v2 paginator over the
    same bucket that only counts keys. Target: ours <= 1.5x the bare listing. Each run happens in a fresh
    subprocess, so its peak RSS is its own; "RSS after imports" shows what the imports alone cost.
(b) Fetch throughput of S3Source.read with 1, 4, 16 and 32 threads (objects/s and MiB/s).

Everything runs on 127.0.0.1 (moto_server from this interpreter's bin/); uploading the listing bucket
takes about a minute on 2 cores. The server and the client share the machine's cores, so the fetch
figures measure the client's overhead and scaling, not a network.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from mmindex.store.writer import open_writer

BUCKET = "bench-listing"
MODEL = "bench/random-16d"
DIM = 16


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=16_000)
    parser.add_argument("--sidecars", type=int, default=4_000, help="how many images get a .txt sidecar")
    parser.add_argument("--fetch-objects", type=int, default=256)
    parser.add_argument("--fetch-kib", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--endpoint", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(CHILDREN[args.child](args.endpoint, args.db)))
        return
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench-secret",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_SESSION_TOKEN"):
        os.environ.pop(name, None)
    with tempfile.TemporaryDirectory(prefix="mmindex-s3-bench-") as workdir:
        server, endpoint = start_moto(Path(workdir) / "moto.log")
        try:
            run(args, endpoint, Path(workdir) / "db.lancedb")
        finally:
            server.terminate()
            server.wait(timeout=10)


def run(args: argparse.Namespace, endpoint: str, db: Path) -> None:
    keys = args.images + args.sidecars
    started = time.perf_counter()
    upload_listing_bucket(endpoint, args.images, args.sidecars)
    print(
        f"uploaded {keys:,} keys ({args.images:,} images, {args.sidecars:,} sidecars) "
        f"in {time.perf_counter() - started:.1f} s"
    )
    prepared = child("prepare", endpoint, db)
    print(f"table filled with {prepared['rows']:,} rows in {prepared['seconds']:.1f} s")

    runs: dict[str, list[dict[str, Any]]] = {"bare": [], "ours": []}
    for _ in range(args.repeats):  # interleaved, so drift in the machine's load hits both alike
        for name in runs:
            runs[name].append(child(name, endpoint, db))
    ours_statuses = runs["ours"][0]["statuses"]
    assert ours_statuses == {"unchanged": args.images}, ours_statuses

    print()
    print(f"(a) unchanged re-run over {keys:,} keys, median of {args.repeats} runs, each in a fresh process")
    print(f"{'':44} {'seconds':>8} {'keys/s':>9} {'peak RSS':>9} {'RSS after imports':>18}")
    for name, label in (
        ("bare", "bare boto3 paginator (count keys)"),
        ("ours", "S3Source.scan + load_state + status"),
    ):
        seconds = statistics.median(r["seconds"] for r in runs[name])
        peak = statistics.median(r["peak_rss_mib"] for r in runs[name])
        base = statistics.median(r["rss_after_imports_mib"] for r in runs[name])
        print(f"{label:44} {seconds:8.2f} {keys / seconds:9,.0f} {peak:7.0f} MiB {base:14.0f} MiB")
    ratio = statistics.median(r["seconds"] for r in runs["ours"]) / statistics.median(
        r["seconds"] for r in runs["bare"]
    )
    print(f"{'ratio ours / bare (target <= 1.5)':44} {ratio:8.2f}")
    load = statistics.median(r["load_state_seconds"] for r in runs["ours"])
    print(f"{'  of which Store.load_state()':44} {load:8.2f}")

    print()
    upload_fetch_objects(endpoint, args.fetch_objects, args.fetch_kib)
    print(f"(b) S3Source.read of {args.fetch_objects} objects of {args.fetch_kib} KiB")
    print(f"{'threads':>8} {'seconds':>8} {'objects/s':>10} {'MiB/s':>8}")
    for row in child("fetch", endpoint, db)["rows"]:
        print(
            f"{row['threads']:8} {row['seconds']:8.2f} {row['objects_per_s']:10.0f} {row['mib_per_s']:8.1f}"
        )


# -- children: one measurement each, in a fresh process ---------------------------------------------


def child(name: str, endpoint: str, db: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--child", name, "--endpoint", endpoint, "--db", str(db)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    return result


def child_prepare(endpoint: str, db: str) -> dict[str, Any]:
    """Fill a table with one row per listed image (right schema, random unit vectors, real fingerprints)."""
    import numpy as np
    import pyarrow as pa

    from mmindex.ingest.sources.base import SourceItem
    from mmindex.ingest.sources.s3 import S3Config, S3Source
    from mmindex.schema import images_schema
    from mmindex.store.reader import Store

    started = time.perf_counter()
    store = Store(db, "images")
    with open_writer(store) as writer:
        writer.prepare(MODEL, DIM)
    schema = images_schema(DIM, MODEL)
    source = S3Source(f"s3://{BUCKET}/", config=S3Config(endpoint_url=endpoint))
    rng = np.random.default_rng(0)
    batch: list[SourceItem] = []
    rows = 0
    table = store.lancedb_table()  # a bulk load beside the writer: this benchmark is its only user

    def flush() -> None:
        vectors = rng.normal(size=(len(batch), DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        columns: dict[str, Any] = {name: [None] * len(batch) for name in schema.names}
        columns.update(
            id=[i.id for i in batch],
            uri=[i.uri for i in batch],
            key=[i.key for i in batch],
            size=[i.size for i in batch],
            version=[i.version for i in batch],
            fingerprint=[i.fingerprint for i in batch],
            modified_at=[i.modified_at for i in batch],
            image_embedding=list(vectors),
            embed_model=[MODEL] * len(batch),
        )
        table.add(pa.Table.from_pydict(columns, schema=schema))
        batch.clear()

    for entry in source.scan():
        assert isinstance(entry, SourceItem), entry
        batch.append(entry)
        rows += 1
        if len(batch) >= 8192:
            flush()
    if batch:
        flush()
    table.optimize()
    return {"rows": rows, "seconds": time.perf_counter() - started}


def child_bare(endpoint: str, db: str) -> dict[str, Any]:
    import boto3

    base = rss_mib()
    started = time.perf_counter()
    client = boto3.client("s3", endpoint_url=endpoint)
    count = 0
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, PaginationConfig={"PageSize": 1000}
    ):
        count += len(page.get("Contents", ()))
    return measured(started, base, keys=count)


def child_ours(endpoint: str, db: str) -> dict[str, Any]:
    import lancedb  # noqa: F401 - Store imports it lazily; count it among the imports, not the work

    from mmindex.ingest.sources.base import SourceItem
    from mmindex.ingest.sources.s3 import S3Config, S3Source
    from mmindex.store.reader import Store

    base = rss_mib()
    started = time.perf_counter()
    state = Store(db, "images").load_state()
    loaded = time.perf_counter()
    source = S3Source(f"s3://{BUCKET}/", config=S3Config(endpoint_url=endpoint))
    statuses: Counter[str] = Counter()
    for entry in source.scan():
        assert isinstance(entry, SourceItem), entry
        statuses[state.status(entry.id, entry.fingerprint)] += 1
    return measured(started, base, statuses=dict(statuses), load_state_seconds=loaded - started)


def child_fetch(endpoint: str, db: str) -> dict[str, Any]:
    from mmindex.ingest.sources.base import SourceItem
    from mmindex.ingest.sources.s3 import S3Config, S3Source

    source = S3Source(f"s3://{BUCKET}-fetch/", config=S3Config(endpoint_url=endpoint, fetch_concurrency=32))
    items = [entry for entry in source.scan() if isinstance(entry, SourceItem)]
    total = sum(item.size for item in items)
    source.read(items[0])  # warm the connection pool
    rows = []
    for threads in (1, 4, 16, 32):
        started = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            sizes = list(pool.map(lambda item: len(source.read(item)), items))
        seconds = time.perf_counter() - started
        assert sum(sizes) == total
        rows.append(
            {
                "threads": threads,
                "seconds": seconds,
                "objects_per_s": len(items) / seconds,
                "mib_per_s": total / 2**20 / seconds,
            }
        )
    return {"rows": rows}


CHILDREN = {"prepare": child_prepare, "bare": child_bare, "ours": child_ours, "fetch": child_fetch}


def measured(started: float, base_mib: float, **extra: Any) -> dict[str, Any]:
    return {
        "seconds": time.perf_counter() - started,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_after_imports_mib": base_mib,
        **extra,
    }


def rss_mib() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- setup ------------------------------------------------------------------------------------------


def start_moto(log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(sys.executable).with_name("moto_server")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "moto.server"]
    log = open(log_path, "wb")  # noqa: SIM115 - lives as long as the server
    server = subprocess.Popen([*command, "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=2):
                return server, endpoint
        except OSError:
            time.sleep(0.05)
    server.kill()
    raise SystemExit(f"moto_server did not start on {endpoint}")


def setup_client(endpoint: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint, config=Config(max_pool_connections=32))


def upload(endpoint: str, bucket: str, objects: list[tuple[str, bytes]]) -> None:
    client = setup_client(endpoint)
    client.create_bucket(Bucket=bucket)
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda pair: client.put_object(Bucket=bucket, Key=pair[0], Body=pair[1]), objects))


def upload_listing_bucket(endpoint: str, images: int, sidecars: int) -> None:
    objects: list[tuple[str, bytes]] = []
    every, captioned = max(1, images // max(sidecars, 1)), 0
    for index in range(images):
        key = f"photos/{index // 1000:03d}/{index:06d}.jpg"
        objects.append((key, b"\xff\xd8\xff" + index.to_bytes(4, "big")))
        if index % every == 0 and captioned < sidecars:
            objects.append((key[:-4] + ".txt", f"caption {index}".encode()))
            captioned += 1
    upload(endpoint, BUCKET, objects)


def upload_fetch_objects(endpoint: str, count: int, kib: int) -> None:
    payload = os.urandom(kib * 1024)
    upload(
        endpoint, f"{BUCKET}-fetch", [(f"fetch/{i:05d}.jpg", payload[i:] + payload[:i]) for i in range(count)]
    )


if __name__ == "__main__":
    main()
