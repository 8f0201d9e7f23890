"""Changing the embedding model while the site serves (issue 36): the goals, each against its baseline in
the same process.

    .venv/bin/python -m benchmarks.bench_reembed                        # debian, about 20 minutes
    .venv/bin/python -m benchmarks.bench_reembed --corpus sotu --rows 20000 --only rate

The new model is made here from the bundled one, as the tests make theirs: all-MiniLM-L6-v2 with a
linear head to 256 dimensions (``tests.helpers.small_model``), a real sentence-transformers model of
another dimension, loaded from its own directory.

- **rate**: ``reembed`` of ``--rate-rows`` rows (the fill: every row embedded by the new model into the
  shadow column) against ``embed_parquet`` of the same texts with the same model, batch size and device,
  alternating, twice: rows/s, goal >= 0.9x.
- **serve**: the whole corpus loaded as ``bulk_copy`` loads it, served as ``make serve`` serves it, with
  ``--clients`` threads searching through the API (POST /api/search, real queries by text) while
  ``reembed`` moves the table: failed searches (any answer but 200), goal 0; answers before and after the
  swap. A search of the old model against the new column (another dimension) cannot answer: it fails,
  so 0 failures also says no answer mixed the models.
- **recall**: after the swap, recall@10 of the real queries (embedded by the new model) through
  ``search()`` against exact search over the new vectors, beside the tuner's target.
"""

from __future__ import annotations

import argparse
import http.client
import json
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_search import CORPORA, ensure_embedded
from benchmarks.harness import ROOT, serve, setup_database

# The tuner's default target (tune_search --target-recall).
TARGET = 0.95


def _new_model(base: Path) -> str:
    import sys

    sys.path.insert(0, str(ROOT))
    from tests.helpers import small_model

    return small_model(base / "minilm-256", 256, seed=7)


def _load(url: str, embedded: Path, rows: int | None, tmp: Path) -> None:
    """The corpus (its first ``rows``) loaded into an empty table, as bulk_copy loads it."""
    import psycopg
    from django.core.management import call_command

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE vectorstore_document CASCADE")
        c.execute("DELETE FROM vectorstore_searchtuning")
        c.execute("DELETE FROM vectorstore_embeddingrecord")
    source = embedded
    if rows is not None:
        source = tmp / "rows.parquet"
        pq.write_table(pq.read_table(embedded).slice(0, rows), source)
    call_command("bulk_copy", str(source), "--tune", "off", verbosity=0)


def rate(url: str, embedded: Path, new_model: str, rows: int, tmp: Path) -> None:
    from vectorstore.embedding import Embedder
    from vectorstore.loading.embed_parquet import embed_parquet
    from vectorstore.models import Document
    from vectorstore.reembed import record, service

    _load(url, embedded, rows, tmp)
    texts = tmp / "texts.parquet"
    pq.write_table(pq.read_table(embedded, columns=["text"]).slice(0, rows), texts)
    embedder = Embedder(model=new_model)
    embedder.encode(["warm-up"])  # both timed without the model's loading
    pairs = []
    for round_ in (1, 2):
        started = time.perf_counter()
        embed_parquet(texts, tmp / "out.parquet", embedder=embedder, progress=False)
        baseline = rows / (time.perf_counter() - started)
        report = service.reembed(Document, model=new_model, tune=False, progress=False)
        assert report.swapped and report.documents == rows, report
        pairs.append((report.rows_per_s, baseline))
        print(
            f"rate round {round_}: reembed {report.rows_per_s:,.1f} rows/s, embed_parquet {baseline:,.1f}"
            f" texts/s: {report.rows_per_s / baseline:.3f}x ({rows:,} rows)",
            flush=True,
        )
        # Back to the bundled model's vectors for the next round (the kept ones), then dropped.
        service.reembed(Document, rollback=True, tune=False, progress=False)
        service.drop_old(Document)
        record.forget()
    ratios = [a / b for a, b in pairs]
    print(f"rate: reembed / embed_parquet {min(ratios):.3f}-{max(ratios):.3f}x (goal >= 0.9x)", flush=True)


def _searcher(port: int, queries: list[str], stop: threading.Event, out: dict, swapped: list) -> None:
    conn = None
    i = 0
    while not stop.is_set():
        body = json.dumps({"query": queries[i % len(queries)], "k": 10})
        i += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
            conn.request("POST", "/api/search", body=body, headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            payload = response.read()
            if response.will_close:
                conn.close()
                conn = None
            side = "after" if swapped else "before"
            if response.status == 200:
                out[side] += 1
            else:
                out["failed"] += 1
                out["errors"].append(f"{response.status}: {payload[:200]!r}")
        except (OSError, http.client.HTTPException) as exc:
            out["failed"] += 1
            out["errors"].append(f"{type(exc).__name__}: {exc}")
            conn = None


def served(url: str, embedded: Path, new_model: str, queries: list[str], clients: int, tmp: Path) -> None:
    from django.db import connections

    from vectorstore import search
    from vectorstore.models import Document
    from vectorstore.reembed import record, service
    from vectorstore.tuning import tune

    _load(url, embedded, None, tmp)
    tune(Document, query_model="pseudo")  # as bulk_copy --tune now would
    n = Document.objects.count()
    out = {"before": 0, "after": 0, "failed": 0, "errors": []}
    swapped: list[bool] = []
    stop = threading.Event()
    with serve(url, workers=2) as port:
        threads = [
            threading.Thread(target=_searcher, args=(port, queries, stop, out, swapped))
            for _ in range(clients)
        ]
        for thread in threads:
            thread.start()
        try:
            time.sleep(5)
            started = time.perf_counter()
            report = service.reembed(Document, model=new_model, progress=True)
            swapped.append(True)
            seconds = time.perf_counter() - started
            time.sleep(5)
        finally:
            stop.set()
            for thread in threads:
                thread.join()
    print(
        f"serve: reembed of {n:,} rows in {seconds:.1f} s ({report.rows_per_s:,.1f} rows/s while "
        f"{clients} clients searched); searches {out['before']:,} before the swap, {out['after']:,} after, "
        f"{out['failed']} failed (goal 0); {report.late} rows embedded under the swap's lock; "
        f"tuned: {report.tuning}",
        flush=True,
    )
    for error in out["errors"][:5]:
        print(f"  failed: {error}", flush=True)

    # Recall of the real queries with the new model's index, against exact search of the new vectors.
    record.forget()
    ids = np.array(Document.objects.order_by("pk").values_list("pk", flat=True))
    matrix = np.stack(
        [
            np.asarray(v, np.float32)
            for v in Document.objects.order_by("pk").values_list("embedding", flat=True)
        ]
    )
    hits = []
    for query in queries:
        vector = search.embed_query(query, Document)
        exact = set(ids[np.argsort(-(matrix @ vector))[:10]].tolist())
        found = {h.values["id"] for h in search.search(vector=vector, k=10, log_query=False).hits}
        hits.append(len(found & exact) / 10)
    print(
        f"recall: recall@10 of {len(queries)} real queries with the new model's index {np.mean(hits):.3f} "
        f"(the tuner's target {TARGET}; its setting {report.tuning})",
        flush=True,
    )
    connections.close_all()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default="debian", choices=sorted(CORPORA))
    parser.add_argument("--rate-rows", type=int, default=20000)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--only", nargs="*", choices=["rate", "serve"], default=["rate", "serve"])
    args = parser.parse_args()
    corpus = CORPORA[args.corpus]
    ensure_embedded(corpus)
    url = setup_database("bench_reembed")
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        new_model = _new_model(tmp)
        queries = corpus.queries(200)
        if "rate" in args.only:
            rate(url, corpus.embedded, new_model, args.rate_rows, tmp)
        if "serve" in args.only:
            served(url, corpus.embedded, new_model, queries, args.clients, tmp)


if __name__ == "__main__":
    main()
