"""Where a vector query's time goes between raw psycopg and the HTTP API: the same queries, one at a time,
through each layer in turn, in one process (ratios and differences, never absolute claims).

    .venv/bin/python -m benchmarks.bench_overhead --corpus debian

Layers: raw psycopg (the API's columns, settings and transaction, one pipelined round trip); ``search()``
called directly; the site's WSGI application called directly with the request, its lean read path
(``vectorstore.api.lean``: the schema's validator, the service, orjson) and Django's own (URL resolution,
middleware, ninja's body parsing and the response), no HTTP; the same request through gunicorn as ``make
serve`` starts it (the lean path). Loads the corpus as bench_search.py does (cached embeddings).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import time

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_search import CORPORA, api_settings, post, raw_search
from benchmarks.harness import serve, setup_database


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="debian")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument(
        "--middleware",
        action="store_true",
        help="also the WSGI app's p50 with each of the site's middleware left out in turn",
    )
    args = parser.parse_args()
    corpus = CORPORA[args.corpus]
    if not corpus.embedded.exists():
        raise SystemExit(
            f"run benchmarks.bench_search --corpus {corpus.name} once first (it embeds the corpus)"
        )
    os.environ["DJANGO_DEBUG"] = "0"
    url = setup_database("overheadbench")
    import psycopg
    from pgvector.psycopg import register_vector

    from project.wsgi import application, django_application
    from vectorstore.loading import ingest
    from vectorstore.search import search

    report = ingest.load(pq.read_table(corpus.embedded), progress=False, name=corpus.embedded.name)
    conn = psycopg.connect(url, autocommit=True)
    register_vector(conn)
    stored = conn.execute(
        "SELECT embedding FROM vectorstore_document ORDER BY random() LIMIT %s", [args.queries]
    )
    rng = np.random.default_rng(0)
    vectors = [np.asarray(r[0].to_numpy()) + rng.normal(0, 0.02, 384).astype(np.float32) for r in stored]
    requests = [{"vector": v.tolist(), "k": 10} for v in vectors]
    bodies = [json.dumps(r).encode() for r in requests]

    settings = api_settings(report.table)

    def raw(v: np.ndarray) -> None:
        raw_search(conn, v, settings)

    def wsgi(body: bytes, app=django_application) -> None:
        environ = {
            "REQUEST_METHOD": "POST",
            "PATH_INFO": "/api/search",
            "SCRIPT_NAME": "",
            "QUERY_STRING": "",
            "CONTENT_TYPE": "application/json",
            "CONTENT_LENGTH": str(len(body)),
            "wsgi.input": io.BytesIO(body),
            "wsgi.errors": io.StringIO(),
            "wsgi.url_scheme": "http",
            "SERVER_NAME": "127.0.0.1",
            "SERVER_PORT": "80",
            "HTTP_HOST": "127.0.0.1",
            "REMOTE_ADDR": "127.0.0.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
        }
        status = []
        b"".join(app(environ, lambda s, headers: status.append(s)))
        if not status[0].startswith("200"):
            raise SystemExit(f"WSGI answered {status[0]}")

    def p50(fn, items) -> float:
        for item in items[:20]:  # warm up
            fn(item)
        times = []
        for item in items:
            start = time.perf_counter()
            fn(item)
            times.append(time.perf_counter() - start)
        return float(np.percentile(times, 50)) * 1000

    with serve(url, workers=2) as port:
        rounds = []
        for _ in range(3):  # interleaved rounds: the machine's noise falls on every layer alike
            rounds.append(
                (
                    p50(raw, vectors),
                    p50(lambda v: search(vector=v, k=10), vectors),
                    p50(lambda body: wsgi(body, application), bodies),
                    p50(wsgi, bodies),
                    p50(lambda body: post(port, body), requests),
                )
            )
    r, s, lean, w, h = (float(np.median(column)) for column in zip(*rounds, strict=True))
    print(
        f"corpus {corpus.name}, {report.rows:,} rows, {len(vectors)} vector queries, k=10; p50 of 3 rounds:"
    )
    print(f"  raw psycopg                    {r:6.2f} ms")
    print(f"  search() in process            {s:6.2f} ms  (+{s - r:.2f} over raw)")
    print(
        f"  lean read path, no HTTP        {lean:6.2f} ms  (+{lean - s:.2f}: the validator, orjson, signals)"
    )
    print(f"  Django WSGI app, no HTTP       {w:6.2f} ms  (+{w - s:.2f}: Django, ninja, JSON in and out)")
    print(
        f"  gunicorn over HTTP (keep-alive) {h:5.2f} ms  (+{h - lean:.2f} over the lean path: HTTP, server)"
    )
    if args.middleware:
        middleware_costs(django_application, wsgi, p50, bodies)


def middleware_costs(application, wsgi, p50, bodies) -> None:
    """What each middleware costs a cookie-less JSON search: the in-process WSGI p50 with all of the site's
    middleware against the same with one left out (the handler rebuilt for each list), interleaved in a
    shuffled order."""
    from django.conf import settings

    full = list(settings.MIDDLEWARE)
    lists = {"(all)": full, **{m.rsplit(".", 1)[1]: [x for x in full if x != m] for m in full}, "(none)": []}
    found: dict[str, list[float]] = {name: [] for name in lists}
    failed: dict[str, str] = {}
    try:
        order = list(lists.items())
        for round_ in range(5):  # each round in another order: no list is always measured first
            np.random.default_rng(round_).shuffle(order)
            for name, middleware in order:
                settings.MIDDLEWARE = middleware
                application.load_middleware()
                try:
                    found[name].append(p50(wsgi, bodies))
                except SystemExit as exc:  # the view needs what this middleware gives it
                    found[name].append(float("nan"))
                    failed[name] = str(exc)
    finally:
        settings.MIDDLEWARE = full
        application.load_middleware()
    base = float(np.median(found["(all)"]))
    print(f"  each middleware, by the WSGI p50 without it (all of them: {base:.3f} ms; median of 5 rounds):")
    for name, times in found.items():
        if name in failed:
            print(f"    without {name:32s} {failed[name]}")
        elif name != "(all)":
            without = float(np.median(times))
            print(f"    without {name:32s} {without:6.3f} ms ({base - without:+.3f})")


if __name__ == "__main__":
    main()
