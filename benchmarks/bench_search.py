"""Search benchmark on two corpora of real text: recall against exact search, and API latency and
throughput against raw psycopg doing the same work.

    .venv/bin/python -m benchmarks.bench_search                 # both corpora
    .venv/bin/python -m benchmarks.bench_search --corpus debian  # one

The corpora (each embedded once with the bundled model and cached in benchmarks/.cache/):

- ``sotu``: 50,673 passages of at most 200 characters from the State of the Union addresses
  (benchmarks/data/sotu-passages-200.parquet, fixtures/build_sotu.py --per-address 0 --max-chars 200;
  about 10 minutes to embed on 2 cores). Queries: passages of fixtures/sotu.parquet, cut
  differently, so no query is a stored text. The 1% filter: one President's passages.
- ``pydocs``: 11,423 passages of the Python 3.11 documentation (library reference, tutorial, how-tos,
  language reference, FAQs), technical reference prose (benchmarks/data/pydocs-passages.parquet,
  fixtures/build_pydocs.py; about 3 minutes to embed). Queries: 143 questions written by hand
  (benchmarks/data/pydocs-queries.txt). The 1% filter: one page.
- ``debian``: 59,852 one-line synopses of Debian bookworm packages, software rather than speeches and
  a quarter of the length (benchmarks/data/debian-synopses.parquet, fixtures/build_debian.py; about
  6 minutes to embed). Queries: 175 requests written by hand (benchmarks/data/debian-queries.txt).
  The 1% filter: one package section.

Each corpus is loaded with ``ingest.load`` exactly as ``bulk_copy`` loads it (which tunes ef_search
for recall 0.95 at the end of the load), into the benchmark's own database, created afresh.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.harness import CACHE, ROOT, serve, setup_database

DATA = ROOT / "benchmarks" / "data"


@dataclass(frozen=True)
class Corpus:
    name: str
    parquet: Path
    filter_key: str  # the search filter's key for the 1% filter
    filter_sql: str  # the same, as SQL, for the exact answers

    @property
    def embedded(self) -> Path:
        return CACHE / f"{self.parquet.stem}.embedded.parquet"

    def queries(self, n: int) -> list[str]:
        if self.name in ("debian", "pydocs"):
            lines = (DATA / f"{self.name}-queries.txt").read_text(encoding="utf-8").splitlines()
            texts = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
            return texts[:n]
        texts = pq.read_table(ROOT / "fixtures" / "sotu.parquet").column("text").to_pylist()
        rng = np.random.default_rng(0)
        return [texts[i] for i in rng.choice(len(texts), min(n, len(texts)), replace=False)]


CORPORA = {
    "sotu": Corpus("sotu", DATA / "sotu-passages-200.parquet", "president", "metadata->>'president'"),
    "debian": Corpus("debian", DATA / "debian-synopses.parquet", "category", "category"),
    "pydocs": Corpus("pydocs", DATA / "pydocs-passages.parquet", "page", "metadata->>'page'"),
}

# Metadata keys declared for range filters (their B-tree indexes): SOTU's year, Debian's source package.
DECLARED = {"year": "int", "source": "text", "page": "text"}
# A range on a declared key that matches about 1% of each corpus.
DECLARED_RANGES = {
    "sotu": {"year": {"$gte": 1861, "$lt": 1864}},
    "debian": {"source": {"$gte": "python-d", "$lt": "python-f"}},
    "pydocs": {"page": {"$gte": "library/csv", "$lt": "library/d"}},
}

# What the API selects, written by hand: the same columns, distances and LIMIT.
RAW_SQL = (
    "SELECT id, external_id, text, category, metadata, created_at, embedding <=> %s AS distance"
    " FROM vectorstore_document ORDER BY embedding <=> %s LIMIT 10"
)


def api_settings(table: str) -> dict[str, str]:
    """The settings the API sets with SET LOCAL for a vector query, its statement timeout included."""
    from vectorstore import conf
    from vectorstore.search import index_settings, tuned_settings

    settings = index_settings(None, None, None, tuned_settings(table, "default"))
    return {**settings, "statement_timeout": str(conf.search_timeout_ms())}


def raw_search(conn, vector: np.ndarray, settings: dict[str, str]) -> list[tuple]:
    """The API's vector query as a careful psycopg client sends it: BEGIN, the settings, the SELECT and
    COMMIT in one pipeline (one round trip), the vector in binary."""
    set_sql = "SELECT " + ", ".join(["set_config(%s, %s, true)"] * len(settings))
    with conn.pipeline():
        conn.execute("BEGIN")
        conn.execute(set_sql, [part for item in settings.items() for part in item])
        cursor = conn.execute(RAW_SQL, [vector, vector])
        conn.execute("COMMIT")
    return cursor.fetchall()


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
    as a sync worker does after each answer, or gthread's keep-alive timeout after an idle pause);
    seconds taken, connecting included."""
    data = json.dumps(body)
    for attempt in (1, 2):
        start = time.perf_counter()
        conn = getattr(_clients, "conn", None)
        reused = conn is not None and conn.port == port
        if not reused:
            conn = _clients.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            conn.request("POST", "/api/search", body=data, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
        except (BrokenPipeError, ConnectionResetError, http.client.RemoteDisconnected):
            conn.close()
            _clients.conn = None
            if reused and attempt == 1:
                continue  # the server had closed the idle connection: once more, on a new one
            raise
        if response.will_close:
            conn.close()
        elapsed = time.perf_counter() - start
        if response.status != 200:
            raise SystemExit(f"API answered {response.status}: {payload[:300]!r}")
        return elapsed
    raise AssertionError("unreachable")


def ensure_embedded(corpus: Corpus) -> None:
    """Embed the corpus once with the bundled model into benchmarks/.cache/ (minutes; then reused)."""
    if corpus.embedded.exists():
        return
    CACHE.mkdir(parents=True, exist_ok=True)
    print(f"embedding {corpus.parquet.name} once into {corpus.embedded} ...", flush=True)
    command = [sys.executable, str(ROOT / "manage.py"), "embed_parquet", str(corpus.parquet)]
    subprocess.run([*command, str(corpus.embedded), "--batch-size", "128"], check=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", nargs="+", choices=sorted(CORPORA), default=["sotu", "debian"])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument(
        "--gunicorn", default="", help="extra gunicorn arguments, e.g. '--worker-class sync' to compare"
    )
    args = parser.parse_args()
    corpora = [CORPORA[name] for name in args.corpus]
    for corpus in corpora:
        ensure_embedded(corpus)
    # Declared before the database is migrated (which creates their indexes), for the server too.
    os.environ["VECTORSTORE_METADATA_KEYS"] = json.dumps(DECLARED)
    url = setup_database("searchbench")
    for corpus in corpora:
        print(f"\n== corpus {corpus.name}: {corpus.parquet.name} ==", flush=True)
        bench(corpus, url, args)


def bench(corpus: Corpus, url: str, args: argparse.Namespace) -> None:
    import psycopg
    from pgvector.psycopg import register_vector

    from vectorstore.embedding import Embedder
    from vectorstore.loading import ingest
    from vectorstore.models import SearchTuning
    from vectorstore.search import forget_tuning, index_settings, search, tuned_settings

    with psycopg.connect(url, autocommit=True) as c:  # the previous corpus out, its tuning too
        c.execute("TRUNCATE vectorstore_document RESTART IDENTITY CASCADE")
    SearchTuning.objects.all().delete()
    forget_tuning()
    data = pq.read_table(corpus.embedded)
    if corpus.name == "debian":  # a metadata key that splits the corpus coarsely (10% filters)
        data = data.append_column("section", data.column("category"))
    report = ingest.load(data, progress=False, name=corpus.embedded.name)
    tuned = report.tuned or {}
    load_only = report.seconds - tuned.get("seconds", 0.0)
    print(
        f"loaded {report.rows:,} texts in {load_only:.1f} s (indexes {report.index_seconds:.1f} s); "
        "then tuned "
        f"{tuned.get('setting')} = {tuned.get('value')} in {tuned.get('seconds', 0):.1f} s "
        f"({tuned.get('seconds', 0) / load_only:.0%} of the load; goal < 10%), tried {tuned.get('tried')}"
    )
    texts = corpus.queries(args.queries)
    embedder = Embedder()
    vectors = embedder.encode(texts)

    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)

    # Recall@10 against exact search: the defaults (the tuned setting), and pgvector's own default.
    truths = [set(exact_top(conn, v, 10)) for v in vectors]
    for label, knob in (
        ("default settings (tuned)", {}),
        ("pgvector's default ef_search 40", {"ef_search": 40}),
    ):
        recalls = [
            len(truth & {h.values["id"] for h in search(vector=v, k=10, **knob).hits}) / 10
            for v, truth in zip(vectors, truths, strict=True)
        ]
        print(f"recall@10, {label}, {len(vectors)} queries: {np.mean(recalls):.3f}  (goal >= 0.95)")
    used = index_settings(None, None, None, tuned_settings(report.table, "default"))
    print(f"  the settings searches used: {used}")

    # The same under a 1%-selective filter: one President's passages, one package section.
    counts = conn.execute(
        f"SELECT {corpus.filter_sql}, count(*) FROM vectorstore_document"
        " GROUP BY 1 ORDER BY abs(count(*) - %s)",
        [report.rows // 100],
    ).fetchall()
    value, matching = counts[0]
    filt = {corpus.filter_key: value}
    recalls, short = [], 0
    for v in vectors:
        truth = set(exact_top(conn, v, 10, f"WHERE {corpus.filter_sql} = %s", (value,)))
        hits = search(vector=v, k=10, filters=filt).hits
        short += len(hits) < 10
        recalls.append(len(truth & {h.values["id"] for h in hits}) / 10)
    print(
        f"recall@10 with a {matching / report.rows:.1%} filter ({corpus.filter_key}={value}, "
        f"{matching} rows): "
        f"{np.mean(recalls):.3f}, short answers {short}/{len(vectors)}  (goal >= 0.90, none short)"
    )

    # API latency against the same query in raw psycopg, one client.
    with serve(url, workers=2, extra=shlex.split(args.gunicorn)) as port:
        for v in vectors[:20]:  # warm both workers
            post(port, {"vector": v.tolist(), "k": 10})
        for t in texts[:4]:
            post(port, {"query": t, "k": 10})

        filtered_searches(corpus, port, vectors, report.rows, conn)

        # The API's own SET LOCALs, in its transaction, sent as a careful psycopg client would: BEGIN,
        # the settings, the query and COMMIT in one pipeline (one round trip), the vector in binary.
        settings = api_settings(report.table)

        def raw(v: np.ndarray, c=conn) -> float:
            start = time.perf_counter()
            raw_search(c, v, settings)
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

        # A mixed load: half the clients send vector queries, half text queries (which embed on the
        # server). Text queries must not starve vector ones: compare the vector clients with and
        # without the text clients beside them.
        half = max(1, args.clients // 2)
        seconds = 10.0

        def vector_client(out: list[float], stop: float) -> None:
            i = 0
            while time.perf_counter() < stop:
                out.append(post(port, {"vector": vectors[i % len(vectors)].tolist(), "k": 10}))
                i += 1

        def text_client(out: list[float], stop: float, tag: int) -> None:
            i = 0
            while time.perf_counter() < stop:
                out.append(post(port, {"query": f"{texts[i % len(texts)]} [mix {tag}.{i}]", "k": 10}))
                i += 1

        def mixed(with_text: bool) -> tuple[list[float], list[float]]:
            vector_ms: list[list[float]] = [[] for _ in range(half)]
            text_ms: list[list[float]] = [[] for _ in range(half)]
            stop = time.perf_counter() + seconds
            threads = [threading.Thread(target=vector_client, args=(vector_ms[i], stop)) for i in range(half)]
            if with_text:
                threads += [
                    threading.Thread(target=text_client, args=(text_ms[i], stop, i)) for i in range(half)
                ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            return [x * 1000 for xs in vector_ms for x in xs], [x * 1000 for xs in text_ms for x in xs]

        alone, _ = mixed(False)
        beside, text_beside = mixed(True)
        (a50, a99), (b50, b99) = pct(alone), pct(beside)
        t50, t99 = pct(text_beside) if text_beside else (float("nan"), float("nan"))
        print(
            f"mixed load, {seconds:.0f} s: {half} vector clients alone {len(alone) / seconds:,.0f}/s "
            f"(p50 {a50:.1f} ms, p99 {a99:.1f} ms); beside {half} text clients "
            f"{len(beside) / seconds:,.0f}/s "
            f"(p50 {b50:.1f} ms, p99 {b99:.1f} ms, ratio {len(beside) / max(1, len(alone)):.2f}); "
            f"the text clients {len(text_beside) / seconds:,.0f}/s (p50 {t50:.1f} ms, p99 {t99:.1f} ms)"
        )


def filtered_searches(corpus: Corpus, port: int, vectors: list[np.ndarray], rows: int, conn) -> None:
    """Through the API: a column filter and a metadata equality at about 0.1%, 1% and 10% of the rows, a
    range on a declared key and filters that match nothing; each one's p50 against unfiltered, its
    recall@10 against the exact filtered answer, and answers short of k where k rows match."""
    from django.db.models import F, Value

    from vectorstore.models import Document
    from vectorstore.search import distance_expression
    from vectorstore.search.filters import build_filter

    def closest(sql: str, share: float) -> tuple:
        return conn.execute(
            f"SELECT {sql}, count(*) FROM vectorstore_document GROUP BY 1"
            " ORDER BY abs(count(*) - %s) LIMIT 1",
            [max(1, round(rows * share))],
        ).fetchone()

    cases: list[tuple[str, dict]] = [("none (unfiltered)", {})]
    for share in (0.001, 0.01, 0.1):
        value, _ = closest("category", share)
        cases.append((f"column category, ~{share:.1%}", {"category": value}))
        keys = ("president", "year") if corpus.name == "sotu" else ("source", "section")
        found = {key: closest(f"metadata->'{key}'", share) for key in keys}
        key = min(found, key=lambda key: abs(found[key][1] - rows * share))
        cases.append((f"metadata {key}, ~{share:.1%}", {key: found[key][0]}))
    cases.append(("declared-key range, ~1%", DECLARED_RANGES[corpus.name]))
    cases.append(("no match: column", {"category": "no such category"}))
    cases.append(("no match: metadata key", {"zzz": 1}))

    sample = vectors[:100]
    print(f"filtered vector queries through the API, k=10, {len(sample)} queries each:")
    print(f"  {'filter':<34} {'matches':>8} {'p50 ms':>7} {'x unfilt.':>9} {'recall@10':>9} {'short':>5}")
    base_p50 = None
    for label, filters in cases:
        matching = Document.objects.filter(build_filter(filters)) if filters else Document.objects.all()
        count = matching.count()
        latencies, recalls, short = [], [], 0
        for v in sample:
            body = {"vector": v.tolist(), "k": 10, **({"filters": filters} if filters else {})}
            latencies.append(post(port, body) * 1000)
        for v in sample[:30]:  # the answers, against the exact filtered ones
            exact = list(
                matching.annotate(d=distance_expression("cosine", v))
                .order_by(F("d") + Value(0.0))
                .values_list("pk", flat=True)[:10]
            )
            got = _search_ids(port, v, filters)
            short += len(got) < min(10, count)
            recalls.append(len(set(got) & set(exact)) / len(exact) if exact else 1.0)
        p50 = float(np.percentile(latencies, 50))
        base_p50 = base_p50 or p50
        print(
            f"  {label:<34} {count:>8,} {p50:>7.2f} {p50 / base_p50:>9.2f} {np.mean(recalls):>9.3f} "
            f"{short:>5}"
        )
    print("  (goals: p50 <= 3x unfiltered, recall@10 >= 0.95, no short answer)")


def _search_ids(port: int, vector: np.ndarray, filters: dict) -> list[int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        body = {"vector": vector.tolist(), "k": 10, **({"filters": filters} if filters else {})}
        conn.request(
            "POST", "/api/search", body=json.dumps(body), headers={"Content-Type": "application/json"}
        )
        response = conn.getresponse()
        payload = json.loads(response.read())
    finally:
        conn.close()
    return [hit["id"] for hit in payload["results"]]


if __name__ == "__main__":
    main()
