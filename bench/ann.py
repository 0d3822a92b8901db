"""LanceDB vector index types on clustered synthetic 512-d data: build cost, recall@10 and latency.

    nice -n 10 .venv/bin/python bench/ann.py --rows 100000 --queries 200 --out bench/results
    nice -n 10 .venv/bin/python bench/ann.py --rows 1000000 --indexes hnsw_sq:default rq4:sqrt \\
        --ef 40 80 --nprobes 20 40 --refine none 10

What it measures, for each row count:

* data: L2-normalised float32 vectors from ~1000 Gaussian clusters of uneven size and spread, in an
  anisotropic space (decaying spectrum, so the intrinsic dimension is well below 512 and the nearest
  neighbours are not trivially the cluster members), streamed in batches into a LanceDB table in a
  temp dir, with an int `bucket` column (100 values) for filtered search (BTree index on it);
* query sets: `in` (new points from the same clusters, "image-like"), `ood` ("text-like": cluster
  centre + a large fixed common offset + noise, so that a query's cosine to its best match is only
  ~0.3, as across CLIP's modality gap), `f5` / `f1` (the `in` queries with `where bucket < 5` /
  `bucket < 1`, prefilter=True, ~5% and ~1% of rows);
* ground truth: exact cosine top-10 by chunked numpy matmul; LanceDB's own exact search
  (`bypass_vector_index()`) latency as the baseline;
* LanceDB indexes (`create_index(config=...)`, distance_type="cosine"): IVF_HNSW_SQ, IVF_RQ
  (num_bits 1/4), IVF_PQ, with partition counts from the library default, sqrt(n) or n/4096; per
  index the build seconds, size on disk, and for a grid of nprobes / ef / refine_factor: recall@10
  against the exact top-10, p50/p95 latency of one query at a time
  (`.limit(10).select(["id", "_distance"]).to_arrow()`), queries that came back with fewer than k
  rows although >= k rows match, and how far `_distance` is from the true cosine distance;
* FAISS anchor: IndexHNSWFlat M=32 inner product, one search thread, efSearch grid, filtered sets
  through an IDSelectorBitmap.

Latency settings of one index are measured in rounds whose order alternates, and p50/p95 pool all
rounds, so drift of a shared machine hits every setting alike. Results for each row count are merged
into OUT/ann.json and OUT/ann.md (a rerun replaces that row count's section).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
from lancedb.index import BTree, IvfHnswSq, IvfPq, IvfRq

K = 10
DIM = 512
FILTERS = {"f5": "bucket < 5", "f1": "bucket < 1"}
QUERY_SETS = ("in", "ood", "f5", "f1")
TARGET_RECALL = 0.95


# ----------------------------------------------------------------------------------------------- data


class Corpus:
    """Clustered, anisotropic, normalised vectors; image-like points and text-like (offset) queries."""

    def __init__(self, dim: int, clusters: int, seed: int, gap: float, decay: float) -> None:
        rng = np.random.default_rng(seed)
        basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
        spectrum = np.arange(1, dim + 1) ** (-decay / 2)
        spectrum /= np.sqrt((spectrum**2).sum())  # E|g @ mix|^2 == 1
        self.mix = (spectrum[:, None] * basis.T).astype(np.float32)
        self.dim, self.clusters, self.gap = dim, clusters, gap
        self.centres = normalise(rng.standard_normal((clusters, dim)).astype(np.float32) @ self.mix)
        self.spread = rng.uniform(0.6, 1.1, clusters).astype(np.float32)
        weights = rng.lognormal(0.0, 1.0, clusters)
        self.weights = weights / weights.sum()
        self.offset = normalise(rng.standard_normal((1, dim)).astype(np.float32))[0]

    def images(self, rng: np.random.Generator, n: int) -> np.ndarray:
        labels = rng.choice(self.clusters, n, p=self.weights)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) @ self.mix
        return normalise(self.centres[labels] + self.spread[labels, None] * noise)

    def texts(self, rng: np.random.Generator, n: int, noise_scale: float = 0.5) -> np.ndarray:
        labels = rng.choice(self.clusters, n, p=self.weights)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) @ self.mix
        return normalise(self.centres[labels] + self.gap * self.offset + noise_scale * noise)


def normalise(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def write_table(
    db: Any, corpus: Corpus, rows: int, seed: int, batch: int = 50_000
) -> tuple[Any, np.ndarray, np.ndarray]:
    """Stream batches into a LanceDB table; keep one float32 copy (for ground truth and FAISS)."""
    vectors = np.empty((rows, corpus.dim), dtype=np.float32)
    buckets = np.random.default_rng(seed + 1).integers(0, 100, rows, dtype=np.int32)
    schema = pa.schema(
        [("id", pa.int64()), ("bucket", pa.int32()), ("vector", pa.list_(pa.float32(), corpus.dim))]
    )

    def batches() -> Any:
        for start in range(0, rows, batch):
            stop = min(rows, start + batch)
            block = corpus.images(np.random.default_rng([seed, start]), stop - start)
            vectors[start:stop] = block
            flat = pa.FixedSizeListArray.from_arrays(pa.array(block.ravel()), corpus.dim)
            ids = pa.array(np.arange(start, stop, dtype=np.int64))
            yield pa.RecordBatch.from_arrays([ids, pa.array(buckets[start:stop]), flat], schema=schema)

    table = db.create_table("vectors", data=pa.RecordBatchReader.from_batches(schema, batches()))
    table.create_index("bucket", config=BTree())
    return table, vectors, buckets


# ------------------------------------------------------------------------------------- ground truth


def exact_topk(
    vectors: np.ndarray, queries: np.ndarray, rows: np.ndarray | None = None, chunk: int = 100_000
) -> np.ndarray:
    """Exact cosine top-K ids (vectors are normalised, so inner product), optionally among `rows`."""
    base = vectors if rows is None else vectors[rows]
    best_s = np.full((len(queries), 0), -np.inf, dtype=np.float32)
    best_i = np.empty((len(queries), 0), dtype=np.int64)
    for start in range(0, len(base), chunk):
        scores = queries @ base[start : start + chunk].T
        top = np.argpartition(-scores, min(K, scores.shape[1] - 1), axis=1)[:, :K]
        best_s = np.concatenate([best_s, np.take_along_axis(scores, top, 1)], axis=1)
        best_i = np.concatenate([best_i, top + start], axis=1)
        keep = np.argsort(-best_s, axis=1)[:, :K]
        best_s, best_i = np.take_along_axis(best_s, keep, 1), np.take_along_axis(best_i, keep, 1)
    return best_i if rows is None else rows[best_i]


def neighbour_cosines(vectors: np.ndarray, queries: np.ndarray, ids: np.ndarray) -> str:
    """Mean cosine of the exact 1st and 10th neighbour: how far apart the candidates are."""
    scores = np.einsum("qkd,qd->qk", vectors[ids], queries)
    return f"{scores[:, 0].mean():.3f} / {scores[:, K - 1].mean():.3f}"


def recall(found: list[np.ndarray], truth: np.ndarray) -> float:
    return float(
        np.mean([len(set(f.tolist()) & set(t.tolist())) / K for f, t in zip(found, truth, strict=True)])
    )


# ---------------------------------------------------------------------------------- lancedb indexes


@dataclass(frozen=True)
class IndexSpec:
    kind: str  # hnsw_sq, rq<bits>, pq<sub_vectors>
    partitions: str  # default, sqrt, r4096 (n / 4096 rows per partition) or a number

    @property
    def name(self) -> str:
        return f"{self.kind}:{self.partitions}"

    def num_partitions(self, rows: int) -> int | None:
        if self.partitions == "default":
            return None
        if self.partitions == "sqrt":
            return max(1, round(math.sqrt(rows)))
        if self.partitions == "r4096":
            return max(1, round(rows / 4096))
        return int(self.partitions)

    def config(self, rows: int) -> Any:
        parts = self.num_partitions(rows)
        if self.kind == "hnsw_sq":
            return IvfHnswSq(distance_type="cosine", num_partitions=parts)
        if self.kind.startswith("rq"):
            return IvfRq(distance_type="cosine", num_partitions=parts, num_bits=int(self.kind[2:]))
        if self.kind.startswith("pq"):
            return IvfPq(distance_type="cosine", num_partitions=parts, num_sub_vectors=int(self.kind[2:]))
        raise ValueError(f"unknown index kind {self.kind!r}")


@dataclass(frozen=True)
class Setting:
    nprobes: int | None = None
    ef: int | None = None
    refine: int | None = None
    exact: bool = False
    min_probes: bool = False

    @property
    def label(self) -> str:
        if self.exact:
            return "exact (bypass_vector_index)"
        probes = f"{'minimum_' if self.min_probes else ''}nprobes={self.nprobes}"
        parts = [
            probes if self.nprobes else "",
            f"ef={self.ef}" if self.ef else "",
            f"refine={self.refine}" if self.refine else "refine=none",
        ]
        return " ".join(p for p in parts if p)


def grid(spec: IndexSpec, rows: int, args: argparse.Namespace) -> list[Setting]:
    refines = [None if r == "none" else int(r) for r in args.refine]
    parts = spec.num_partitions(rows)
    if spec.kind == "hnsw_sq":
        nprobes = None if not parts or parts == 1 else min(parts, args.hnsw_nprobes)
        # lance rejects ef < limit * refine_factor ("ef must be greater than or equal to k")
        return [Setting(nprobes, ef, r) for ef in args.ef for r in refines if ef >= K * (r or 1)]
    probes = sorted({min(p, parts) if parts else p for p in args.nprobes})
    return [
        Setting(nprobes=p, refine=r, min_probes=args.probe_mode == "min") for p in probes for r in refines
    ]


def search(table: Any, query: np.ndarray, setting: Setting, where: str | None) -> tuple[float, pa.Table]:
    started = time.perf_counter()
    builder = table.search(query, vector_column_name="vector").distance_type("cosine")
    if where:
        builder = builder.where(where, prefilter=True)
    if setting.exact:
        builder = builder.bypass_vector_index()
    if setting.nprobes and setting.min_probes:
        builder = builder.minimum_nprobes(setting.nprobes)  # no maximum: more partitions if short
    elif setting.nprobes:
        builder = builder.nprobes(setting.nprobes)  # sets minimum and maximum
    if setting.ef:
        builder = builder.ef(setting.ef)
    if setting.refine:
        builder = builder.refine_factor(setting.refine)
    result = builder.limit(K).select(["id", "_distance"]).to_arrow()
    return time.perf_counter() - started, result


def measure(
    table: Any, settings: list[Setting], data: dict[str, Any], rounds: int, limit: int | None = None
) -> list[dict[str, Any]]:
    """Recall, latency, short results and _distance error for each setting; rounds alternate order."""
    times: dict[Setting, dict[str, list[float]]] = {s: {q: [] for q in QUERY_SETS} for s in settings}
    found: dict[Setting, dict[str, list[np.ndarray]]] = {s: {q: [] for q in QUERY_SETS} for s in settings}
    dist_err: dict[Setting, list[float]] = {s: [] for s in settings}
    dist_ratio: dict[Setting, list[float]] = {s: [] for s in settings}
    for s in settings[:1]:  # warm the index cache
        for q in data["queries"]["in"][:20]:
            search(table, q, s, None)
    for r in range(rounds):
        for s in settings if r % 2 == 0 else settings[::-1]:
            for name in QUERY_SETS:
                queries = data["queries"]["in" if name in FILTERS else name][:limit]
                for q in queries:
                    seconds, result = search(table, q, s, FILTERS.get(name))
                    times[s][name].append(seconds)
                    if r == 0:
                        ids = result["id"].to_numpy()
                        found[s][name].append(ids)
                        if name == "in" and len(ids):
                            true = 1.0 - data["vectors"][ids] @ q
                            got = result["_distance"].to_numpy()
                            dist_err[s].append(float(np.abs(got - true).max()))
                            dist_ratio[s].append(float(np.median(got / true)))
    out = []
    for s in settings:
        row: dict[str, Any] = {"setting": s.label, "nprobes": s.nprobes, "ef": s.ef, "refine": s.refine}
        for name in QUERY_SETS:
            truth = data["truth"][name][: len(found[s][name])]
            row[f"recall_{name}"] = recall(found[s][name], truth)
            row[f"p50_{name}_ms"] = 1e3 * statistics.median(times[s][name])
            row[f"p95_{name}_ms"] = 1e3 * float(np.percentile(times[s][name], 95))
            if name in FILTERS:
                row[f"short_{name}"] = sum(len(f) < K for f in found[s][name])
        pooled = times[s]["in"] + times[s]["ood"]
        row["p50_ms"] = 1e3 * statistics.median(pooled)
        row["p95_ms"] = 1e3 * float(np.percentile(pooled, 95))
        row["max_distance_error"] = max(dist_err[s]) if dist_err[s] else None
        row["distance_ratio"] = statistics.median(dist_ratio[s]) if dist_ratio[s] else None
        out.append(row)
    return out


def dir_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


# -------------------------------------------------------------------------------------------- faiss


def faiss_bench(data: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    import faiss

    vectors, buckets = data["vectors"], data["buckets"]
    faiss.omp_set_num_threads(args.faiss_build_threads)
    index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
    started = time.perf_counter()
    index.add(vectors)
    build_s = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    bitmaps = {
        name: np.packbits(buckets < int(w.split("<")[1]), bitorder="little") for name, w in FILTERS.items()
    }
    selectors = {name: faiss.IDSelectorBitmap(len(vectors), faiss.swig_ptr(b)) for name, b in bitmaps.items()}
    times: dict[int, dict[str, list[float]]] = {ef: {q: [] for q in QUERY_SETS} for ef in args.faiss_ef}
    found: dict[int, dict[str, list[np.ndarray]]] = {ef: {q: [] for q in QUERY_SETS} for ef in args.faiss_ef}
    for r in range(args.rounds):
        for ef in args.faiss_ef if r % 2 == 0 else args.faiss_ef[::-1]:
            for name in QUERY_SETS:
                params = faiss.SearchParametersHNSW(efSearch=ef, sel=selectors.get(name))
                for q in data["queries"]["in" if name in FILTERS else name]:
                    started = time.perf_counter()
                    _, ids = index.search(q[None], K, params=params)
                    times[ef][name].append(time.perf_counter() - started)
                    if r == 0:
                        found[ef][name].append(ids[0][ids[0] >= 0])
    rows = []
    for ef in args.faiss_ef:
        row: dict[str, Any] = {"setting": f"efSearch={ef}", "ef": ef}
        for name in QUERY_SETS:
            row[f"recall_{name}"] = recall(found[ef][name], data["truth"][name])
            row[f"p50_{name}_ms"] = 1e3 * statistics.median(times[ef][name])
        pooled = times[ef]["in"] + times[ef]["ood"]
        row["p50_ms"] = 1e3 * statistics.median(pooled)
        row["p95_ms"] = 1e3 * float(np.percentile(pooled, 95))
        rows.append(row)
    return {
        "index": "faiss IndexHNSWFlat M=32 efConstruction=40 (IP)",
        "build_s": build_s,
        "build_threads": args.faiss_build_threads,
        "results": rows,
    }


# ------------------------------------------------------------------------------------ recommendation


def min_recall(row: dict[str, Any], sets: tuple[str, ...] = QUERY_SETS) -> float:
    return min(row[f"recall_{q}"] for q in sets)


def recommend(run: dict[str, Any]) -> dict[str, Any]:
    """Cheapest-to-build index whose best setting reaches the target on all sets, at its lowest p50."""
    candidates = [
        {**row, "index": b["index"], "build_s": b["build_s"], "num_partitions": b["num_partitions"]}
        for b in run["builds"]
        for row in b.get("results", [])
        if min_recall(row) >= TARGET_RECALL and not row.get("short_f5") and not row.get("short_f1")
    ]
    if not candidates:
        return {"note": f"no setting reached recall@10 >= {TARGET_RECALL} on all query sets"}
    cheapest = min(c["build_s"] for c in candidates)
    chosen = min((c for c in candidates if c["build_s"] == cheapest), key=lambda c: c["p50_ms"])
    fastest = min(candidates, key=lambda c: c["p50_ms"])
    out = {"recommended": chosen, "fastest_query": fastest}
    faiss_rows = run.get("faiss", {}).get("results", [])
    for key, pick in (("recommended", chosen), ("fastest_query", fastest)):
        need = min_recall(pick, ("in", "ood"))
        match = [f for f in faiss_rows if min_recall(f, ("in", "ood")) >= need]
        if match:
            best = min(match, key=lambda f: f["p50_ms"])
            out[f"{key}_vs_faiss"] = {
                "faiss_setting": best["setting"],
                "faiss_p50_ms": best["p50_ms"],
                "ratio": pick["p50_ms"] / best["p50_ms"],
            }
    return out


# ------------------------------------------------------------------------------------------- output


def fmt(x: Any, digits: int = 2) -> str:
    if x is None:
        return "-"
    return f"{x:.{digits}f}" if isinstance(x, float) else str(x)


COLUMNS = [  # (header, key, digits) of the per-setting tables
    ("R@10 in", "recall_in", 3),
    ("R@10 ood", "recall_ood", 3),
    ("R@10 f5%", "recall_f5", 3),
    ("R@10 f1%", "recall_f1", 3),
    ("p50 ms", "p50_ms", 2),
    ("p95 ms", "p95_ms", 2),
    ("p50 f5% ms", "p50_f5_ms", 2),
    ("p50 f1% ms", "p50_f1_ms", 2),
    ("short f5%", "short_f5", 0),
    ("short f1%", "short_f1", 0),
    ("max dist err", "max_distance_error", 4),
    ("_distance/true", "distance_ratio", 2),
]


def table_lines(head: list[str], rows: list[tuple[list[str], dict[str, Any]]]) -> list[str]:
    cols = COLUMNS if any("short_f5" in r for _, r in rows) else COLUMNS[:8]
    lines = ["| " + " | ".join(head + [c[0] for c in cols]) + " |", "|---" * (len(head) + len(cols)) + "|"]
    for cells, r in rows:
        lines.append("| " + " | ".join(cells + [fmt(r.get(key), d) for _, key, d in cols]) + " |")
    return lines


def summary(r: dict[str, Any]) -> str:
    return (
        f"recall in/ood/f5/f1 {r['recall_in']:.3f}/{r['recall_ood']:.3f}/{r['recall_f5']:.3f}/"
        f"{r['recall_f1']:.3f}, p50 {r['p50_ms']:.2f} ms (f5 {r['p50_f5_ms']:.2f}, f1 {r['p50_f1_ms']:.2f}), "
        f"short {r.get('short_f5', '-')}/{r.get('short_f1', '-')}, "
        f"dist err {fmt(r.get('max_distance_error'), 4)} ratio {fmt(r.get('distance_ratio'), 2)}"
    )


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# LanceDB ANN benchmark ({report['date']})",
        "",
        f"CPU: {report['cpu']} ({report['cores']} cores); lancedb {report['lancedb']}, faiss "
        f"{report.get('faiss', '-')}. recall@10 against the exact cosine top-10; latency of one query at a "
        "time (`.limit(10).select(['id', '_distance']).to_arrow()`); p50/p95 pool the in and ood queries; "
        "short = filtered queries answered with fewer than 10 rows; max dist err = largest |_distance - true "
        "cosine distance| over the in queries, _distance/true = median ratio of the two.",
        "",
    ]
    for rows, run in sorted(report["runs"].items(), key=lambda kv: int(kv[0])):
        lines += [
            f"## {int(rows):,} rows x {run['dim']}-d",
            "",
            f"`{run['command']}`",
            "",
            f"Data written in {run['write_s']:.1f} s; numpy ground truth {run['truth_s']:.1f} s; "
            f"{run['queries']} queries per set; {run['rounds']} timing rounds; load average "
            f"{run['load_start']:.2f} at start, {run.get('load_end', 0):.2f} at end. Mean cosine of the "
            f"exact 1st / 10th neighbour: in {run['truth_stats']['in']}, ood {run['truth_stats']['ood']}.",
            "",
        ]
        body = [
            (
                ["exact", "-", f"{run['exact']['setting']}, {run['exact']['queries']} queries", "-", "-"],
                run["exact"],
            )
        ]
        for b in run["builds"]:
            if "skipped" in b:
                body.append(([b["index"], "-", f"skipped: {b['skipped']}", "-", "-"], {}))
                continue
            for r in b["results"]:
                cells = [b["index"], str(b["num_partitions"] or "default"), r["setting"]]
                body.append((cells + [f"{b['build_s']:.1f}", f"{b['index_mb']:.0f}"], r))
        lines += table_lines(["index", "partitions", "settings", "build s", "index MB"], body)
        if run.get("faiss"):
            fa = run["faiss"]
            lines += [
                "",
                f"FAISS anchor: {fa['index']}, built in {fa['build_s']:.1f} s on {fa['build_threads']} "
                "threads, searched on 1 thread (filtered sets through IDSelectorBitmap).",
                "",
            ]
            lines += table_lines(["settings"], [([r["setting"]], r) for r in fa["results"]])
        lines += [
            "",
            f"Recommendation (recall@10 >= {TARGET_RECALL} on in, ood, f5, f1; no short results):",
            "",
        ]
        rec = run.get("recommendation", {})
        if "note" in rec:
            lines.append(f"- {rec['note']}")
        for key in ("recommended", "fastest_query"):
            if key in rec:
                r, vs = rec[key], rec.get(f"{key}_vs_faiss")
                ratio = "no FAISS setting reached its recall"
                if vs:
                    ratio = f"{vs['ratio']:.1f}x the p50 of FAISS {vs['faiss_setting']} "
                    ratio += f"({vs['faiss_p50_ms']:.3f} ms)"
                lines.append(
                    f"- {key}: {r['index']} (num_partitions {r['num_partitions'] or 'default'}) "
                    f"{r['setting']}: build {r['build_s']:.1f} s, min recall {min_recall(r):.3f}, "
                    f"p50 {r['p50_ms']:.2f} ms, {ratio}"
                )
        lines.append("")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def save(out: Path, rows: int, run: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    path = out / "ann.json"
    report = json.loads(path.read_text()) if path.exists() else {"runs": {}}
    report.update(
        date=dt.datetime.now().isoformat(timespec="seconds"),
        cpu=cpu_model(),
        cores=os.cpu_count(),
        lancedb=lancedb.__version__,
    )
    try:
        import faiss

        report["faiss"] = faiss.__version__
    except ImportError:
        pass
    report["runs"][str(rows)] = run
    path.write_text(json.dumps(report, indent=1))
    (out / "ann.md").write_text(markdown(report))


# --------------------------------------------------------------------------------------------- main


def bench_rows(rows: int, args: argparse.Namespace, slow_kinds: set[str]) -> None:
    corpus = Corpus(DIM, args.clusters, args.seed, args.gap, args.decay)
    tmp = Path(tempfile.mkdtemp(prefix="ann-bench-", dir=args.tmp))
    run: dict[str, Any] = {
        "rows": rows,
        "dim": DIM,
        "queries": args.queries,
        "rounds": args.rounds,
        "command": args.command,
        "load_start": os.getloadavg()[0],
        "builds": [],
    }
    previous = json.loads((args.out / "ann.json").read_text()) if (args.out / "ann.json").exists() else {}
    if args.append and str(rows) in previous.get("runs", {}):  # same seed, so the same data and queries
        old = previous["runs"][str(rows)]
        run["builds"] = old["builds"]
        run["command"] = f"{old['command']}` then `{args.command}"
        if not args.faiss and "faiss" in old:
            run["faiss"] = old["faiss"]
    try:
        db = lancedb.connect(tmp / "db")
        started = time.perf_counter()
        table, vectors, buckets = write_table(db, corpus, rows, args.seed)
        run["write_s"] = time.perf_counter() - started
        rng = np.random.default_rng(args.seed + 7)
        queries = {"in": corpus.images(rng, args.queries), "ood": corpus.texts(rng, args.queries)}
        started = time.perf_counter()
        truth = {name: exact_topk(vectors, q) for name, q in queries.items()}
        for name, where in FILTERS.items():
            truth[name] = exact_topk(
                vectors, queries["in"], np.flatnonzero(buckets < int(where.split("<")[1]))
            )
        run["truth_s"] = time.perf_counter() - started
        run["truth_stats"] = {name: neighbour_cosines(vectors, q, truth[name]) for name, q in queries.items()}
        data = {"vectors": vectors, "buckets": buckets, "queries": queries, "truth": truth}
        print(
            f"[{rows}] wrote {rows} rows in {run['write_s']:.1f} s, truth {run['truth_s']:.1f} s, "
            f"top-1/top-10 cos {run['truth_stats']}",
            flush=True,
        )
        exact = measure(table, [Setting(exact=True)], data, 1, limit=args.exact_queries)[0]
        run["exact"] = {**exact, "queries": args.exact_queries}
        print(
            f"[{rows}] lancedb exact: p50 {exact['p50_ms']:.1f} ms recall {min_recall(exact):.3f}", flush=True
        )
        if args.faiss:
            run["faiss"] = faiss_bench(data, args)
            print(f"[{rows}] faiss built in {run['faiss']['build_s']:.1f} s", flush=True)
            for r in run["faiss"]["results"]:
                print(f"   {r['setting']}: {summary(r)}", flush=True)
        save(args.out, rows, run)
        for spec in (IndexSpec(*s.split(":")) for s in args.indexes):
            if spec.kind in slow_kinds:
                run["builds"].append(
                    {
                        "index": spec.name,
                        "skipped": f"an earlier {spec.kind} build took > {args.max_build_s:.0f} s",
                    }
                )
                continue
            build_s = build_index(tmp / "db", spec, rows, args.max_build_s)
            if build_s is None:
                slow_kinds.add(spec.kind)
                skipped = f"build killed after {args.max_build_s:.0f} s"
                print(f"[{rows}] {spec.name}: {skipped}", flush=True)
                run["builds"].append({"index": spec.name, "skipped": skipped})
                save(args.out, rows, run)
                continue
            table.checkout_latest()
            index_mb = dir_mb(tmp / "db" / "vectors.lance" / "_indices")
            print(f"[{rows}] {spec.name} built in {build_s:.1f} s ({index_mb:.0f} MB on disk)", flush=True)
            results = measure(table, grid(spec, rows, args), data, args.rounds)
            for r in results:
                print(f"   {r['setting']}: {summary(r)}", flush=True)
            run["builds"].append(
                {
                    "index": spec.name,
                    "num_partitions": spec.num_partitions(rows),
                    "build_s": build_s,
                    "index_mb": index_mb,
                    "results": results,
                }
            )
            run["load_end"] = os.getloadavg()[0]
            run["recommendation"] = recommend(run)
            save(args.out, rows, run)
        run["load_end"] = os.getloadavg()[0]
        run["recommendation"] = recommend(run)
        save(args.out, rows, run)
        print(json.dumps(run["recommendation"], indent=1, default=str), flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_index(db_dir: Path, spec: IndexSpec, rows: int, timeout_s: float) -> float | None:
    """Build in a child process (killed after timeout_s: the table stays as it was); build seconds."""
    command = [sys.executable, __file__, "--build-index", str(db_dir), spec.name, str(rows)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=True)
    except subprocess.TimeoutExpired:
        return None
    return float(done.stdout.split()[-1])


def build_index_here(db_dir: str, spec_name: str, rows: str) -> None:
    table = lancedb.connect(db_dir).open_table("vectors")
    started = time.perf_counter()
    table.create_index("vector", config=IndexSpec(*spec_name.split(":")).config(int(rows)), replace=True)
    print(time.perf_counter() - started)


def main() -> None:
    if sys.argv[1:2] == ["--build-index"]:  # the child process of build_index()
        return build_index_here(*sys.argv[2:5])
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=200, help="queries per query set")
    parser.add_argument("--exact-queries", type=int, default=20, help="queries for LanceDB's exact baseline")
    parser.add_argument("--out", type=Path, default=Path("bench/results"))
    parser.add_argument(
        "--indexes",
        nargs="+",
        default=[
            "hnsw_sq:default",
            "rq1:sqrt",
            "rq1:r4096",
            "rq4:sqrt",
            "rq4:r4096",
            "pq64:sqrt",
            "pq64:r4096",
        ],
        help="KIND:PARTITIONS; KIND hnsw_sq, rqBITS, pqSUBVECTORS; PARTITIONS default, "
        "sqrt, r4096 (n/4096) or a number",
    )
    parser.add_argument("--nprobes", type=int, nargs="+", default=[10, 20, 40], help="IVF grid (capped)")
    parser.add_argument("--ef", type=int, nargs="+", default=[20, 40, 80, 160], help="HNSW grid")
    parser.add_argument("--refine", nargs="+", default=["none", "5", "10"], help="refine_factor grid")
    parser.add_argument(
        "--probe-mode",
        choices=["fixed", "min"],
        default="fixed",
        help="fixed: .nprobes(n); min: .minimum_nprobes(n), no maximum",
    )
    parser.add_argument("--hnsw-nprobes", type=int, default=4, help="nprobes for IVF_HNSW with >1 partition")
    parser.add_argument("--rounds", type=int, default=2, help="timing rounds, order alternating")
    parser.add_argument("--no-faiss", dest="faiss", action="store_false")
    parser.add_argument("--append", action="store_true", help="add builds to this row count's saved section")
    parser.add_argument("--faiss-ef", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--faiss-build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument(
        "--max-build-s",
        type=float,
        default=360.0,
        help="kill a build slower than this and skip further builds of that kind",
    )
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--gap", type=float, default=2.0, help="weight of the text-like common offset")
    parser.add_argument("--decay", type=float, default=0.8, help="spectrum decay of the data space")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tmp", default=None, help="parent of the temp table dir")
    args = parser.parse_args()
    args.command = "python bench/ann.py " + " ".join(sys.argv[1:])
    print(
        f"{dt.datetime.now().isoformat(timespec='seconds')} CPU {cpu_model()} ({os.cpu_count()} cores), "
        f"lancedb {lancedb.__version__}",
        flush=True,
    )
    slow_kinds: set[str] = set()
    for rows in args.rows:
        bench_rows(rows, args, slow_kinds)


if __name__ == "__main__":
    main()
