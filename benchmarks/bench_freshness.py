"""Vectors that never go stale (issue 35): the goals, each against its baseline in the same process.

    .venv/bin/python -m benchmarks.bench_freshness                 # about 10 minutes
    .venv/bin/python -m benchmarks.bench_freshness --only writes worker

- **writes**: every write path a Django site has (save() of an edited text, save() with a new vector,
  update(), bulk_update(), raw SQL UPDATE, INSERT without a vector, bulk_copy with vectors, a merge with
  new texts and vectors) on rows of a real corpus; then each row is either marked stale or holds the
  model's own vector of its text. Counted: silent stale rows (neither), goal 0.
- **worker**: the embedding worker draining a backlog of N real texts (written behind the site's back)
  against ``embed_parquet`` embedding the same texts (same model, batch size, device): rows/s, goal
  >= 0.9x; then two workers (processes) on one backlog: rows each, goal: their sum is the backlog.
- **load**: ``bulk_copy``'s first load of a corpus with vectors, into the table with its freshness
  triggers and with them dropped, alternating: goal >= 0.98x.
- **deferred**: ``save()`` of a 5,000-word text with ``EMBED_ON_SAVE = "deferred"`` against a short
  text's: median time, goal < 1.1x (and inline, for the record).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_search import CORPORA, ensure_embedded
from benchmarks.harness import ROOT, setup_database


def _reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE vectorstore_document, vectorstore_stalevector, vectorstore_embedworker CASCADE")
        c.execute("DELETE FROM vectorstore_searchtuning")


def writes(url: str, texts: list[str]) -> None:
    from django.core.management import call_command
    from django.db import connection

    from vectorstore.embedding import Embedder
    from vectorstore.models import Document, StaleVector

    _reset(url)
    embedder = Embedder.for_model(Document)
    n = 40
    base = texts[: 8 * n]
    vectors = embedder.encode(base)
    docs = Document.objects.bulk_create(
        Document(text=t, embedding=v, external_id=f"w{i}")
        for i, (t, v) in enumerate(zip(base, vectors, strict=True))
    )
    groups = [docs[i * n : (i + 1) * n] for i in range(8)]
    new = [f"{t} (revised)" for t in texts[8 * n : 16 * n]]
    paths = {}
    # 1. save() of an edited text (the vector read with it)
    for d, t in zip(groups[0], new[:n], strict=True):
        d.text = t
        d.save()
    paths["save() of an edited text"] = groups[0]
    # 2. save() with the text and a new vector given together
    given = embedder.encode(new[n : 2 * n])
    for d, t, v in zip(groups[1], new[n : 2 * n], given, strict=True):
        d.text, d.embedding = t, v
        d.save()
    paths["save() with a new vector"] = groups[1]
    # 3. update()
    for d, t in zip(groups[2], new[2 * n : 3 * n], strict=True):
        Document.objects.filter(pk=d.pk).update(text=t)
    paths["QuerySet.update()"] = groups[2]
    # 4. bulk_update()
    for d, t in zip(groups[3], new[3 * n : 4 * n], strict=True):
        d.text = t
    Document.objects.bulk_update(groups[3], ["text"])
    paths["bulk_update()"] = groups[3]
    # 5. raw SQL
    with connection.cursor() as cursor:
        for d, t in zip(groups[4], new[4 * n : 5 * n], strict=True):
            cursor.execute("UPDATE vectorstore_document SET text = %s WHERE id = %s", [t, d.pk])
        # 6. INSERT without a vector
        inserted = []
        for t in new[5 * n : 6 * n]:
            cursor.execute(
                "INSERT INTO vectorstore_document (text, category, metadata, created_at)"
                " VALUES (%s, '', '{}', now()) RETURNING id",
                [t],
            )
            inserted.append(cursor.fetchone()[0])
    paths["raw SQL UPDATE"] = groups[4]
    paths["raw INSERT without a vector"] = list(Document.objects.filter(pk__in=inserted))
    # 7. bulk_copy of rows with vectors; 8. a merge bringing new texts and vectors
    with tempfile.TemporaryDirectory() as tmp:
        fresh = new[6 * n : 7 * n]
        path = Path(tmp) / "copy.parquet"
        pq.write_table(
            pa.table(
                {
                    "id": [f"c{i}" for i in range(n)],
                    "text": fresh,
                    "embedding": pa.array(list(embedder.encode(fresh)), pa.list_(pa.float32())),
                }
            ),
            path,
        )
        call_command("bulk_copy", str(path), "--no-tune", verbosity=0)
        merged = new[7 * n : 8 * n]
        path = Path(tmp) / "merge.parquet"
        pq.write_table(
            pa.table(
                {
                    "id": [d.external_id for d in groups[7]],
                    "text": merged,
                    "embedding": pa.array(list(embedder.encode(merged)), pa.list_(pa.float32())),
                }
            ),
            path,
        )
        call_command("bulk_copy", str(path), "--on-conflict", "update", "--no-tune", verbosity=0)
    paths["bulk_copy with vectors"] = list(Document.objects.filter(external_id__startswith="c"))
    paths["a merge with new texts and vectors"] = groups[7]
    stale = set(StaleVector.objects.values_list("row_id", flat=True))
    print("\n== writes: each path's rows, marked stale or holding the model's vector of their text ==")
    silent_total = 0
    for name, rows in paths.items():
        rows = list(Document.objects.filter(pk__in=[d.pk for d in rows]))
        marked = [d for d in rows if d.pk in stale]
        unmarked = [d for d in rows if d.pk not in stale]
        want = embedder.encode([d.text for d in unmarked]) if unmarked else []
        silent = sum(
            1
            for d, w in zip(unmarked, want, strict=True)
            if d.embedding is None or not np.allclose(np.asarray(d.embedding), w, atol=1e-4)
        )
        silent_total += silent
        print(f"  {name:<36} {len(rows):3d} rows: {len(marked):3d} marked, {len(unmarked) - silent:3d} fresh,"
              f" {silent} silent stale")  # fmt: skip
    print(f"  silent stale rows, all paths: {silent_total} (goal 0)")


def worker(url: str, texts: list[str], n: int) -> None:
    from django.db import connection

    from vectorstore.embedding import Embedder
    from vectorstore.freshness import worker as fresh
    from vectorstore.loading.embed_parquet import embed_parquet
    from vectorstore.models import Document, EmbedWorker

    embedder = Embedder.for_model(Document)  # the worker's own: the same model, batch size and device
    chosen = texts[:n]
    _reset(url)
    Document.objects.bulk_create(Document(text=t, embedding=np.full(384, 0.05, np.float32)) for t in chosen)

    def backlog() -> None:
        with connection.cursor() as cursor:  # behind the site's back: every text changes
            cursor.execute("UPDATE vectorstore_document SET text = text || ' '")

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "texts.parquet"
        pq.write_table(pa.table({"text": [f"{t} " for t in chosen]}), source)
        rates = {"embed_parquet": [], "worker": []}
        for _ in range(2):
            started = time.perf_counter()
            embed_parquet(str(source), str(Path(tmp) / "out.parquet"), embedder=embedder, progress=False)
            rates["embed_parquet"].append(n / (time.perf_counter() - started))
            backlog()
            started = time.perf_counter()
            report = fresh.run(Document, batch_size=embedder.batch_size, once=True, progress=False)
            rates["worker"].append(report.embedded / (time.perf_counter() - started))
            assert report.embedded == n, report.as_dict()
    ep, wk = statistics.median(rates["embed_parquet"]), statistics.median(rates["worker"])
    print(f"\n== worker: {n} texts, batch 64 ==")
    print(f"  embed_parquet {ep:.1f} texts/s, the worker {wk:.1f} rows/s: {wk / ep:.2f}x (goal >= 0.9)")
    backlog()
    EmbedWorker.objects.all().delete()
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "manage.py"),
                "embed_worker",
                "--once",
                "--batch-size",
                "32",
                "--json",
            ],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    counts = [json.loads(p.communicate()[0].strip().splitlines()[-1])["embedded"] for p in procs]
    print(f"  two workers on one backlog of {n}: {counts[0]} + {counts[1]} = {sum(counts)} rows (goal {n})")


def load(url: str, corpus_name: str, runs: int) -> None:
    import psycopg

    corpus = CORPORA[corpus_name]
    ensure_embedded(corpus)
    drop = (
        "DROP TRIGGER IF EXISTS vectorstore_document_fresh_ins ON vectorstore_document;"
        " DROP TRIGGER IF EXISTS vectorstore_document_fresh_upd ON vectorstore_document"
    )
    create = None
    with psycopg.connect(url, autocommit=True) as c:
        create = [
            row[0]
            for row in c.execute(
                "SELECT pg_get_triggerdef(oid) FROM pg_trigger"
                " WHERE tgrelid = 'vectorstore_document'::regclass"
                " AND tgname LIKE 'vectorstore_document_fresh_%'"
            ).fetchall()
        ]
    seconds: dict[str, list[float]] = {"with the triggers": [], "without": []}
    for _ in range(runs):
        for label in seconds:
            _reset(url)
            with psycopg.connect(url, autocommit=True) as c:
                c.execute(drop)
                if label == "with the triggers":
                    for statement in create:
                        c.execute(statement)
            started = time.perf_counter()
            done = subprocess.run(
                [sys.executable, str(ROOT / "manage.py"), "bulk_copy", str(corpus.embedded), "--json"],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            assert done.returncode == 0, done.stderr
            seconds[label].append(time.perf_counter() - started)
    with psycopg.connect(url, autocommit=True) as c:  # leave the table as migrate made it
        c.execute(drop)
        for statement in create:
            c.execute(statement)
    with_, without = statistics.median(seconds["with the triggers"]), statistics.median(seconds["without"])
    shown = ", ".join(f"{label}: {' / '.join(f'{s:.1f}' for s in v)} s" for label, v in seconds.items())
    print(f"\n== load: bulk_copy's first load of {corpus_name} ({runs} runs each, alternating) ==")
    print(f"  {shown}; with / without the triggers: {without / with_:.3f}x the speed (goal >= 0.98)")


def deferred(texts: list[str]) -> None:
    from django.test import override_settings

    from vectorstore.models import Document

    long = " ".join(" ".join(texts[i % len(texts)].split()) for i in range(2000))
    long = " ".join(long.split()[:5000])
    short = texts[0]
    base = {"DIMENSIONS": 384}
    for mode in ("deferred", "inline"):
        with override_settings(VECTORSTORE={**base, "EMBED_ON_SAVE": mode}):
            took: dict[str, list[float]] = {"short": [], "5,000 words": []}
            for _ in range(5 if mode == "inline" else 30):
                for label, text in (("short", short), ("5,000 words", long)):
                    started = time.perf_counter()
                    Document.objects.create(text=text)
                    took[label].append(time.perf_counter() - started)
        s, w = statistics.median(took["short"]), statistics.median(took["5,000 words"])
        goal = " (goal < 1.1)" if mode == "deferred" else ""
        print(f"  save() {mode}: short {s * 1000:.1f} ms, 5,000 words {w * 1000:.1f} ms: {w / s:.2f}x{goal}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", nargs="+", choices=["writes", "worker", "load", "deferred"])
    parser.add_argument("--texts", type=int, default=1024, help="the worker's backlog (default 1024)")
    parser.add_argument("--corpus", default="debian", choices=sorted(CORPORA))
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    only = set(args.only or ["writes", "worker", "load", "deferred"])
    url = setup_database("freshness")
    corpus = CORPORA[args.corpus]
    ensure_embedded(corpus)
    texts = [t for t in pq.read_table(corpus.parquet, columns=["text"]).column("text").to_pylist() if t]
    if "writes" in only:
        writes(url, texts)
    if "worker" in only:
        worker(url, texts, args.texts)
    if "load" in only:
        load(url, args.corpus, args.runs)
    if "deferred" in only:
        print("\n== deferred: save() of a 5,000-word text against a short one ==")
        _reset(url)
        deferred(texts)


if __name__ == "__main__":
    main()
