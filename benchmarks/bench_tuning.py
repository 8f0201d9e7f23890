"""The recall tuner's query models against queries written by hand, on three corpora, with every default
chosen on two of them and reported on the third.

    .venv/bin/python -m benchmarks.bench_tuning                       # sotu, debian, pydocs
    .venv/bin/python -m benchmarks.bench_tuning --corpus debian --loads 2

For each corpus (bench_search's; each loaded as bulk_copy loads it, its HNSW index built ``--loads``
times over, since each build makes another graph):

- the **need**: recall@10 of the corpus's real queries (written by hand, benchmarks/data/*-queries.txt)
  against exact search at each ef_search; the smallest ef_search where they reach 0.95;
- what each **query model** would store, per build: noise (stored vectors plus noise, the old tuner:
  the first setting measured at target + 0.01), pseudo-queries (spans of the documents' text, for each
  span shape and margin below pgvector's default), and the log (half of the real queries as the log,
  judged on the other half); and the real queries' recall at the stored setting;
- a **rotation**: for each corpus, the span shape and margin that met the goal (real recall >= 0.95 at
  the stored setting, every build) at the lowest cost (stored ef_search over the need) on the other
  two corpora, and what that choice gives on this one.

The recall of a setting is measured as tune_search measures it (the statement search() sends, all
queries pipelined), so the figures are the tuner's own. Prints tables; benchmarks/README.md keeps them.
"""

from __future__ import annotations

import argparse
import itertools
import time

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_search import CORPORA, DATA, Corpus, ensure_embedded
from benchmarks.harness import setup_database

STEPS = (10, 16, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400)
SPANS = {
    "3-12 words": ((3, 12), 0.0),
    "2-8 words, 1/5 sentences": ((2, 8), 0.2),
    "1-4 words": ((1, 4), 0.0),
    "sentences": ((3, 12), 1.0),
}
LOG_SIZES = (25, 50, 100, 150)
MARGINS = (0.0, 0.01, 0.02, 0.03)
TARGET = 0.95
N = 200


def real_queries(corpus: Corpus) -> list[str]:
    """The corpus's hand-written short queries (benchmarks/data/<corpus>-queries.txt): for sotu these,
    not bench_search's passages cut from the addresses, which sit next to the stored passages."""
    lines = (DATA / f"{corpus.name}-queries.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")][:N]


def curve(model, prepared) -> dict[int, np.ndarray]:
    """Per-query recall at every step (the tuner's own measurement)."""
    from vectorstore import tuning

    return {ef: tuning.measure(model, "default", prepared, "ef_search", ef) for ef in STEPS}


def decide(per_query: dict[int, np.ndarray], trusted: bool, margin: float) -> int:
    """tune()'s walk and rule, on measured curves (the same code path's decisions, without re-measuring)."""
    from vectorstore import tuning

    def good(ef: int) -> bool:
        low = tuning.estimate(per_query[ef])[1]
        if ef < 40:
            return trusted and low >= min(1.0, TARGET + margin)
        return low >= TARGET

    i = STEPS.index(40)
    if good(STEPS[i]):
        while i > 0 and good(STEPS[i - 1]):
            i -= 1
    else:
        while i + 1 < len(STEPS) and not good(STEPS[i]):
            i += 1
    return STEPS[i]


def old_rule(per_query: dict[int, np.ndarray]) -> int:
    """The tuner this replaced: noise queries, the first setting (walking from 40) at target + 0.01."""
    goal = TARGET + 0.01
    i = STEPS.index(40)
    if per_query[STEPS[i]].mean() >= goal:
        while i > 0 and per_query[STEPS[i - 1]].mean() >= goal:
            i -= 1
    else:
        while i + 1 < len(STEPS) and per_query[STEPS[i]].mean() < goal:
            i += 1
    return STEPS[i]


def bench(corpus: Corpus, url: str, loads: int) -> dict:
    import psycopg

    from vectorstore import tuning
    from vectorstore.embedding import Embedder
    from vectorstore.loading import ingest
    from vectorstore.models import Document, SearchTuning
    from vectorstore.search import forget_tuning
    from vectorstore.tuning import Prepared
    from vectorstore.tuning import queries as tuning_queries
    from vectorstore.tuning.queries import Queries

    with psycopg.connect(url, autocommit=True) as c:
        c.execute("TRUNCATE vectorstore_document RESTART IDENTITY CASCADE")
    SearchTuning.objects.all().delete()
    forget_tuning()
    report = ingest.load(pq.read_table(corpus.embedded), progress=False, tune=False)
    rows = report.rows
    texts = real_queries(corpus)
    real = Embedder().encode(texts)
    kth = tuning_queries.kth_distances("default", "vectorstore_document", "embedding", "cosine", real, 10)
    real_prepared = Prepared(Queries("real", real), kth, 10, "cosine")
    half = len(real) // 2
    halves = [(np.arange(half), np.arange(half, len(real))), (np.arange(half, len(real)), np.arange(half))]
    out = {"rows": rows, "queries": len(real), "loads": []}
    print(f"\n== {corpus.name}: {rows:,} rows, {len(real)} real queries ==", flush=True)
    for load in range(loads):
        if load:
            started = time.perf_counter()
            with psycopg.connect(url, autocommit=True) as c:
                c.execute("SET maintenance_work_mem = '2GB'")
                c.execute("REINDEX INDEX vectorstore_document_hnsw")
            print(f"  rebuilt the index in {time.perf_counter() - started:.1f} s", flush=True)
        need_curve = curve(Document, real_prepared)
        means = {ef: float(v.mean()) for ef, v in need_curve.items()}
        need = next((ef for ef in STEPS if means[ef] >= TARGET), STEPS[-1])
        result = {"need": need, "real": means, "models": {}}
        noise = tuning.prepare(Document, "default", "cosine", 10, N, rows, seed=load, query_model="noise")
        noise_curve = curve(Document, noise)
        result["models"]["noise, old rule"] = old_rule(noise_curve)
        result["models"]["noise"] = decide(noise_curve, False, 0.0)
        for (label, (words, share)), margin in itertools.product(SPANS.items(), MARGINS):
            key = f"pseudo {label}"
            if key not in result.setdefault("pseudo_curves", {}):
                tuning_queries.SPAN_WORDS, tuning_queries.SENTENCE_SHARE = words, share
                prepared = tuning.prepare(Document, "default", "cosine", 10, N, rows, load, "pseudo")
                result["pseudo_curves"][key] = curve(Document, prepared)
            result["models"][f"{key}, margin {margin}"] = decide(result["pseudo_curves"][key], True, margin)
        tuning_queries.SPAN_WORDS, tuning_queries.SENTENCE_SHARE = SPANS["3-12 words"]
        for margin in MARGINS:
            chosen, judged = [], []
            for log, held in halves:
                per = {ef: v[log] for ef, v in need_curve.items()}
                ef = decide(per, True, margin)
                chosen.append(ef)
                judged.append(float(need_curve[ef][held].mean()))
            result["models"][f"log (half), margin {margin}"] = chosen
            result.setdefault("log_judged", {})[margin] = judged
        # How many logged queries a decision needs: random logs of each size (from the real queries), the
        # setting each leads to, and the recall all the real queries then get.
        rng = np.random.default_rng(load)
        for size in LOG_SIZES:
            picks = [rng.choice(len(real), size=min(size, len(real)), replace=False) for _ in range(20)]
            stored = [
                decide({ef: v[p] for ef, v in need_curve.items()}, True, tuning.BELOW_DEFAULT_MARGIN)
                for p in picks
            ]
            result.setdefault("log_sizes", {})[size] = [(ef, means[ef]) for ef in stored]
        out["loads"].append(result)
        curve_line = ", ".join(f"{ef}: {means[ef]:.3f}" for ef in STEPS if ef <= 200)
        print(f"  build {load + 1}: real queries' recall@10 by ef_search: {curve_line}; need {need}")
        for name, ef in result["models"].items():
            if isinstance(ef, list):
                judged = result["log_judged"][float(name.rsplit(" ", 1)[1])]
                shown = ", ".join(f"{e} -> {j:.3f}" for e, j in zip(ef, judged, strict=True))
                print(f"    {name:45s} stores {shown} (the other half's recall)")
            else:
                print(f"    {name:45s} stores {ef:4d}: real recall {means[ef]:.3f}")
        for size, outcomes in result["log_sizes"].items():
            efs = sorted({ef for ef, _ in outcomes})
            worst = min(r for _, r in outcomes)
            print(f"    a log of {size:3d} queries (20 draws): stores {efs}, worst real recall {worst:.3f}")
    return out


def rotation(results: dict[str, dict]) -> None:
    """Choose the pseudo-query shape and margin on two corpora, report them on the third."""
    names = sorted(results)
    keys = [k for k in next(iter(results.values()))["loads"][0]["models"] if k.startswith("pseudo")]

    def score(corpus: str, key: str) -> tuple[bool, float]:
        loads = results[corpus]["loads"]
        met = all(load["real"][load["models"][key]] >= TARGET for load in loads)
        cost = float(np.mean([load["models"][key] / load["need"] for load in loads]))
        return met, cost

    print("\n== rotation: pseudo-query shape and margin chosen on two corpora, reported on the third ==")
    for held in names:
        train = [n for n in names if n != held]
        feasible = [k for k in keys if all(score(c, k)[0] for c in train)]
        pool = feasible or keys
        best = min(pool, key=lambda k: (sum(score(c, k)[1] for c in train), k))
        met, cost = score(held, best)
        loads = results[held]["loads"]
        stored = [load["models"][best] for load in loads]
        real = [load["real"][load["models"][best]] for load in loads]
        print(
            f"  held out {held}: chosen on {' + '.join(train)}: {best}"
            f"{'' if feasible else ' (none met the goal on both: the cheapest)'}; on {held} it stores"
            f" {stored} (need {[load['need'] for load in loads]}), real recall"
            f" {', '.join(f'{r:.3f}' for r in real)}: goal {'met' if met else 'NOT met'} (cost x{cost:.2f})"
        )


def log_rotation(results: dict[str, dict]) -> None:
    """Choose the margin below pgvector's default for logged queries on two corpora, report on the third:
    the smallest margin whose stored settings meet the goal on every build and half of both."""
    names = sorted(results)

    def met(corpus: str, margin: float) -> bool:
        return all(r >= TARGET for load in results[corpus]["loads"] for r in load["log_judged"][margin])

    print("\n== rotation: the margin for logged queries chosen on two corpora, reported on the third ==")
    for held in names:
        train = [n for n in names if n != held]
        margin = next((m for m in MARGINS if all(met(c, m) for c in train)), MARGINS[-1])
        judged = [r for load in results[held]["loads"] for r in load["log_judged"][margin]]
        print(
            f"  held out {held}: chosen on {' + '.join(train)}: margin {margin}; on {held} the other halves"
            f" get {min(judged):.3f} at worst: goal {'met' if min(judged) >= TARGET else 'NOT met'}"
        )


EXPERT = """
import json, os, sys, time
started = time.perf_counter()
import numpy as np, psycopg, pyarrow.parquet as pq
from pgvector.psycopg import register_vector
from psycopg.types.json import Jsonb
path, url, definitions = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
data = pq.read_table(path)
dims = len(data.column("embedding")[0])
vectors = np.asarray(data.column("embedding").combine_chunks().flatten(), dtype=np.float32).reshape(-1, dims)
extra = [c for c in data.column_names if c not in ("id", "text", "embedding", "category", "created_at")]
meta = [Jsonb(dict(zip(extra, row))) for row in zip(*(data.column(c).to_pylist() for c in extra))]
created = data.column("created_at").to_pylist() if "created_at" in data.column_names else [None] * len(data)
with psycopg.connect(url) as conn:
    register_vector(conn)
    columns = "external_id, text, embedding, category, metadata, created_at"
    statement = f"COPY vectorstore_document ({columns}) FROM STDIN (FORMAT BINARY)"
    with conn.cursor() as cur, cur.copy(statement) as copy:
        copy.set_types(["varchar", "text", "vector", "varchar", "jsonb", "timestamptz"])
        now = __import__("datetime").datetime.now(__import__("datetime").timezone.utc)
        for row in zip(data.column("id").to_pylist(), data.column("text").to_pylist(), vectors,
                       data.column("category").to_pylist(), meta, created):
            copy.write_row([*row[:5], row[5] or now])
    conn.execute("SET maintenance_work_mem = '2GB'")
    conn.execute(f"SET max_parallel_maintenance_workers = {max(0, (os.cpu_count() or 1) - 1)}")
    for definition in definitions:
        conn.execute(definition)
    conn.commit()
    conn.execute("ANALYZE vectorstore_document")
print(json.dumps({"seconds": time.perf_counter() - started}))
"""


def first_load(corpus: Corpus, url: str, runs: int = 3) -> None:
    """The whole first load, tuning included (bulk_copy's process), against an expert's raw binary COPY
    followed by the same index builds (a process of its own too), alternating, the same table."""
    import json
    import subprocess
    import sys

    import psycopg

    from benchmarks.harness import ROOT
    from vectorstore.indexing.indexes import rebuildable_indexes
    from vectorstore.loading.pgcopy import django_connection

    definitions = [i.definition for i in rebuildable_indexes(django_connection(), "vectorstore_document")]

    def reset(with_indexes: bool) -> None:
        with psycopg.connect(url, autocommit=True) as c:
            c.execute("TRUNCATE vectorstore_document RESTART IDENTITY CASCADE")
            c.execute("DELETE FROM vectorstore_searchtuning")
            c.execute("DELETE FROM vectorstore_querylog")
            for name in [d.split(" INDEX ")[1].split(" ON ")[0] for d in definitions]:
                c.execute(f"DROP INDEX IF EXISTS {name}")
            if with_indexes:
                for definition in definitions:
                    c.execute(definition)

    def timed(argv: list[str]) -> tuple[float, dict]:
        started = time.perf_counter()
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if done.returncode:
            raise SystemExit(done.stderr[-3000:])
        return seconds, json.loads(done.stdout.strip().splitlines()[-1])

    ratios, tunes = [], []
    for _ in range(runs):
        reset(with_indexes=False)
        expert, _ = timed([sys.executable, "-c", EXPERT, str(corpus.embedded), url, json.dumps(definitions)])
        reset(with_indexes=True)
        ours, summary = timed(
            [sys.executable, str(ROOT / "manage.py"), "bulk_copy", str(corpus.embedded), "--json"]
        )
        assert summary["index_strategy"] == "rebuild", summary
        tuned = summary["tuned"] or {}
        ratios.append(expert / ours)
        tunes.append((ours, expert, tuned.get("seconds", 0.0), tuned.get("query_model"), tuned.get("value")))
    shown = "; ".join(
        f"{o:.1f} s vs {e:.1f} s (tuning {t:.1f} s, {m}, ef_search {v})" for o, e, t, m, v in tunes
    )
    print(
        f"  first load, {corpus.name}: bulk_copy's whole process (tuning included) / the expert's raw COPY"
        f" then the same indexes: {np.median(ratios):.2f}x the speed (median of {runs}; goal >= 0.95):"
        f" {shown}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", nargs="+", choices=sorted(CORPORA), default=["sotu", "debian", "pydocs"])
    parser.add_argument("--loads", type=int, default=4, help="index builds per corpus (default 4)")
    parser.add_argument(
        "--first-load", action="store_true", help="only the first-load timing against an expert's COPY"
    )
    args = parser.parse_args()
    for name in args.corpus:
        ensure_embedded(CORPORA[name])
    url = setup_database("tuning")
    if args.first_load:
        for name in args.corpus:
            first_load(CORPORA[name], url)
        return
    results = {name: bench(CORPORA[name], url, args.loads) for name in args.corpus}
    if len(results) >= 3:
        rotation(results)
        log_rotation(results)


if __name__ == "__main__":
    main()
