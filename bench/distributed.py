"""What decides how a sharded run scales, measured on one small machine.

    python bench/distributed.py [--shard-size 2000] [--listed 10000000] [--shards-per-commit 1000]

1. Dispatch: a Ray actor is sent real shards (`--shard-size` SourceItems) and returns results of the
   real size (the fragment metadata a worker returns, every done id); the round trip per shard,
   one shard at a time (latency) and four in flight (what an actor pool sees).
2. Bytes shipped per image, driver to worker (the pickled shard) and back (the pickled result).
3. Commit: a group of `--shards-per-commit` shards whose rows were staged with `write_fragments`
   (rows of the real schema: 512-d image and text embeddings, an 8 KB thumbnail) committed as one
   Append by the run's Committer, timed; and the commit of one shard's rows on its own.
4. Planning: the driver's peak memory and rate while `plan()` and `cut_shards()` go over `--listed`
   simulated listed items against an empty table (a fresh process, VmHWM before and after).

Shard processing time, the denominator of the overhead shares, is `--shard-size` images at a stated
rate: clip-retrieval's published ~2,500 img/s per A100 for ViT-B/32 (resize-bound), and the rate
this machine's CPU reaches with the toy model. Figures are ratios within this run.
"""

from __future__ import annotations

import argparse
import json
import pickle
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa

from mmindex.store.writer import open_writer

A100_IMAGES_PER_SECOND = 2500
DIM = 512
THUMBNAIL_BYTES = 8 * 1024

PLANNER = r"""
import sys, time
from datetime import datetime, UTC
from mmindex.distributed.shards import cut_shards
from mmindex.ingest.plan import plan
from mmindex.ingest.sources.base import SourceItem
from mmindex.report import RunReport
from mmindex.store.state import IndexedState
listed, size = int(sys.argv[1]), int(sys.argv[2])
def high_water_kb():  # VmHWM is this process's own (ru_maxrss would inherit the parent's at fork)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
now = datetime.now(UTC)
def listing():
    for i in range(listed):
        uri = f"s3://bucket/shard-{i // 10000:05d}/{i:09d}.jpg"
        yield SourceItem(uri, f"{i:09d}.jpg", 120_000, f"etag{i}", now)
before = high_water_kb()
start = time.perf_counter()
shards = 0
for shard in cut_shards(plan(listing(), IndexedState.empty(), RunReport()), IndexedState.empty(), size):
    shards += 1
seconds = time.perf_counter() - start
after = high_water_kb()
print(f"{shards} {seconds} {before} {after}")
"""


def shard_of(size: int, offset: int = 0):  # noqa: ANN201 - bench helper
    from mmindex.distributed.shards import Shard
    from mmindex.ingest.sources.base import SourceItem

    now = datetime.now(UTC)
    items = tuple(
        SourceItem(
            f"s3://bucket/shard-00012/{offset + i:09d}.jpg", f"{offset + i:09d}.jpg", 120_000, f"e{i}", now
        )
        for i in range(size)
    )
    return Shard.of(items, frozenset())


def rows_for(shard, schema: pa.Schema) -> pa.Table:  # noqa: ANN001
    from mmindex.store.writer import conform_rows

    n = len(shard.items)
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM)
    rows = pa.table(
        {
            "id": [item.id for item in shard.items],
            "uri": [item.uri for item in shard.items],
            "key": [item.key for item in shard.items],
            "fingerprint": pa.array([item.fingerprint for item in shard.items], pa.int64()),
            "caption": [f"a photograph number {i}" for i in range(n)],
            "thumbnail": pa.array([rng.bytes(THUMBNAIL_BYTES) for _ in range(n)], pa.binary()),
            "image_embedding": embedding,
            "text_embedding": embedding,
        }
    )
    return conform_rows(rows, schema)


def make_table(root: Path):  # noqa: ANN201
    from mmindex.store.reader import Store

    store = Store(str(root / "db"))
    with open_writer(store) as writer:
        writer.prepare("bench-model", DIM)
    return store


def stage(store, shard, rows: pa.Table):  # noqa: ANN001, ANN201
    from lance.fragment import write_fragments

    from mmindex.distributed.worker import ShardResult, table_uri

    uri = table_uri(store.db_uri, store.table_name)
    fragments = write_fragments(rows, uri, schema=rows.schema)
    return ShardResult(
        shard.id, "a", [item.id for item in shard.items], [], [f.to_json() for f in fragments], rows.num_rows
    )


def measure_dispatch(shard, result, rounds: int) -> dict[str, float]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="error", object_store_memory=300 * 1024**2)

    @ray.remote
    class Echo:
        def __init__(self, result) -> None:  # noqa: ANN001
            self.result = result

        def run(self, shard):  # noqa: ANN001, ANN202
            assert shard.count == len(self.result.done_ids)
            return self.result

    actor = Echo.remote(result)
    ray.get(actor.run.remote(shard))  # warm
    latencies = []
    for _ in range(rounds):
        start = time.perf_counter()
        ray.get(actor.run.remote(shard))
        latencies.append(time.perf_counter() - start)
    start = time.perf_counter()
    pending = [actor.run.remote(shard) for _ in range(4)]
    done = 0
    while done < rounds:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready[0])
        done += 1
        pending.append(actor.run.remote(shard))
    ray.get(pending)
    pipelined = (time.perf_counter() - start) / (done + len(pending))
    ray.shutdown()
    return {"latency_s": statistics.median(latencies), "pipelined_s": pipelined}


def measure_commits(root: Path, shard_size: int, shards_per_commit: int) -> dict[str, float]:
    from mmindex.distributed.commit import Committer

    store = make_table(root)
    schema = store.lancedb_table().schema
    import lance

    schema = lance.dataset(f"{store.db_uri}/{store.table_name}.lance").schema
    one = shard_of(shard_size, 10**8)
    single = [(one, stage(store, one, rows_for(one, schema)))]
    small_rows = 4  # commit cost depends on fragments, not rows: small shards keep the bench quick
    group = []
    start = time.perf_counter()
    for i in range(shards_per_commit):
        shard = shard_of(small_rows, i * small_rows)
        group.append((shard, stage(store, shard, rows_for(shard, schema))))
    staging = time.perf_counter() - start
    with open_writer(store) as writer:
        committer = Committer(writer, "bench")
        start = time.perf_counter()
        committer.commit(single, 0)
        one_shard = time.perf_counter() - start
        start = time.perf_counter()
        committer.commit(group, 1)
        many = time.perf_counter() - start
    rows = store.lancedb_table().count_rows()
    assert rows == shard_size + shards_per_commit * small_rows, rows
    return {"one_shard_commit_s": one_shard, "group_commit_s": many, "staging_s": staging}


def toy_rate(root: Path) -> float:
    """Images/s of a local `mmindex index` with the toy model on this CPU (for a second denominator)."""
    import mmindex
    from mmindex.toy.shapes import write_corpus

    corpus = root / "toy"
    write_corpus(corpus, 200, seed=1)
    report = mmindex.index(str(corpus), db=str(root / "toy-db"), model="toy-clip", progress=False)
    return float(report.items_per_second)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--listed", type=int, default=10_000_000)
    parser.add_argument("--shards-per-commit", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        store = make_table(root / "dispatch")
        import lance

        schema = lance.dataset(f"{store.db_uri}/{store.table_name}.lance").schema
        shard = shard_of(args.shard_size)
        result = stage(store, shard, rows_for(shard, schema))
        to_worker = len(pickle.dumps(shard)) / args.shard_size
        to_driver = len(pickle.dumps(result)) / args.shard_size
        dispatch = measure_dispatch(shard, result, args.rounds)
        commits = measure_commits(root / "commit", args.shard_size, args.shards_per_commit)
        toy = toy_rate(root)
    planned = subprocess.run(
        [sys.executable, "-c", PLANNER, str(args.listed), str(args.shard_size)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    shards, plan_seconds, rss_before, rss_after = (
        int(planned[0]),
        float(planned[1]),
        int(planned[2]),
        int(planned[3]),
    )
    gpu_shard_s = args.shard_size / A100_IMAGES_PER_SECOND
    toy_shard_s = args.shard_size / toy
    per_shard_overhead = dispatch["pipelined_s"] + commits["group_commit_s"] / args.shards_per_commit
    figures = {
        "cpu": _cpu(),
        "shard_size": args.shard_size,
        "bytes_per_image_to_worker": round(to_worker, 1),
        "bytes_per_image_to_driver": round(to_driver, 1),
        "dispatch_latency_ms": round(dispatch["latency_s"] * 1000, 2),
        "dispatch_pipelined_ms": round(dispatch["pipelined_s"] * 1000, 2),
        "commit_one_shard_ms": round(commits["one_shard_commit_s"] * 1000, 1),
        "commit_group_s": round(commits["group_commit_s"], 3),
        "commit_group_shards": args.shards_per_commit,
        "overhead_share_at_a100_rate": round(per_shard_overhead / gpu_shard_s, 4),
        "overhead_share_at_toy_cpu_rate": round(per_shard_overhead / toy_shard_s, 5),
        "toy_cpu_images_per_second": round(toy, 1),
        "planned_items": args.listed,
        "planned_shards": shards,
        "plan_items_per_second": round(args.listed / plan_seconds),
        "plan_peak_rss_growth_mb": round((rss_after - rss_before) / 1024, 1),
        "plan_peak_rss_mb": round(rss_after / 1024, 1),
    }
    print(json.dumps(figures, indent=2))


def _cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown"


if __name__ == "__main__":
    main()
