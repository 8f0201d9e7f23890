"""Stress for the TOAST error seen twice in the suite (``missing chunk number 0 for toast value ... in
pg_toast_...`` on one xdist worker's database, after a failed COPY then ``CREATE INDEX ... gin
(search_vector)``, and every later load on that worker failing).

    .venv/bin/python -m benchmarks.stress_toast --minutes 10            # every variant, both cores busy
    .venv/bin/python -m benchmarks.stress_toast --minutes 2 --variant savepoint --no-burn

Each round runs the suite's sequence on one connection, as pytest-django runs a test (``savepoint``: in
one outer transaction that is rolled back at the end, each load a savepoint; ``transaction``: each load
its own transaction, the table emptied after), with long texts whose text and tsvector are TOASTed:

1. a first load into the empty table (indexes dropped, COPY, indexes built, GIN on search_vector too);
2. a load that fails inside its COPY (a late row that a CHECK constraint of this database refuses);
3. a load that fails in its checks after earlier batches were COPYed (NaN in a late row);
4. a load through the staging table and merge (``on_conflict="update"``), then one more plain load
   larger than the table (indexes dropped and built again);
5. every row read whole (text, search_vector, metadata): a dangling TOAST pointer fails here.

Beside it, as in the suite: a thread writing query-log batches with ``synchronous_commit = off`` on its
own connection, and (unless ``--no-burn``) two processes spinning on the CPUs. It reports the rounds
run, the errors by kind and the first traceback of each; exit status 1 if any TOAST error was seen.
"""

from __future__ import annotations

import argparse
import multiprocessing
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness import ROOT, setup_database

VARIANTS = ("savepoint", "transaction")


def _burn(stop: multiprocessing.Event) -> None:  # type: ignore[valid-type]
    while not stop.is_set():
        sum(i * i for i in range(10_000))


def _table(
    texts: list[str], start: int, n: int, seed: int, nan_at: int | None = None, poison_at: int | None = None
) -> pa.Table:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, 384)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    if nan_at is not None:
        vectors[nan_at, 0] = np.nan
    return pa.table(
        {
            "id": [f"row-{start + i}" for i in range(n)],
            # Long enough that the row passes PostgreSQL's 2 kB: the text and its tsvector go to TOAST.
            "text": [" ".join(texts[(start + i + k) % len(texts)] for k in range(3)) for i in range(n)],
            "category": ["poison" if i == poison_at else f"c{i % 4}" for i in range(n)],
            "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        }
    )


def _query_log_writer(url: str, stop: threading.Event, errors: Counter) -> None:
    """Batches of the query log committed without waiting for the WAL flush, as query_log.flush does."""
    import psycopg
    from pgvector.psycopg import register_vector

    rng = np.random.default_rng(1)
    with psycopg.connect(url, autocommit=True) as conn:
        register_vector(conn)
        slot = 0
        while not stop.is_set():
            try:
                with conn.transaction():
                    conn.execute("SET LOCAL synchronous_commit = off")
                    for _ in range(100):
                        conn.execute(
                            "INSERT INTO vectorstore_querylog (db_table, slot, vector, created_at)"
                            " VALUES ('stress', %s, %s, now()) ON CONFLICT (db_table, slot)"
                            " DO UPDATE SET vector = EXCLUDED.vector, created_at = EXCLUDED.created_at",
                            [slot % 1000, rng.standard_normal(384).astype(np.float32)],
                        )
                        slot += 1
            except psycopg.Error as exc:
                errors[f"query log: {type(exc).__name__}"] += 1
            time.sleep(0.01)


EXPECTED: Counter = Counter()  # how the loads meant to fail failed


def _round(variant: str, texts: list[str], n: int, seed: int, folder) -> None:
    from django.db import connection, transaction

    from vectorstore.loading import ingest
    from vectorstore.models import Document
    from vectorstore.validation import InputError

    def path(name: str, table: pa.Table) -> str:
        out = folder / f"{name}.parquet"
        pq.write_table(table, out)
        return str(out)

    first = path("first", _table(texts, 0, n, seed))
    # Refused by the server inside the COPY, after most of its rows (a CHECK constraint of this database).
    poisoned = path("poisoned", _table(texts, 5 * n, 2 * n, seed + 1, poison_at=2 * n - 3))
    late_nan = path("late-nan", _table(texts, 10 * n, 3 * n, seed + 2, nan_at=3 * n - 2))
    merge = path("merge", _table(texts, n // 2, n, seed + 3))
    more = path("more", _table(texts, 20 * n, 3 * n, seed + 4))
    options = {"progress": False, "tune": False, "batch_size": max(64, n // 4)}

    def sequence() -> None:
        ingest.load(first, **options)
        for failing in (poisoned, late_nan):
            try:
                with transaction.atomic():
                    ingest.load(failing, **options)
            except (InputError, Exception) as exc:  # the failure is the point; anything else is counted
                if "toast" in str(exc).lower():
                    raise
                message = str(exc).splitlines()[0].replace(f"{failing}: ", "")
                EXPECTED[f"{Path(failing).stem}: {message[:70]}"] += 1
        ingest.load(merge, on_conflict="update", id_column="id", **options)
        ingest.load(more, **options)
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT sum(length(text)), sum(length(search_vector::text)), count(metadata)"
                " FROM vectorstore_document"
            )
            cursor.fetchone()
        assert Document.objects.count() == 4 * n + n // 2

    if variant == "savepoint":

        class Rollback(Exception):
            pass

        try:
            with transaction.atomic():
                sequence()
                raise Rollback
        except Rollback:
            pass
    else:
        try:
            sequence()
        finally:
            with connection.cursor() as cursor:
                cursor.execute("TRUNCATE vectorstore_document RESTART IDENTITY CASCADE")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--variant", choices=VARIANTS, nargs="+", default=list(VARIANTS))
    parser.add_argument("--no-burn", action="store_true", help="leave the CPUs to the stress alone")
    parser.add_argument(
        "--parallel",
        action="store_true",
        help="every index build with a parallel worker (the table's parallel_workers = 1): PostgreSQL 18"
        " builds GIN indexes in parallel, but only over tables past min_parallel_table_scan_size otherwise",
    )
    args = parser.parse_args()
    import tempfile

    url = setup_database("toaststress")
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "ALTER TABLE vectorstore_document ADD CONSTRAINT stress_poison CHECK (category <> 'poison')"
        )
        if args.parallel:
            conn.execute("ALTER TABLE vectorstore_document SET (parallel_workers = 1)")
    texts = pq.read_table(ROOT / "fixtures" / "sotu.parquet", columns=["text"]).column("text").to_pylist()
    stop_burn = multiprocessing.Event()
    burners = (
        [] if args.no_burn else [multiprocessing.Process(target=_burn, args=(stop_burn,)) for _ in range(2)]
    )
    for p in burners:
        p.start()
    stop = threading.Event()
    errors: Counter = Counter()
    first_seen: dict[str, str] = {}
    writer = threading.Thread(target=_query_log_writer, args=(url, stop, errors), daemon=True)
    writer.start()
    rounds = 0
    deadline = time.monotonic() + 60 * args.minutes
    try:
        with tempfile.TemporaryDirectory() as tmp:
            while time.monotonic() < deadline:
                variant = args.variant[rounds % len(args.variant)]
                try:
                    _round(variant, texts, args.rows, rounds, Path(tmp))
                except Exception as exc:
                    kind = f"{variant}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
                    errors[kind] += 1
                    first_seen.setdefault(kind, traceback.format_exc())
                rounds += 1
                if rounds % 10 == 0:
                    print(f"  {rounds} rounds, errors: {dict(errors) or 'none'}", flush=True)
    finally:
        stop.set()
        stop_burn.set()
        for p in burners:
            p.join()
        writer.join(timeout=10)
    toast = sum(count for kind, count in errors.items() if "toast" in kind.lower())
    seen = dict(errors) or "none"
    print(f"{rounds} rounds ({', '.join(args.variant)}), {args.rows} rows a load; errors: {seen}")
    print(f"the loads meant to fail: {dict(EXPECTED)}")
    for kind, text in first_seen.items():
        print(f"\n-- first {kind}\n{text}")
    raise SystemExit(1 if toast else 0)


if __name__ == "__main__":
    main()
