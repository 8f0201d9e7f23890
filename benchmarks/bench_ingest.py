"""Ingestion benchmark: bulk_copy and embed_parquet against baselines run in the same process and database.

    .venv/bin/python -m benchmarks.bench_ingest            # about 5 minutes on 2 cores
    .venv/bin/python -m benchmarks.bench_ingest --quick    # smaller sizes, for a smoke run

It uses its own database, ``<name>_bench`` on the same server (the embedded one,
or DATABASE_URL's), created afresh and migrated each run, so stored data is never touched.
Prints one line per comparison with the ratio and the goal.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.harness import ROOT, setup_database

TABLE = "vectorstore_document"
COLUMNS = "external_id, text, embedding, category, metadata, created_at"


def make_parquet(path: Path, n: int, seed: int = 0, with_vectors: bool = True) -> Path:
    """n rows with the fixture's real texts (cycled) and columns; random unit vectors when asked."""
    fixture = pq.read_table(ROOT / "fixtures" / "sotu.parquet")
    idx = np.arange(n) % fixture.num_rows
    table = fixture.take(pa.array(idx))
    table = table.set_column(0, "id", pa.array([f"b{seed}-{i}" for i in range(n)]))
    if with_vectors:
        rng = np.random.default_rng(seed)
        writer = None
        for start in range(0, n, 100_000):
            part = table.slice(start, 100_000)
            v = rng.standard_normal((part.num_rows, 384), dtype=np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            col = pa.FixedSizeListArray.from_arrays(pa.array(v.ravel()), 384).cast(pa.list_(pa.float32()))
            part = part.append_column("embedding", col)
            writer = writer or pq.ParquetWriter(path, part.schema)
            writer.write_table(part)
        writer.close()
    else:
        pq.write_table(table, path)
    return path


def sql(statement: str) -> None:
    from vectorstore.loading.pgcopy import django_connection

    conn = django_connection()
    conn.execute(statement)
    if not conn.autocommit:
        conn.commit()


class Indexes:
    """The Document table's secondary indexes as migrated, to drop and restore between runs."""

    def __init__(self) -> None:
        from vectorstore.indexing.indexes import rebuildable_indexes
        from vectorstore.loading.pgcopy import django_connection

        self.all = rebuildable_indexes(django_connection(), TABLE)
        self.vector = [i for i in self.all if i.method in ("hnsw", "ivfflat")]
        assert self.vector, "the freshly migrated table has no vector index"

    def reset(self, with_vector: bool = True) -> None:
        sql(f"TRUNCATE {TABLE}")
        for index in self.all:
            sql(f'DROP INDEX IF EXISTS "{index.name}"')
        for index in self.all:
            if with_vector or index not in self.vector:
                sql(index.definition)


def raw_binary_copy(path: Path, table: str = TABLE, build: list | None = None) -> float:
    """pgvector-python's loading idiom: register_vector, set_types, write_row; optional index build after."""
    import psycopg
    from django.db import connections
    from pgvector.psycopg import register_vector
    from psycopg.types.json import Jsonb

    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    start = time.perf_counter()
    data = pq.read_table(path)
    vectors = np.asarray(data.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(
        -1, 384
    )
    # The same mapping as bulk_copy's: created_at to its column, the other extra columns to metadata.
    meta = [
        Jsonb({"president": p, "year": y})
        for p, y in zip(*(data.column(c).to_pylist() for c in ("president", "year")), strict=True)
    ]
    created = data.column("created_at").to_pylist()
    with psycopg.connect(**params) as conn:
        register_vector(conn)
        with (
            conn.cursor() as cur,
            cur.copy(f"COPY {table} ({COLUMNS}) FROM STDIN WITH (FORMAT BINARY)") as copy,
        ):
            copy.set_types(["varchar", "text", "vector", "varchar", "jsonb", "timestamptz"])
            for row in zip(
                data.column("id").to_pylist(),
                data.column("text").to_pylist(),
                vectors,
                data.column("category").to_pylist(),
                meta,
                created,
                strict=True,
            ):
                copy.write_row(row)
        if build:
            conn.execute("SET maintenance_work_mem = '1GB'")
            conn.execute(f"SET max_parallel_maintenance_workers = {max(0, (os.cpu_count() or 1) - 1)}")
            for index in build:
                conn.execute(index.definition)
        conn.commit()
        conn.execute(f"ANALYZE {table}")
    return time.perf_counter() - start


def text_copy(path: Path) -> float:
    """The notebook's pg_copy: vectors formatted as strings in Python, COPY in text (CSV) format."""
    import csv

    import psycopg
    from django.db import connections

    params = connections["default"].get_connection_params()
    params.pop("cursor_factory", None)
    start = time.perf_counter()
    df = pq.read_table(path).to_pandas()
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    for row in df.itertuples(index=False):
        vector = "[" + ",".join(str(float(x)) for x in row.embedding) + "]"
        meta = json.dumps({"president": row.president, "year": int(row.year)})
        writer.writerow([row.id, row.text, vector, row.category, meta, "now"])
    with psycopg.connect(**params) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {TABLE} ({COLUMNS}) FROM STDIN WITH (FORMAT csv)") as copy:
            copy.write(buffer.getvalue())
        conn.commit()
    return time.perf_counter() - start


def command(*args: str, code: str | None = None) -> tuple[float, dict]:
    """Run manage.py (or python -c code) in a child; return wall seconds and its JSON summary (last line)."""
    argv = (
        [sys.executable, "-c", code] if code else [sys.executable, str(ROOT / "manage.py"), *args, "--json"]
    )
    start = time.perf_counter()
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"{' '.join(argv[:4])} failed:\n{result.stderr[-3000:]}")
    return seconds, json.loads(result.stdout.strip().splitlines()[-1])


def peak_rss(args: list[str]) -> tuple[int, str]:
    """Peak resident memory (KiB) of one manage.py child, measured by GNU time.

    Not by wait4 from here: a child forked from this large process would report
    this process's memory as its own peak.
    """
    argv = ["/usr/bin/time", "-f", "maxrss=%M", sys.executable, str(ROOT / "manage.py"), *args]
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{args} failed:\n{result.stderr[-3000:]}")
    rss = int(result.stderr.strip().splitlines()[-1].split("=")[1])
    return rss, result.stdout.strip().splitlines()[-1]


def line(label: str, ratio: float, goal: str, ok: bool, detail: str) -> None:
    print(f"{label:<58} {ratio:7.2f}  goal {goal:<8} {'met' if ok else 'NOT MET':<7}  {detail}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-memory", action="store_true", help="skip the 1,000,000-row memory run")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=("copy", "first", "workers", "embed", "overlap", "memory"),
        help="run only these comparisons",
    )
    args = parser.parse_args()
    n_copy, n_first, n_pop, n_slow = (
        (20_000, 5_000, 5_000, 5_000) if args.quick else (100_000, 50_000, 50_000, 20_000)
    )
    setup_database("bench")
    from vectorstore.embedding import Embedder
    from vectorstore.loading import ingest
    from vectorstore.loading.embed_parquet import embed_parquet

    work = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    indexes = Indexes()
    print(f"database {os.environ['DATABASE_URL']}; work files in {work}", flush=True)
    if args.quick:
        print("--quick: sizes too small for the goals to mean anything; a smoke run only", flush=True)

    def want(section: str) -> bool:
        return not args.only or section in args.only

    # 1. The COPY path alone, into the table without its vector index.
    big = make_parquet(work / "copy.parquet", n_copy, seed=1)
    if want("copy"):
        indexes.reset(with_vector=False)
        report = ingest.load(big, index_strategy="keep", progress=False)
        ours = report.rows / report.seconds
        indexes.reset(with_vector=False)
        raw = n_copy / raw_binary_copy(big)
        line(
            f"bulk_copy / raw binary COPY ({n_copy:,} rows, no vector index)",
            ours / raw,
            ">= 0.9",
            ours / raw >= 0.9,
            f"{ours:,.0f} vs {raw:,.0f} rows/s",
        )
        slow = make_parquet(work / "slow.parquet", n_slow, seed=2)
        indexes.reset(with_vector=False)
        report = ingest.load(slow, index_strategy="keep", method="insert", progress=False)
        insert = report.rows / report.seconds
        indexes.reset(with_vector=False)
        text = n_slow / text_copy(slow)
        line(
            f"bulk_copy / --method insert ({n_slow:,} rows)",
            ours / insert,
            "report",
            True,
            f"{ours:,.0f} vs {insert:,.0f} rows/s",
        )
        line(
            f"bulk_copy / text-format COPY, notebook's pg_copy ({n_slow:,})",
            ours / text,
            "report",
            True,
            f"{ours:,.0f} vs {text:,.0f} rows/s",
        )

    # 2. A first load into the empty, indexed table: the whole command, against raw COPY with the index
    if want("first"):
        #    in place, and raw COPY followed by building the same indexes by hand.
        first = make_parquet(work / "first.parquet", n_first, seed=3)
        indexes.reset(with_vector=True)
        cmd_seconds, summary = command("bulk_copy", str(first))
        assert summary["index_strategy"] == "rebuild", summary
        indexes.reset(with_vector=True)
        raw_indexed = raw_binary_copy(first)
        indexes.reset(with_vector=True)
        for index in indexes.all:
            sql(f'DROP INDEX "{index.name}"')
        raw_then_build = raw_binary_copy(first, build=indexes.all)
        line(
            f"raw COPY into indexed table / bulk_copy command ({n_first:,})",
            raw_indexed / cmd_seconds,
            ">= 5",
            raw_indexed / cmd_seconds >= 5,
            f"{raw_indexed:.1f} s vs {cmd_seconds:.1f} s",
        )
        line(
            "bulk_copy command / raw COPY then indexes by hand",
            cmd_seconds / raw_then_build,
            "<= 1.15",
            cmd_seconds / raw_then_build <= 1.15,
            f"{cmd_seconds:.1f} s vs {raw_then_build:.1f} s "
            f"(command start-up included; in-process load {summary['seconds']:.1f} s)",
        )

    # 3. A load into a populated, indexed table: two COPY streams against one.
    if want("workers"):
        pop = [make_parquet(work / f"pop{w}.parquet", n_pop, seed=10 + w) for w in (1, 2)]
        timings = {}
        for workers, path in zip((1, 2), pop, strict=True):
            report = ingest.load(path, index_strategy="keep", workers=workers, progress=False)
            assert report.workers == workers, report
            timings[workers] = report.seconds
        speedup = timings[1] / timings[2]
        line(
            f"--workers 2 / --workers 1 into a populated table ({n_pop:,})",
            speedup,
            ">= 1.5",
            speedup >= 1.5,
            f"{n_pop / timings[2]:,.0f} vs {n_pop / timings[1]:,.0f} rows/s",
        )

    # 4. embed_parquet against SentenceTransformer.encode on the same texts and batch size.
    texts_path = make_parquet(work / "texts.parquet", 256 if args.quick else 768, seed=4, with_vectors=False)
    embedder = Embedder(batch_size=64)
    texts = pq.read_table(texts_path).column("text").to_pylist()
    if want("embed"):
        embedder.model.encode(texts[:64], batch_size=64)  # warm-up
        start = time.perf_counter()
        embedder.model.encode(texts, batch_size=64, normalize_embeddings=True)
        direct = len(texts) / (time.perf_counter() - start)
        report = embed_parquet(texts_path, work / "embedded.parquet", embedder=embedder, progress=False)
        line(
            f"embed_parquet / SentenceTransformer.encode ({len(texts)} texts)",
            report.texts_per_s / direct,
            ">= 0.95",
            report.texts_per_s / direct >= 0.95,
            f"{report.texts_per_s:,.1f} vs {direct:,.1f} texts/s on cpu",
        )

    # 5. Embed-and-load against embedding alone plus loading alone.
    if want("overlap"):
        indexes.reset(with_vector=True)
        both = ingest.load(texts_path, embedder=embedder, index_strategy="rebuild", progress=False).seconds
        embed_alone = embed_parquet(texts_path, work / "embedded2.parquet", embedder=embedder, progress=False)
        indexes.reset(with_vector=True)
        load_alone = ingest.load(work / "embedded2.parquet", index_strategy="rebuild", progress=False).seconds
        parts = embed_alone.seconds + load_alone
        line(
            "embed-and-load / (embed alone + load alone)",
            both / parts,
            "<= 0.75",
            both / parts <= 0.75,
            f"{both:.1f} s vs {embed_alone.seconds:.1f} + {load_alone:.2f} s; best possible "
            f"max/sum = {max(embed_alone.seconds, load_alone) / parts:.2f}",
        )

    # 6. Peak memory: 1,000,000 precomputed rows against 100,000, and no torch import.
    if want("memory") and not args.skip_memory:
        small, large = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
        mem = {}
        for n in (small, large):
            path = big if n == n_copy else make_parquet(work / f"mem{n}.parquet", n, seed=20)
            indexes.reset(with_vector=False)
            rss, _last = peak_rss(["bulk_copy", str(path), "--index-strategy", "keep", "--json"])
            mem[n] = rss
            path.unlink(missing_ok=True) if n != n_copy else None
        ratio = mem[large] / mem[small]
        line(
            f"peak RSS bulk_copy {large:,} / {small:,} rows",
            ratio,
            "<= 1.25",
            ratio <= 1.25,
            f"{mem[large] / 1024:,.0f} vs {mem[small] / 1024:,.0f} MiB",
        )
        probe = (
            "import os, sys, django; os.environ.setdefault('DJANGO_SETTINGS_MODULE', 'project.settings');"
            "django.setup(); from vectorstore import ingest;"
            f"ingest.load({str(big)!r}, on_conflict='skip', progress=False);"
            "print(json.dumps({'torch': 'torch' in sys.modules}))"
        )
        _, seen = command(code="import json;" + probe)
        line(
            "bulk_copy of precomputed vectors imports torch", float(seen["torch"]), "0", not seen["torch"], ""
        )
    indexes.reset(with_vector=True)


if __name__ == "__main__":
    main()
