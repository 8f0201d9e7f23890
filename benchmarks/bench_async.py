"""``asearch()`` against ``search()`` in one process: the same searches, on the same table, alternated.

    .venv/bin/python -m benchmarks.bench_async                   # debian, 3 rounds
    .venv/bin/python -m benchmarks.bench_async --corpus sotu --rounds 5

The corpus is loaded into a database of its own (``bulk_copy``'s pipeline, its vectors from the cache
``bench_search`` fills); its real queries, embedded once, are searched by vector (k=10) through
``search()`` on Django's connection and through ``asearch()`` on one event loop with the pooled async
connection, in alternating rounds. Reported per search: wall time (p50 and mean) and the process's CPU,
and the ratio asearch / search. One client at a time: this is the cost of the two drivers of the same
search steps (``vectorstore/search/steps.py``), not a server's throughput (``bench_serve`` is that).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import numpy as np
import pyarrow.parquet as pq

from benchmarks.bench_search import CORPORA, ensure_embedded
from benchmarks.harness import setup_database


def timed_sync(vectors: np.ndarray) -> tuple[list[float], float]:
    from vectorstore.search import search

    times = []
    cpu = time.process_time()
    for v in vectors:
        started = time.perf_counter()
        search(vector=v, k=10, log_query=False)
        times.append((time.perf_counter() - started) * 1000)
    return times, (time.process_time() - cpu) / len(vectors) * 1000


async def timed_async(vectors: np.ndarray) -> tuple[list[float], float]:
    from vectorstore.search import asearch

    times = []
    cpu = time.process_time()
    for v in vectors:
        started = time.perf_counter()
        await asearch(vector=v, k=10, log_query=False)
        times.append((time.perf_counter() - started) * 1000)
    return times, (time.process_time() - cpu) / len(vectors) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="debian")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    corpus = CORPORA[args.corpus]
    ensure_embedded(corpus)
    setup_database("async")
    from vectorstore.embedding import Embedder
    from vectorstore.loading import ingest
    from vectorstore.search import aclose

    ingest.load(pq.read_table(corpus.embedded), progress=False, name=corpus.embedded.name)
    vectors = Embedder().encode(corpus.queries(200)).astype(np.float32)
    loop = asyncio.new_event_loop()
    timed_sync(vectors[:20])
    loop.run_until_complete(timed_async(vectors[:20]))  # the pool opened, both warm
    rows = []
    for _ in range(args.rounds):
        rows.append((timed_sync(vectors), loop.run_until_complete(timed_async(vectors))))
    loop.run_until_complete(aclose())
    loop.close()
    print(f"== {args.corpus}: {len(vectors)} real queries x {args.rounds} rounds, k=10, one client")
    for name, pick in (("search()", 0), ("asearch()", 1)):
        walls = [t for r in rows for t in r[pick][0]]
        cpu = statistics.median(r[pick][1] for r in rows)
        print(
            f"  {name:10} p50 {statistics.median(walls):.3f} ms  mean {statistics.fmean(walls):.3f} ms"
            f"  CPU {cpu:.3f} ms a search"
        )
    ratio = statistics.median(
        statistics.median(r[1][0]) / statistics.median(r[0][0]) for r in rows
    )  # fmt: skip
    print(f"  asearch / search, p50 per round: {ratio:.2f}x")


if __name__ == "__main__":
    main()
