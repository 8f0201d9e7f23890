"""Bounded API load: N clients against the production server (gunicorn, DEBUG off) on 127.0.0.1 for a
fixed time, mixing searches, reads and inserts. Reports errors, per-operation p50/p99 and throughput.

    .venv/bin/python -m benchmarks.bench_load [--clients 8] [--seconds 30] [--workers 2] [--replicas N]

It works in its own database, created afresh and filled with fixtures/sotu.parquet (3,954 passages;
embedded once with the bundled model and cached in benchmarks/.cache/). tests/test_load.py runs the
same load for a shorter time against the test database and asserts that nothing failed and every
insert was stored once; it never asserts a timing.

With ``--replicas N`` it runs on an embedded primary of its own (benchmarks/.cache/replicas-primary,
so that the base backups copy only this database) with N streaming replicas (``project.db replica``),
the load once against the primary alone and once with ``DATABASE_REPLICA_URLS`` naming the replicas,
and reports errors and the share of reads each database answered.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from urllib.parse import urlsplit, urlunsplit

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
    parser.add_argument(
        "--replicas",
        type=int,
        default=0,
        help="streaming replicas of a primary of its own: runs without them, then with them",
    )
    parser.add_argument(
        "--reads-with-token",
        type=float,
        default=0.0,
        help="share of reads sent with the writers' token (read-your-writes applies to them)",
    )
    args = parser.parse_args()

    replica_urls: list[str] = []
    if args.replicas:
        if os.environ.get("DATABASE_URL"):
            raise SystemExit("--replicas makes replicas of the embedded server: unset DATABASE_URL")
        os.environ["VECTORSTORE_PGDATA"] = str(CACHE / "replicas-primary")
        from project.db import start_replica

        replica_urls = [start_replica(f"bench{n + 1}") for n in range(args.replicas)]
    url = setup_database("load")
    # The replicas hold every database of the primary: point their URLs at this run's.
    database = urlsplit(url).path
    replica_urls = [urlunsplit(urlsplit(r)._replace(path=database)) for r in replica_urls]
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    from vectorstore.loading import ingest
    from vectorstore.loading.embed_parquet import embed_parquet
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

    runs: list[tuple[str, dict[str, str]]] = [
        ("one torch thread per core per worker (project/gunicorn.py)", {})
    ]
    if args.baseline_threads:
        runs.append(
            (
                f"{args.baseline_threads} torch threads per worker",
                {"VECTORSTORE_TORCH_THREADS": str(args.baseline_threads)},
            )
        )
    if replica_urls:
        runs = [
            ("primary alone", {}),
            (f"primary + {len(replica_urls)} replica(s)", {"DATABASE_REPLICA_URLS": ",".join(replica_urls)}),
        ]
        for replica_url in replica_urls:
            wait_for_replay(url, replica_url)
    results = []
    for label, extra_env in runs:
        env = {**os.environ, **extra_env}
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
                reads_with_token=args.reads_with_token,
            )
        print(f"== {label}")
        print(result.report())
        stored = Document.objects.count() - before
        print(f"inserts answered 201: {len(result.created)}, stored: {stored}")
        if result.error_count or stored != len(result.created):
            raise SystemExit(1)
        for replica_url in replica_urls:
            wait_for_replay(url, replica_url)
            counts = [count_documents(u) for u in (url, replica_url)]
            print(
                f"documents on the primary / the replica once it replayed the run: {counts[0]} / {counts[1]}"
            )
            if counts[0] != counts[1]:
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
                    "reads_answered_by": result.read_from,
                    "ops": {op: [n, round(p50, 1), round(p99, 1)] for op, n, p50, p99 in result.table()},
                }
            )
        )
    if len(results) == 2:
        first, second = (r.requests / r.seconds for r in results)
        p99_first, p99_second = (r.table()[-1][3] for r in results)
        print(
            f"requests/s {runs[1][0]} / {runs[0][0]}: {second / first:.2f}; "
            f"p99 {runs[1][0]} / {runs[0][0]}: {p99_second / p99_first:.2f}"
        )
    if replica_urls:
        from project.db import stop_embedded, stop_replica

        for n in range(len(replica_urls)):
            stop_replica(f"bench{n + 1}")
        stop_embedded()


def count_documents(database_url: str) -> int:
    import psycopg

    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute("SELECT count(*) FROM vectorstore_document").fetchone()[0]


def wait_for_replay(primary_url: str, replica_url: str, timeout: float = 300) -> None:
    """Until the replica has replayed the load and its index builds (reads would go to the primary)."""
    import psycopg

    with psycopg.connect(primary_url, autocommit=True) as primary:
        (target,) = primary.execute("SELECT pg_current_wal_lsn()").fetchone()
    deadline = time.monotonic() + timeout
    with psycopg.connect(replica_url, autocommit=True) as replica:
        while not replica.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", [str(target)]).fetchone()[
            0
        ]:
            if time.monotonic() > deadline:
                raise SystemExit(f"the replica has not replayed the load in {timeout:.0f} s")
            time.sleep(0.1)


if __name__ == "__main__":
    main()
