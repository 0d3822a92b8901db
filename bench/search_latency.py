"""Search latency at scale: vector search alone, and text queries through a running `mmindex serve`.

    python bench/search_latency.py --rows 100000         # about 4 minutes on 2 cores
    python bench/search_latency.py --rows 1000000        # about 15 minutes

Builds a table of clustered synthetic 512-d rows (written with mmindex's schema, indexed by mmindex's
own upkeep, so the index type and query settings are the defaults), records the embedding model as a
randomly initialised CLIP with the ViT-B/32 configuration (the text tower's real cost), and reports:

- the text tower alone (`ClipEmbedder.embed_texts`): one query, eight at once, one with int8;
- index build seconds (`refresh_indices`: IVF_RQ by default);
- vector search p50/p95 in this process (`Searcher.vector`, k=10, exact cosine re-ranking) and its
  recall@10 against exact search;
- text queries through the server, one client: p50/p95/p99 end to end (HTTP, tokenise, text
  tower, search, JSON), each query distinct so no cache helps;
- the same with 8 concurrent clients: p50/p99 and the number of errors;
- near-duplicate grouping (`duplicates(threshold=0.97)`) seconds, up to 200,000 rows.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pyarrow as pa
from index_throughput import free_port, model_dir

from mmindex.query.search import Searcher
from mmindex.schema import images_schema
from mmindex.store.reader import Store
from mmindex.store.upkeep import refresh_indices

DIM = 512
WORDS = "red green blue yellow purple orange circle square triangle star photo of a the small large".split()


def synthetic_rows(rows: int, model: str, table: object, batch: int = 50_000) -> None:
    """Clustered unit vectors (1,000 clusters), appended in batches with the images schema."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(1000, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    schema = images_schema(DIM, model)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        vectors = centres[rng.integers(0, 1000, n)] + rng.normal(scale=0.06, size=(n, DIM)).astype(np.float32)
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        ids = [f"{i:032x}" for i in range(start, start + n)]
        columns = {
            "id": ids,
            "uri": [f"/synthetic/{i}.jpg" for i in range(start, start + n)],
            "key": [f"{i}.jpg" for i in range(start, start + n)],
            "width": pa.array(rng.integers(100, 2000, n), pa.int32()),
            "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
        }
        data = {f.name: columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema}
        table.add(pa.Table.from_pydict(data, schema=schema))  # type: ignore[attr-defined]


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def query_text(n: int) -> str:
    rng = np.random.default_rng(n)
    return " ".join(rng.choice(WORDS, size=6)) + f" {n}"


def text_tower_ms(model: str) -> str:
    """Median ms of `embed_texts` alone: one short query, eight at once, and one with int8."""
    from mmindex.models.clip import ClipEmbedder

    figures = []
    for quantize, batch in ((None, 1), (None, 8), ("int8", 1)):
        embedder = ClipEmbedder.load(model, device="cpu", quantize=quantize)
        embedder.embed_texts(["warm up"] * batch)
        times = []
        for n in range(20):
            started = time.perf_counter()
            embedder.embed_texts([query_text(n * 8 + i) for i in range(batch)])
            times.append((time.perf_counter() - started) * 1000)
        figures.append(
            f"{batch} text{'s' if batch > 1 else ''} {quantize or 'fp32'} {statistics.median(times):.0f} ms"
        )
    return ", ".join(figures)


def timed_get(url: str) -> float:
    started = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as response:
        response.read()
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quantize", default=None, help="passed to mmindex serve (int8)")
    args = parser.parse_args()
    model = str(model_dir())
    print(f"text tower alone: {text_tower_ms(model)}")
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(str(Path(tmp) / "db"))
        with store.open_writer() as writer:
            writer.prepare(model, DIM)
            started = time.perf_counter()
            synthetic_rows(args.rows, model, writer.images)
            print(f"rows written: {args.rows} in {time.perf_counter() - started:.1f} s")
            started = time.perf_counter()
            actions = refresh_indices(writer)
            print(f"index build: {time.perf_counter() - started:.1f} s ({'; '.join(actions)})")

        table = store.lancedb_table()
        vectors = np.stack(
            table.search()
            .select(["image_embedding"])
            .limit(None)
            .to_arrow()["image_embedding"]
            .to_numpy(zero_copy_only=False)
        )
        rng = np.random.default_rng(1)
        queries = vectors[rng.integers(0, len(vectors), args.queries)] + rng.normal(
            scale=0.06, size=(args.queries, DIM)
        )
        queries = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
        ids = np.asarray(table.search().select(["id"]).limit(None).to_arrow()["id"].to_pylist())
        searcher = Searcher(store, embedder=None)  # vector queries need no model
        latencies, recalls = [], []
        for query in queries:
            started = time.perf_counter()
            hits = searcher.vector(query, k=10)
            latencies.append((time.perf_counter() - started) * 1000)
            exact = set(ids[np.argsort(-(vectors @ query))[:10]])
            recalls.append(len(exact & {hit.id for hit in hits}) / 10)
        print(
            f"vector search: p50 {percentile(latencies, 0.5):.2f} ms, "
            f"p95 {percentile(latencies, 0.95):.2f} ms, recall@10 {statistics.mean(recalls):.3f}"
        )
        del vectors
        if args.rows <= 200_000:  # exact pairwise work grows with the square of the rows
            from mmindex.query.handle import ImageIndex

            started = time.perf_counter()
            groups = ImageIndex(store).duplicates(threshold=0.97)
            print(f"duplicates(0.97): {len(groups)} groups in {time.perf_counter() - started:.1f} s")

        port = free_port()
        env = {**os.environ, "MMINDEX_DEVICE": "cpu"}
        server = subprocess.Popen(
            [sys.executable, "-m", "mmindex.cli", "serve", "--db", store.db_uri, "--port", str(port)]
            + (["--quantize", args.quantize] if args.quantize else []),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    timed_get(base + "/healthz")
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.5)
            url = base + "/api/search?k=10&q="
            for n in range(10):
                timed_get(url + urllib.parse.quote(query_text(900_000 + n)))  # warm-up
            one = [timed_get(url + urllib.parse.quote(query_text(n))) for n in range(args.queries)]
            print(
                f"text query via server, 1 client: p50 {percentile(one, 0.5):.1f} ms, "
                f"p95 {percentile(one, 0.95):.1f} ms, p99 {percentile(one, 0.99):.1f} ms"
            )
            many: list[float] = []
            errors = 0
            lock = threading.Lock()

            def client(worker: int) -> None:
                nonlocal errors
                for n in range(args.queries // 8):
                    try:
                        elapsed = timed_get(url + urllib.parse.quote(query_text(10_000 + worker * 1000 + n)))
                        with lock:
                            many.append(elapsed)
                    except OSError:
                        with lock:
                            errors += 1

            threads = [threading.Thread(target=client, args=(w,)) for w in range(8)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            print(
                f"text query via server, 8 clients: p50 {percentile(many, 0.5):.1f} ms, "
                f"p99 {percentile(many, 0.99):.1f} ms, errors {errors}"
            )
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
