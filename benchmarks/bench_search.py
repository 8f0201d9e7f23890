"""Search benchmark on 50,673 real passages: recall against exact search, and API latency against raw psycopg.

    .venv/bin/python -m benchmarks.bench_search

The corpus is benchmarks/data/sotu-passages-200.parquet (the State of the Union
addresses cut into passages of at most 200 characters, fixtures/build_sotu.py
--per-address 0 --max-chars 200). Its embeddings are computed once with the
bundled model and cached in benchmarks/.cache/ (about 10 minutes on 2 cores).
Queries are 200 passages of fixtures/sotu.parquet, cut differently, so no query
is a stored text. The benchmark works in its own database, created afresh.
"""

from __future__ import annotations

import argparse
import http.client
import json
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow.parquet as pq

from benchmarks.harness import CACHE, ROOT, serve, setup_database

CORPUS = ROOT / "benchmarks" / "data" / "sotu-passages-200.parquet"
EMBEDDED = CACHE / "sotu-passages-200.embedded.parquet"
# What the API selects, written by hand: the same columns, distances and LIMIT.
RAW_SQL = (
    "SELECT id, external_id, text, category, metadata, created_at, embedding <=> %s AS distance"
    " FROM vectorstore_document ORDER BY embedding <=> %s LIMIT 10"
)


def pct(values: list[float]) -> tuple[float, float]:
    return float(np.percentile(values, 50)), float(np.percentile(values, 99))


def exact_top(conn, vector: np.ndarray, k: int, where: str = "", params: tuple = ()) -> list[int]:
    with conn.transaction():
        conn.execute("SET LOCAL enable_indexscan = off")
        rows = conn.execute(
            f"SELECT id FROM vectorstore_document {where} ORDER BY embedding <=> %s LIMIT %s",
            [*params, vector, k],
        ).fetchall()
    return [r[0] for r in rows]


_clients = threading.local()


def post(port: int, body: dict) -> float:
    """One API request on this thread's keep-alive connection (opened again when the server closed it,
    as a sync worker does after each answer); seconds taken, connecting included."""
    data = json.dumps(body)
    start = time.perf_counter()
    conn = getattr(_clients, "conn", None)
    if conn is None or conn.port != port:
        conn = _clients.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("POST", "/api/search", body=data, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    payload = response.read()
    if response.will_close:
        conn.close()
    elapsed = time.perf_counter() - start
    if response.status != 200:
        raise SystemExit(f"API answered {response.status}: {payload[:300]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--gunicorn", default="", help="extra gunicorn arguments, e.g. '--worker-class sync' to compare"
    )
    args = parser.parse_args()
    if not EMBEDDED.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        print(f"embedding {CORPUS.name} once into {EMBEDDED} ...", flush=True)
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "embed_parquet",
                str(CORPUS),
                str(EMBEDDED),
                "--batch-size",
                "128",
            ],
            check=True,
        )
    url = setup_database("searchbench")
    import psycopg
    from pgvector.psycopg import register_vector

    from vectorstore import ingest
    from vectorstore.embedding import Embedder
    from vectorstore.search import index_settings, search

    report = ingest.load(EMBEDDED, progress=False)
    print(f"loaded {report.rows:,} passages in {report.seconds:.1f} s (indexes {report.index_seconds:.1f} s)")
    queries = pq.read_table(ROOT / "fixtures" / "sotu.parquet").column("text").to_pylist()
    rng = np.random.default_rng(0)
    texts = [queries[i] for i in rng.choice(len(queries), args.queries, replace=False)]
    embedder = Embedder()
    vectors = embedder.encode(texts)

    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)

    # Recall@10 of the default settings against exact search.
    recalls = []
    for v in vectors:
        truth = set(exact_top(conn, v, 10))
        got = {h.document.pk for h in search(vector=v, k=10).hits}
        recalls.append(len(truth & got) / 10)
    print(
        f"recall@10, default index settings, {len(vectors)} queries: {np.mean(recalls):.3f}  (goal >= 0.95)"
    )

    # The same under a 1%-selective metadata filter: one President's passages.
    counts = conn.execute(
        "SELECT metadata->>'president', count(*) FROM vectorstore_document"
        " GROUP BY 1 ORDER BY abs(count(*) - %s)",
        [report.rows // 100],
    ).fetchall()
    president, matching = counts[0]
    filt = {"president": president}
    recalls, short = [], 0
    for v in vectors:
        truth = set(exact_top(conn, v, 10, "WHERE metadata->>'president' = %s", (president,)))
        hits = search(vector=v, k=10, filters=filt).hits
        short += len(hits) < 10
        recalls.append(len(truth & {h.document.pk for h in hits}) / 10)
    print(
        f"recall@10 with a {matching / report.rows:.1%} filter ({president}, {matching} rows): "
        f"{np.mean(recalls):.3f}, short answers {short}/{len(vectors)}  (goal >= 0.90, none short)"
    )

    # API latency against the same query in raw psycopg, one client.
    with serve(url, workers=2, extra=shlex.split(args.gunicorn)) as port:
        for v in vectors[:20]:  # warm both workers
            post(port, {"vector": v.tolist(), "k": 10})
        for t in texts[:4]:
            post(port, {"query": t, "k": 10})

        # The API's own SET LOCALs, in its transaction, sent as a careful psycopg client would: BEGIN,
        # the settings, the query and COMMIT in one pipeline (one round trip), the vector in binary.
        settings = index_settings(None, None, None)
        set_sql = "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(settings))
        set_params = [part for item in settings.items() for part in item]

        def raw(v: np.ndarray, c=conn) -> float:
            start = time.perf_counter()
            with c.pipeline():
                c.execute("BEGIN")
                c.execute(set_sql, set_params)
                cursor = c.execute(RAW_SQL, [v, v])
                c.execute("COMMIT")
            cursor.fetchall()
            return time.perf_counter() - start

        api_ms = [post(port, {"vector": v.tolist(), "k": 10}) * 1000 for v in vectors]
        raw_ms = [raw(v) * 1000 for v in vectors]
        (a50, a99), (r50, r99) = pct(api_ms), pct(raw_ms)
        print(
            f"vector query latency: API p50 {a50:.2f} ms, p99 {a99:.2f} ms; raw psycopg p50 {r50:.2f} ms, "
            f"p99 {r99:.2f} ms; p50 overhead {a50 - r50:.2f} ms  (goal <= 1.5 ms)"
        )

        def raw_text(t: str) -> float:
            start = time.perf_counter()
            v = embedder.model.encode([t], normalize_embeddings=True)[0]
            raw(v)
            return time.perf_counter() - start  # embedding included

        unique = [f"{t} ({i})" for i, t in enumerate(texts)]  # unique strings: no cache hits
        api_text = [post(port, {"query": t, "k": 10}) * 1000 for t in unique[: len(unique) // 2]]
        raw_text_ms = [raw_text(t) * 1000 for t in unique[len(unique) // 2 :]]
        (a50, a99), (r50, r99) = pct(api_text), pct(raw_text_ms)
        print(
            f"text query latency (embedding included): API p50 {a50:.1f} ms, p99 {a99:.1f} ms; "
            f"SentenceTransformer + raw psycopg p50 {r50:.1f} ms, p99 {r99:.1f} ms"
        )

        # Throughput with N concurrent clients.
        n = len(vectors) * 2
        work = [vectors[i % len(vectors)] for i in range(n)]
        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            list(pool.map(lambda v: post(port, {"vector": v.tolist(), "k": 10}), work))
            api_qps = n / (time.perf_counter() - start)
        local = threading.local()

        def raw_in_thread(v: np.ndarray) -> float:
            if not hasattr(local, "conn"):  # one connection per client thread, as a pool would give
                local.conn = psycopg.connect(url, autocommit=True)
                register_vector(local.conn)
            return raw(v, local.conn)

        with ThreadPoolExecutor(args.clients) as pool:
            list(pool.map(raw_in_thread, work[: args.clients]))  # open the connections first
            start = time.perf_counter()
            list(pool.map(raw_in_thread, work))
        raw_qps = n / (time.perf_counter() - start)
        print(
            f"throughput, {args.clients} clients, {n} vector queries: API {api_qps:,.0f}/s, "
            f"raw psycopg {raw_qps:,.0f}/s (ratio {api_qps / raw_qps:.2f}, goal >= 0.7)"
        )

        # The same for text queries, embedding included (unique texts: no cache hits).
        m = len(unique)
        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            list(pool.map(lambda t: post(port, {"query": f"{t} [load]", "k": 10}), unique))
            api_text_qps = m / (time.perf_counter() - start)

        def raw_text_in_thread(t: str) -> float:
            if not hasattr(local, "conn"):
                local.conn = psycopg.connect(url, autocommit=True)
                register_vector(local.conn)
            v = embedder.model.encode([t], normalize_embeddings=True)[0]
            return raw(v, local.conn)

        with ThreadPoolExecutor(args.clients) as pool:
            start = time.perf_counter()
            list(pool.map(raw_text_in_thread, [f"{t} [raw]" for t in unique]))
            raw_text_qps = m / (time.perf_counter() - start)
        print(
            f"throughput, {args.clients} clients, {m} text queries (embedding included): API "
            f"{api_text_qps:,.0f}/s, SentenceTransformer + raw psycopg {raw_text_qps:,.0f}/s "
            f"(ratio {api_text_qps / raw_text_qps:.2f})"
        )


if __name__ == "__main__":
    main()
