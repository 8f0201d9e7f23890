"""Scale benchmark: the whole first load, index size, recall and search time at 100,000 to 1,000,000 rows,
for each vector index kind (full precision, half precision, binary with re-rank).

    .venv/bin/python -m benchmarks.bench_scale                          # sotu, 100k/300k/1M: about an hour
    .venv/bin/python -m benchmarks.bench_scale --corpus debian --sizes 100000
    .venv/bin/python -m benchmarks.bench_scale --sizes 20000 --kinds half   # a smoke run

Inputs: the corpus's real all-MiniLM-L6-v2 vectors (benchmarks/.cache, embedded once), cycled to the
size, each copy with small Gaussian noise (norm 0.2 against the unit vector, so a copy is at cosine ~0.98
of its source) and renormalized; texts and metadata reused, ids unique. Written once per size to
benchmarks/.cache/scale-<corpus>-<n>.parquet.

For each size and kind, in a database of its own (``<name>_scale``): the table emptied and given only that
kind's vector index (``vector_index create``), then ``manage.py bulk_copy`` in a child process, timed from
process start to searchable (load, index builds sized by ``build_memory``, and the recall tuning the load
triggers), its peak memory by GNU time; then the vector index's size, and, in this process through
``search()`` at the defaults the load left (tuned ef_search, or rerank for binary), recall@10 of the
corpus's real queries against exact search (numpy over the same vectors) and the search p50.
Ratios: each kind against full precision at the same size, each size's per-row load time against the
smallest size's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_search import CORPORA, Corpus, ensure_embedded
from benchmarks.harness import CACHE, ROOT, setup_database

KINDS = ("full", "half", "binary")
NOISE = 0.2
BATCH = 50_000


def base_vectors(corpus: Corpus) -> tuple[pa.Table, np.ndarray]:
    table = pq.read_table(corpus.embedded)
    vectors = np.asarray(table.column("embedding").combine_chunks().flatten(), dtype=np.float32)
    return table.drop_columns(["embedding"]), vectors.reshape(table.num_rows, -1)


def noisy_batch(base: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows start..stop: base vector i % len(base) plus noise seeded by the batch, renormalized."""
    rng = np.random.default_rng(start)
    idx = np.arange(start, stop) % len(base)
    noise = rng.standard_normal((stop - start, base.shape[1]), dtype=np.float32)
    noise *= NOISE / np.linalg.norm(noise, axis=1, keepdims=True)
    v = base[idx] + noise
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


def all_vectors(base: np.ndarray, n: int) -> np.ndarray:
    out = np.empty((n, base.shape[1]), dtype=np.float32)
    for start in range(0, n, BATCH):
        out[start : min(n, start + BATCH)] = noisy_batch(base, start, min(n, start + BATCH))
    return out


def make_input(corpus: Corpus, n: int) -> Path:
    path = CACHE / f"scale-{corpus.name}-{n}.parquet"
    if path.exists():
        return path
    meta, base = base_vectors(corpus)
    tmp = path.with_suffix(".tmp")
    writer = None
    for start in range(0, n, BATCH):
        stop = min(n, start + BATCH)
        part = meta.take(pa.array(np.arange(start, stop) % meta.num_rows))
        part = part.set_column(0, "id", pa.array([f"{corpus.name}-{i}" for i in range(start, stop)]))
        v = noisy_batch(base, start, stop)
        col = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), base.shape[1]).cast(
            pa.list_(pa.float32())
        )
        part = part.append_column("embedding", col)
        writer = writer or pq.ParquetWriter(tmp, part.schema)
        writer.write_table(part)
    writer.close()
    tmp.rename(path)
    return path


def manage(*args: str) -> tuple[float, int, dict]:
    """manage.py in a child under GNU time: wall seconds, peak RSS (KiB), the JSON summary."""
    argv = ["/usr/bin/time", "-f", "maxrss=%M", sys.executable, str(ROOT / "manage.py"), *args, "--json"]
    started = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if result.returncode:
        raise SystemExit(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    rss = int(result.stderr.strip().splitlines()[-1].split("=")[1])
    return seconds, rss, json.loads(result.stdout.strip().splitlines()[-1])


def reset(kind: str) -> None:
    """Empty table, nothing tuned, and only the kind's vector index (built on no rows: instant)."""
    from django.core.management import call_command

    from vectorstore import search
    from vectorstore.indexing import vector_indexes
    from vectorstore.loading.pgcopy import django_connection
    from vectorstore.models import Document, SearchTuning

    conn = django_connection()
    conn.execute("TRUNCATE vectorstore_document CASCADE")
    SearchTuning.objects.all().delete()
    quantization = "full" if kind == "full" else kind
    with open(os.devnull, "w") as quiet:
        call_command(
            "vector_index",
            "create",
            "--quantization",
            quantization,
            "--replace",
            "--grace",
            "0",
            "--no-tune",
            stdout=quiet,
        )
    found = vector_indexes.table_indexes("vectorstore_document")
    assert [i.kind for i in found] == [kind], found
    assert Document.objects.count() == 0
    vector_indexes.forget()
    search.forget_tuning()


def exact_truth(vectors: np.ndarray, queries: np.ndarray, k: int) -> list[set[int]]:
    """Row numbers (external id suffixes) of each query's k nearest by cosine, exactly."""
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    best = []
    scores = np.empty((len(q), 0), dtype=np.float32)
    ids = np.empty((len(q), 0), dtype=np.int64)
    for start in range(0, len(vectors), 200_000):
        chunk = vectors[start : start + 200_000] @ q.T  # unit rows: cosine similarity
        top = np.argpartition(-chunk, k, axis=0)[:k].T
        scores = np.concatenate([scores, np.take_along_axis(chunk.T, top, axis=1)], axis=1)
        ids = np.concatenate([ids, top + start], axis=1)
        keep = np.argsort(-scores, axis=1)[:, :k]
        scores, ids = np.take_along_axis(scores, keep, axis=1), np.take_along_axis(ids, keep, axis=1)
    for row in ids:
        best.append(set(int(i) for i in row))
    return best


def measure_search(queries: np.ndarray, truth: list[set[int]], k: int = 10, **options) -> tuple[float, float]:
    """recall@k against exact, and p50 ms of search() (after a warm-up pass over the queries); ``options``
    go to search() (none: the defaults the load left). The queries are kept out of the query log: they
    are what the tuner is judged on."""
    from vectorstore.search import search

    for q in queries[:20]:
        search(vector=q, k=k, log_query=False, **options)
    times, found = [], 0
    for q, expected in zip(queries, truth, strict=True):
        started = time.perf_counter()
        result = search(vector=q, k=k, log_query=False, **options)
        times.append(time.perf_counter() - started)
        got = {int(h.values["external_id"].rsplit("-", 1)[1]) for h in result.hits}
        found += len(got & expected)
    return found / (k * len(queries)), float(np.percentile(times, 50)) * 1000


def index_size() -> int:
    from vectorstore.indexing import vector_indexes

    (index,) = vector_indexes.table_indexes("vectorstore_document")
    return index.size_bytes


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="sotu")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--kinds", nargs="+", choices=KINDS, default=list(KINDS))
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument(
        "--hand-written",
        action="store_true",
        help="the corpus's hand-written queries (benchmarks/data/<corpus>-queries.txt), not its passages",
    )
    parser.add_argument(
        "--retune",
        action="store_true",
        help="after each load, tune_search (pseudo-queries from the texts) and measure again",
    )
    args = parser.parse_args()
    corpus = CORPORA[args.corpus]
    ensure_embedded(corpus)
    setup_database("scale")
    from vectorstore.search import embed_query

    if args.hand_written:
        from benchmarks.bench_tuning import real_queries

        texts = real_queries(corpus)[: args.queries]
    else:
        texts = corpus.queries(args.queries)
    queries = np.stack([embed_query(t) for t in texts]).astype(np.float32)
    _, base = base_vectors(corpus)
    results: dict[tuple[int, str], dict] = {}
    print(f"corpus {corpus.name}: {len(base):,} real vectors, {len(queries)} real queries", flush=True)
    for n in sorted(args.sizes):
        path = make_input(corpus, n)
        truth = exact_truth(all_vectors(base, n), queries, 10)
        for kind in args.kinds:
            reset(kind)
            seconds, rss, report = manage("bulk_copy", str(path))
            recall, p50 = measure_search(queries, truth)
            tuned = report.get("tuned") or {}
            row = {
                "rows": n,
                "kind": kind,
                "load_s": round(seconds, 1),
                "us_per_row": round(seconds / n * 1e6, 1),
                "index_s": report["index_seconds"],
                "index_mb": round(index_size() / 1024**2, 1),
                "recall": round(recall, 3),
                "p50_ms": round(p50, 2),
                "peak_mb": round(rss / 1024, 1),
                "memory": report.get("index_memory"),
                "tuned": f"{tuned.get('setting')}={tuned.get('value')}" if tuned else None,
                "warnings": report.get("warnings"),
            }
            # The curve around the defaults: a binary index's re-rank depth; half at full precision's ef.
            if kind == "binary":
                row["sweep"] = {
                    f"rerank={r}": measure_search(queries, truth, rerank=r) for r in (10, 16, 20, 24, 32, 48)
                }
            elif kind == "half" and (n, "full") in results:
                ef = results[(n, "full")]["tuned"]
                if ef and ef.startswith("hnsw.ef_search="):
                    value = int(ef.split("=")[1])
                    row["sweep"] = {f"ef_search={value}": measure_search(queries, truth, ef_search=value)}
            if args.retune and kind != "binary":
                tune_seconds, _, tuned_again = manage("tune_search")
                from vectorstore.search import forget_tuning

                forget_tuning()
                again, again_p50 = measure_search(queries, truth)
                row["retuned"] = {
                    "query_model": tuned_again["query_model"],
                    "value": tuned_again["value"],
                    "estimate": tuned_again["recall"],
                    "recall": round(again, 3),
                    "p50_ms": round(again_p50, 2),
                    "seconds": round(tune_seconds, 1),
                }
            if "sweep" in row:
                row["sweep"] = {key: [round(r, 3), round(p, 2)] for key, (r, p) in row["sweep"].items()}
            results[(n, kind)] = row
            print(json.dumps(row), flush=True)
    smallest = min(args.sizes)
    print(f"\n{corpus.name}: ratios (kind against full, same size; per-row load against {smallest:,} rows)")
    for n in sorted(args.sizes):
        full = results.get((n, "full"))
        for kind in args.kinds:
            row = results[(n, kind)]
            parts = [f"{n:>9,} {kind:<6}"]
            parts.append(f"load {row['load_s']:>7.1f} s ({row['us_per_row']:.0f} us/row")
            first = results.get((smallest, kind))
            if first:
                parts.append(f"x{row['us_per_row'] / first['us_per_row']:.2f} of {smallest:,})")
            parts.append(f"index {row['index_mb']:.0f} MB")
            if full and kind != "full":
                parts.append(f"(x{row['index_mb'] / full['index_mb']:.2f} of full)")
            parts.append(f"recall@10 {row['recall']:.3f}  p50 {row['p50_ms']:.2f} ms")
            if full and kind != "full":
                parts.append(f"(x{row['p50_ms'] / full['p50_ms']:.2f} of full)")
            parts.append(f"peak {row['peak_mb']:.0f} MB; {row['tuned']}")
            print(" ".join(parts), flush=True)
            for key, (recall, p50) in row.get("sweep", {}).items():
                ratio = f" (x{p50 / full['p50_ms']:.2f} of full)" if full else ""
                print(f"{'':>17} at {key}: recall@10 {recall:.3f}  p50 {p50:.2f} ms{ratio}", flush=True)


if __name__ == "__main__":
    main()
