"""Search latency at scale: vector search alone, and text queries through a running `mmindex serve`.

    python bench/search_latency.py --rows 100000         # about 4 minutes on 2 cores
    python bench/search_latency.py --rows 1000000        # about 15 minutes

Builds a table of clustered synthetic 512-d rows (written with mmindex's schema, indexed by mmindex's
own upkeep, so the index type and query settings are the defaults), records the embedding model as a
randomly initialised CLIP with the ViT-B/32 configuration (the text tower's real cost), and reports:

- the text tower alone (`ClipEmbedder.embed_texts`): one query and eight at once, in fp32 and with
  the search server's int8 text tower (`speed_up_text_queries`), interleaved;
- index build seconds (`refresh_indices`: IVF_RQ by default);
- vector search p50/p95 in this process (`Searcher.vector`, k=10, exact cosine re-ranking) and its
  recall@10 against exact search;
- eight vector queries one by one vs in one multi-vector LanceDB query (`Searcher.vectors`, what
  the server does with concurrent queries), interleaved;
- text queries through two servers running side by side, `--text-int8 off` and `auto`: one client
  (queries alternate between the servers), p50/p95/p99 end to end (HTTP, tokenise, text tower,
  search, JSON), each query distinct so no cache helps; then 8 concurrent clients, rounds
  alternating between the servers: p50/p99 and the number of errors;
- 48 text queries from 8 threads through the server's `SearchService` in process (int8 text
  tower): wall time, the CPU work per query it implies, and the average batch;
- LanceDB's floor: one top-10 query over 1,000 unindexed rows;
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
from ann import Corpus, exact_topk, recall
from index_throughput import free_port, model_dir

from mmindex.query.search import Searcher
from mmindex.schema import images_schema
from mmindex.store.reader import Store
from mmindex.store.upkeep import refresh_indices
from mmindex.store.writer import open_writer

DIM = 512
WORDS = "red green blue yellow purple orange circle square triangle star photo of a the small large".split()
FILTERS = {"f5": "width < 105", "f1": "width < 101"}  # width = 100 + bucket: ~5% and ~1% of rows


def corpus() -> Corpus:
    """bench/ann.py's clustered, anisotropic vectors, so the query sets and recall mean the same."""
    return Corpus(DIM, clusters=1000, seed=0, gap=2.0, decay=0.8)  # ann.py's defaults


def write_rows(rows: int, model: str, table: object, batch: int = 50_000) -> None:
    """ann.py's image-like vectors with the images schema; `width` is 100 + a bucket in 0..99."""
    data, schema = corpus(), images_schema(DIM, model)
    buckets = np.random.default_rng(1).integers(0, 100, rows, dtype=np.int32)
    rng = np.random.default_rng(2)
    for start in range(0, rows, batch):
        n = min(batch, rows - start)
        vectors = data.images(np.random.default_rng([0, start]), n)
        # real tables' value mixes: Lance picks encodings, and so the cost of point reads, by them
        columns = {
            "id": [f"{i:032x}" for i in range(start, start + n)],
            "uri": [f"/corpus/images/{i % 977}/{i}.jpg" for i in range(start, start + n)],
            "key": [f"images/{i % 977}/{i}.jpg" for i in range(start, start + n)],
            "size": pa.array(rng.integers(20_000, 900_000, n), pa.int64()),
            "version": [str(1_700_000_000_000_000_000 + i) for i in range(start, start + n)],
            "fingerprint": pa.array(rng.integers(-(2**62), 2**62, n), pa.int64()),
            "modified_at": pa.array(
                1_700_000_000_000_000 + rng.integers(0, 10**13, n), pa.timestamp("us", tz="UTC")
            ),
            "sha256": [f"{value:064x}" for value in rng.integers(0, 2**62, n)],
            "width": pa.array(100 + buckets[start : start + n], pa.int32()),
            "height": pa.array(rng.integers(100, 2000, n), pa.int32()),
            "format": rng.choice(["JPEG", "PNG", "WEBP"], n, p=[0.8, 0.15, 0.05]).tolist(),
            "caption": [f"synthetic image {i}" for i in range(start, start + n)],
            "caption_source": rng.choice(["human", "generated"], n, p=[0.7, 0.3]).tolist(),
            "thumbnail": [b"\xff\xd8" + bytes(6000)] * n,  # the size of a real ~256 px preview
            "synthetic": pa.array(np.zeros(n, dtype=bool)),
            "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            "embed_model": [model] * n,
            "embed_mode": ["fp32 on cpu"] * n,
            "indexed_at": pa.array(np.full(n, 1_760_000_000_000_000), pa.timestamp("us", tz="UTC")),
        }
        data_ = {f.name: columns[f.name] if f.name in columns else pa.nulls(n, f.type) for f in schema}
        table.add(pa.Table.from_pydict(data_, schema=schema))  # type: ignore[attr-defined]


def built_store(db: Path, rows: int, model: str) -> Store:
    """The benchmark table in `db`, written and indexed by mmindex unless it already holds `rows` rows."""
    store = Store(str(db))
    if store.exists() and store.info().rows == rows:
        print(f"reusing the {rows}-row table in {db}")
        return store
    with open_writer(store) as writer:
        writer.prepare(model, DIM)
        started = time.perf_counter()
        write_rows(rows, model, writer.images)
        print(f"rows written: {rows} in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        actions = refresh_indices(writer)
        print(f"index build: {time.perf_counter() - started:.1f} s ({'; '.join(actions)})")
    return Store(str(db))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def query_text(n: int) -> str:
    rng = np.random.default_rng(n)
    return " ".join(rng.choice(WORDS, size=6)) + f" {n}"


def text_tower_ms(model: str) -> str:
    """Median ms of `embed_texts`, fp32 vs the int8 text tower, interleaved: one query, eight at once."""
    from mmindex.models.clip import ClipEmbedder

    fp32 = ClipEmbedder.load(model, device="cpu")
    int8 = ClipEmbedder.load(model, device="cpu")
    print(f"int8 text tower verdict: {int8.speed_up_text_queries([query_text(n) for n in range(64)])}")
    figures = []
    for batch in (1, 8):
        times: dict[str, list[float]] = {"fp32": [], "int8": []}
        for n in range(20):
            for name, embedder in (("fp32", fp32), ("int8", int8))[:: 1 if n % 2 else -1]:
                started = time.perf_counter()
                embedder.embed_texts([query_text(n * 8 + i) for i in range(batch)])
                times[name].append((time.perf_counter() - started) * 1000)
        fp32_ms, int8_ms = statistics.median(times["fp32"]), statistics.median(times["int8"])
        figures.append(
            f"{batch} text{'s' if batch > 1 else ''}: fp32 {fp32_ms:.0f} ms, int8 {int8_ms:.0f} ms"
        )
    return "; ".join(figures)


def batched_search_ms(searcher: Searcher, queries: np.ndarray) -> str:
    """Eight queries one by one vs in one multi-vector query, interleaved rounds (median ms per 8)."""
    times: dict[str, list[float]] = {"one by one": [], "one query": []}
    for round_ in range(0, len(queries) - 7, 8):
        group = list(queries[round_ : round_ + 8])
        for name in ("one by one", "one query")[:: 1 if round_ % 16 else -1]:
            started = time.perf_counter()
            if name == "one query":
                searcher.vectors(group, k=10)
            else:
                for query in group:
                    searcher.vector(query, k=10)
            times[name].append((time.perf_counter() - started) * 1000)
    alone, together = statistics.median(times["one by one"]), statistics.median(times["one query"])
    ratio = alone / together
    return f"8 vector queries: one by one {alone:.0f} ms, in one query {together:.0f} ms ({ratio:.1f}x)"


def in_process_concurrency(store: Store, clients: int = 8, per_client: int = 6) -> str:
    """Text queries from `clients` threads through `SearchService` (what `mmindex serve` runs)."""
    from mmindex.query.handle import ImageIndex
    from mmindex.server.app import Page, SearchService

    service = SearchService(ImageIndex(store, device="cpu"))
    service.warm("auto")

    def client(worker: int) -> None:
        for n in range(per_client):
            service.search(Page(k=10).request(text=query_text(500_000 + worker * 100 + n)))

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - started
    texts = service._text_searches
    return (
        f"{clients * per_client} queries from {clients} threads in process: {wall:.2f} s, "
        f"{wall * 1000 / (clients * per_client):.0f} ms of work per query; average batch: "
        f"{texts.items / texts.batches:.1f} text queries (one forward pass, one LanceDB query)"
    )


def lancedb_floor_ms(directory: Path) -> str:
    """Median ms of one top-10 LanceDB query over 1,000 unindexed 512-d rows."""
    import lancedb

    rng = np.random.default_rng(2)
    vectors = rng.normal(size=(1000, DIM)).astype(np.float32)
    table = lancedb.connect(str(directory)).create_table(
        "floor",
        pa.table(
            {
                "id": [str(i) for i in range(1000)],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), DIM),
            }
        ),
    )
    times = []
    for query in rng.normal(size=(50, DIM)).astype(np.float32):
        started = time.perf_counter()
        table.search(query).select(["id"]).limit(10).to_arrow()
        times.append((time.perf_counter() - started) * 1000)
    return f"LanceDB floor, top-10 over 1,000 unindexed rows: p50 {statistics.median(times):.1f} ms"


def lancedb_query(
    table: object, query: np.ndarray, settings: dict[str, int], where: str | None, columns: list[str]
) -> object:
    """LanceDB's own query for `columns` (and the distance it computes anyway: Lance warns on stderr
    for each query that leaves it out), with the probes and refine step mmindex chose."""
    search = table.search(query, vector_column_name="image_embedding").distance_type("cosine")  # type: ignore[attr-defined]
    if "nprobes" in settings:
        search = search.nprobes(settings["nprobes"])
    if "refine_factor" in settings:
        search = search.refine_factor(settings["refine_factor"])
    if where:
        search = search.where(where, prefilter=True)
    return search.select([*columns, "_distance"]).limit(10).to_arrow()


def vector_latency(store: Store, searcher: Searcher, count: int) -> str:
    """`Searcher.vector` (top-10, every small column, exact cosine scores) against LanceDB's lean
    query on the same table, interleaved, on ann.py's query sets: p50/p95 and recall@10 of each.
    LanceDB's queries run on a handle opened with its defaults (no version check per read)."""
    import lancedb

    table = lancedb.connect(store.db_uri).open_table(store.table_name)
    vectors = np.stack(
        table.search()
        .select(["image_embedding"])
        .limit(None)
        .to_arrow()["image_embedding"]
        .to_numpy(zero_copy_only=False)
    )
    widths = table.search().select(["width"]).limit(None).to_arrow()["width"].to_numpy()
    ids = np.asarray(table.search().select(["id"]).limit(None).to_arrow()["id"].to_pylist())
    rng = np.random.default_rng(7)
    data = corpus()
    image_like, text_like = data.images(rng, count), data.texts(rng, count)
    sets = {"in": (image_like, None), "ood": (text_like, None)}
    sets |= {name: (image_like, where) for name, where in FILTERS.items()}
    truth = {"in": exact_topk(vectors, image_like), "ood": exact_topk(vectors, text_like)}
    for name, where in FILTERS.items():
        truth[name] = exact_topk(vectors, image_like, np.flatnonzero(widths < int(where.split("<")[1])))
    del vectors
    settings = searcher.facts().query_settings("image_embedding", filtered=False)
    filtered_settings = searcher.facts().query_settings("image_embedding", filtered=True)
    hit_columns = searcher.facts().result_columns()
    lines = [
        f"vector top-10 in process, {table.count_rows()} rows; mmindex settings {settings}, "
        f"filtered {filtered_settings}:"
    ]
    for name, (queries, where) in sets.items():
        who_all = ("mmindex", "lancedb", "lancedb, hit columns")
        times: dict[str, list[float]] = {who: [] for who in who_all}
        found: dict[str, list[np.ndarray]] = {who: [] for who in who_all}
        chosen = filtered_settings if where else settings
        for n, query in enumerate(queries):
            for who in who_all[:: 1 if n % 2 else -1]:
                started = time.perf_counter()
                if who == "mmindex":
                    got = [hit.id for hit in searcher.vector(query, k=10, where=where)]
                else:
                    columns = ["id"] if who == "lancedb" else hit_columns
                    got = lancedb_query(table, query, chosen, where, columns)["id"].to_pylist()  # type: ignore[index]
                times[who].append((time.perf_counter() - started) * 1000)
                found[who].append(np.asarray([int(row_id, 16) for row_id in got]))
        expected = np.asarray([[int(ids[i], 16) for i in row] for row in truth[name]])
        ours, theirs = times["mmindex"], times["lancedb"]
        lines.append(
            f"  {name:>3}: mmindex p50 {percentile(ours, 0.5):.1f} ms, p95 {percentile(ours, 0.95):.1f} ms, "
            f"recall@10 {recall(found['mmindex'], expected):.3f} | LanceDB lean p50 "
            f"{percentile(theirs, 0.5):.1f} ms, p95 {percentile(theirs, 0.95):.1f} ms, recall@10 "
            f"{recall(found['lancedb'], expected):.3f} | ratio of p50s "
            f"{percentile(ours, 0.5) / percentile(theirs, 0.5):.2f} | LanceDB with the hit's columns "
            f"p50 {percentile(times['lancedb, hit columns'], 0.5):.1f} ms"
        )
    return "\n".join(lines)


def start_server(db_uri: str, extra: list[str]) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mmindex.cli", "serve", "--db", db_uri, "--port", str(port), *extra],
        env={**os.environ, "MMINDEX_DEVICE": "cpu"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return server, f"http://127.0.0.1:{port}"


def wait_until_up(base: str) -> None:
    deadline = time.monotonic() + 300
    while True:
        try:
            timed_get(base + "/healthz")
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def concurrent_round(url: str, clients: int, per_client: int, first: int) -> tuple[list[float], int]:
    """`clients` threads each sending `per_client` distinct queries; (latencies, errors)."""
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(worker: int) -> None:
        nonlocal errors
        for n in range(per_client):
            try:
                elapsed = timed_get(url + urllib.parse.quote(query_text(first + worker * 1000 + n)))
                with lock:
                    latencies.append(elapsed)
            except OSError:
                with lock:
                    errors += 1

    threads = [threading.Thread(target=client, args=(w,)) for w in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return latencies, errors


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
    parser.add_argument("--vector-only", action="store_true", help="stop after the in-process vector figures")
    parser.add_argument("--db", type=Path, help="keep the table here and reuse it when it has --rows rows")
    args = parser.parse_args()
    model = str(model_dir())
    if not args.vector_only:
        print(f"text tower alone: {text_tower_ms(model)}")
    with tempfile.TemporaryDirectory() as tmp:
        store = built_store(args.db or Path(tmp) / "db", args.rows, model)
        searcher = Searcher(store, embedder=None)  # vector queries need no model
        print(f"constant hit columns, not read per query: {searcher.learn_facts().constants}")
        print(vector_latency(store, searcher, args.queries))
        if args.rows <= 200_000:  # exact pairwise work grows with the square of the rows
            from mmindex.query.handle import ImageIndex

            started = time.perf_counter()
            groups = ImageIndex(store).duplicates(threshold=0.97)
            print(f"duplicates(0.97): {len(groups)} groups in {time.perf_counter() - started:.1f} s")

        if args.vector_only:
            return
        print(batched_search_ms(searcher, corpus().images(np.random.default_rng(3), 64)))
        print(lancedb_floor_ms(Path(tmp) / "floor"))
        print(in_process_concurrency(store))
        servers = {
            "--text-int8 off": start_server(store.db_uri, ["--text-int8", "off"]),
            "--text-int8 auto": start_server(store.db_uri, ["--text-int8", "auto"]),
        }
        try:
            for _, base in servers.values():
                wait_until_up(base)
            urls = {name: base + "/api/search?k=10&q=" for name, (_, base) in servers.items()}
            for url in urls.values():
                for n in range(10):
                    timed_get(url + urllib.parse.quote(query_text(900_000 + n)))  # warm-up
            one: dict[str, list[float]] = {name: [] for name in urls}
            for n in range(args.queries):
                for name in list(urls)[:: 1 if n % 2 else -1]:
                    one[name].append(timed_get(urls[name] + urllib.parse.quote(query_text(n))))
            many: dict[str, list[float]] = {name: [] for name in urls}
            errors = dict.fromkeys(urls, 0)
            rounds = 4
            for round_ in range(rounds):
                for name in list(urls)[:: 1 if round_ % 2 else -1]:
                    latencies, failed = concurrent_round(
                        urls[name], 8, max(1, args.queries // 8 // rounds), 10_000 + round_ * 100_000
                    )
                    many[name] += latencies
                    errors[name] += failed
            for name in urls:
                print(
                    f"text query via server ({name}), 1 client: p50 {percentile(one[name], 0.5):.1f} ms, "
                    f"p95 {percentile(one[name], 0.95):.1f} ms, p99 {percentile(one[name], 0.99):.1f} ms; "
                    f"8 clients: p50 {percentile(many[name], 0.5):.1f} ms, "
                    f"p99 {percentile(many[name], 0.99):.1f} ms, errors {errors[name]}"
                )
        finally:
            for server, _ in servers.values():
                server.terminate()
                server.wait(timeout=30)


if __name__ == "__main__":
    main()
