"""Bounded API load: N clients against the production server (gunicorn, DEBUG off) on 127.0.0.1 for a
fixed time, mixing searches, reads and inserts. Reports errors, per-operation p50/p99 and throughput.

    .venv/bin/python -m benchmarks.bench_load [--clients 8] [--seconds 30] [--workers 2]

It works in its own database, created afresh and filled with fixtures/sotu.parquet (3,954 passages;
embedded once with the bundled model and cached in benchmarks/.cache/). tests/test_load.py runs the
same load for a shorter time against the test database and asserts that nothing failed and every
insert was stored once; it never asserts a timing.
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
import pyarrow.parquet as pq

from benchmarks.harness import CACHE, ROOT, request, run_load, serve, setup_database


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--baseline-threads",
        type=int,
        default=0,
        help="then run again with this many torch threads per worker and print the ratios",
    )
    args = parser.parse_args()

    url = setup_database("load")
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from vectorstore import ingest
    from vectorstore.embed_parquet import embed_parquet
    from vectorstore.models import ApiToken, Document

    cache = CACHE / "sotu.embedded.parquet"
    if not cache.exists():
        cache.parent.mkdir(exist_ok=True)
        print("embedding fixtures/sotu.parquet once (about a minute on 2 cores) ...", flush=True)
        embed_parquet(ROOT / "fixtures" / "sotu.parquet", cache, progress=False)
    table = pq.read_table(cache)
    ingest.load(table, progress=False)
    user = get_user_model().objects.create_user("bench-load")
    user.user_permissions.add(Permission.objects.get(codename="add_document"))
    _, token = ApiToken.issue(user, "bench_load")
    vectors = np.asarray(table.column("embedding").to_pylist(), dtype=np.float32)
    texts = table.column("text").to_pylist()
    categories = sorted(set(Document.objects.values_list("category", flat=True)))
    ids = list(Document.objects.values_list("pk", flat=True))

    runs = [("one torch thread per core per worker (project/gunicorn.py)", None)]
    if args.baseline_threads:
        runs.append((f"{args.baseline_threads} torch threads per worker", str(args.baseline_threads)))
    results = []
    for label, threads in runs:
        env = dict(os.environ)
        if threads:
            env["VECTORSTORE_TORCH_THREADS"] = threads
        before = Document.objects.count()
        with serve(url, workers=args.workers, env=env) as port:
            for _ in range(args.workers * 2):  # every worker has loaded the model at boot
                request(port, "POST", "/api/search", {"query": "the union", "mode": "hybrid"})
            result = run_load(
                port,
                token=token,
                vectors=vectors,
                texts=texts,
                categories=categories,
                ids=ids,
                clients=args.clients,
                seconds=args.seconds,
                seed=len(results),
            )
        print(f"== {label}")
        print(result.report())
        stored = Document.objects.count() - before
        print(f"inserts answered 201: {len(result.created)}, stored: {stored}")
        if result.error_count or stored != len(result.created):
            raise SystemExit(1)
        results.append(result)
        print(
            json.dumps(
                {
                    "run": label,
                    "clients": args.clients,
                    "workers": args.workers,
                    "seconds": round(result.seconds, 1),
                    "requests_per_s": round(result.requests / result.seconds, 1),
                    "errors": result.error_count,
                    "ops": {op: [n, round(p50, 1), round(p99, 1)] for op, n, p50, p99 in result.table()},
                }
            )
        )
    if len(results) == 2:
        ours, base = (r.requests / r.seconds for r in results)
        p99_ours, p99_base = (r.table()[-1][3] for r in results)
        print(f"requests/s ours / baseline {ours / base:.2f}, p99 baseline / ours {p99_base / p99_ours:.2f}")


if __name__ == "__main__":
    main()
