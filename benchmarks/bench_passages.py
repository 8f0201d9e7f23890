"""Long documents: passages against truncation, measured on long texts and quoted queries no default here
was chosen on.

    .venv/bin/python -m benchmarks.bench_passages                       # pydocs and sotu, overlap 32
    .venv/bin/python -m benchmarks.bench_passages --corpus pydocs --overlaps 0 32 64
    .venv/bin/python -m benchmarks.bench_passages --corpus sotu --documents 60 --windows 0 128 192 --hybrid
    .venv/bin/python -m benchmarks.bench_passages --windows 128 --fanouts 4 8 16 --from-file /tmp/p.parquet

Corpora (public, licence-clear, in the repository; see fixtures/README.md):

- ``pydocs``: the Python documentation's 152 long pages (benchmarks/data/pydocs-pages.parquet; 1,500 to
  20,000 words each, median 3,300);
- ``sotu``: State of the Union addresses, whole: benchmarks/data/sotu-passages-200.parquet's passages
  joined back in order by address; ``--documents`` of those of at least 1,500 words (seeded choice).

Queries: for each of ``--queries`` documents (seeded), one sentence of 10 to 40 words quoted from the
last third of its text, so that truncation (the model reads the first 256 word pieces, about 180
words) cannot have seen it. A hit is the document the sentence came from.

Each corpus is loaded with bulk_copy's pipeline (``ingest.load``, texts embedded on the way) into a
fresh table: once with passages off (today's truncation), once per overlap with them on. Reported for
each: hit rate@10 and MRR; load seconds per 1,000 input words and the passages written; search p50
(vector queries through ``search()``, three passes). Last, a table of plain documents holding as many
rows as the passage table (the passages' texts and vectors loaded as documents), so that the passage
search's p50 is compared with a document search over the same number of rows.
"""

from __future__ import annotations

import argparse
import re
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.bench_search import DATA
from benchmarks.harness import setup_database

SENTENCE = re.compile(r"(?<=[.!?])\s+")
ROUNDS = [0, 0.0]  # reads of the passages counted, and per search in the last measure()


def documents(corpus: str, count: int, seed: int) -> list[tuple[str, str]]:
    """(id, text) of the corpus's long documents."""
    if corpus == "pydocs":
        table = pq.read_table(DATA / "pydocs-pages.parquet", columns=["id", "text"]).to_pydict()
        return [(i, t) for i, t in zip(table["id"], table["text"], strict=True) if len(t.split()) >= 1500]
    table = pq.read_table(DATA / "sotu-passages-200.parquet", columns=["id", "text"]).to_pydict()
    addresses: dict[str, list[str]] = {}
    for pid, text in zip(table["id"], table["text"], strict=True):
        addresses.setdefault(pid.rsplit("-", 1)[0], []).append(text)
    long = [(a, " ".join(ts)) for a, ts in addresses.items() if sum(len(t.split()) for t in ts) >= 1500]
    picked = np.random.default_rng(seed).choice(len(long), min(count, len(long)), replace=False)
    return [long[i] for i in sorted(picked)]


def quotes(docs: list[tuple[str, str]], count: int, seed: int) -> list[tuple[str, str]]:
    """(document id, a sentence from its last third) for ``count`` documents."""
    rng = np.random.default_rng(seed)
    out = []
    for i in rng.permutation(len(docs)):
        pid, text = docs[i]
        tail = text[2 * len(text) // 3 :]
        sentences = [s.strip() for s in SENTENCE.split(tail)[1:-1] if 10 <= len(s.split()) <= 40]
        if sentences:
            out.append((pid, sentences[int(rng.integers(len(sentences)))]))
        if len(out) == count:
            break
    return out


def reset(passages_on: bool, overlap: int, window: int | None = None) -> None:
    from django.conf import settings
    from django.db import connection

    from vectorstore.search import forget_tuning

    settings.VECTORSTORE = {
        **settings.VECTORSTORE,
        "PASSAGES": passages_on,
        "PASSAGE_OVERLAP": overlap,
        "PASSAGE_WINDOW": window,
    }
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE vectorstore_document_passage, vectorstore_document RESTART IDENTITY")
    forget_tuning()


def measure(
    qvectors: np.ndarray, wanted: list[str], texts: list[str] | None = None, passes: int = 3
) -> tuple[float, float, float]:
    """(hit rate@10, MRR@10, p50 ms) of the queries through search(): vector queries, or with ``texts``
    hybrid ones (the query's text and its vector)."""
    from vectorstore.search import passage_search, search

    hits, reciprocal, times = 0, 0.0, []
    real = passage_search.vector_rows

    def counted(*args, **kwargs):  # each read of the passages (a search reads wider while short of k)
        ROUNDS[0] += 1
        return (yield from real(*args, **kwargs))

    passage_search.vector_rows = counted
    ROUNDS[0] = 0
    for rep in range(passes):
        for i, (v, pid) in enumerate(zip(qvectors, wanted, strict=True)):
            started = time.perf_counter()
            if texts is None:
                result = search(vector=v, k=10, log_query=False)
            else:
                result = search(texts[i], vector=v, k=10, mode="hybrid", log_query=False)
            times.append((time.perf_counter() - started) * 1000)
            if rep == 0:
                ids = [h.values["external_id"] for h in result.hits]
                if pid in ids:
                    hits += 1
                    reciprocal += 1 / (ids.index(pid) + 1)
    passage_search.vector_rows = real
    ROUNDS[1] = ROUNDS[0] / (passes * len(wanted))
    return hits / len(wanted), reciprocal / len(wanted), statistics.median(times)


def fanouts(qvectors: np.ndarray, wanted: list[str], values: list[int]) -> None:
    """Vector searches with each PASSAGE_FANOUT (passages read first, per document wanted), twice over."""
    from vectorstore.search import passage_search

    chosen = passage_search.PASSAGE_FANOUT
    try:
        for rep in range(2):
            for fanout in values:
                passage_search.PASSAGE_FANOUT = fanout
                hit, mrr, p50 = measure(qvectors, wanted)
                print(
                    f"    fanout {fanout:3} (pass {rep + 1}): hit@10 {hit:.3f}  MRR {mrr:.3f}"
                    f"  p50 {p50:.2f} ms, {ROUNDS[1]:.2f} passage reads a search",
                    flush=True,
                )
    finally:
        passage_search.PASSAGE_FANOUT = chosen


def from_file(table: pa.Table, words: int, path: str) -> None:
    """The same documents through ``embed_parquet --passages`` into ``path``, then loaded from it (the
    model not run by the load): the two times, against the load that embedded."""
    from django.db import connection

    from vectorstore.loading import ingest
    from vectorstore.loading.embed_parquet import embed_parquet

    started = time.perf_counter()
    embedded = embed_parquet(table, path, passages=True, progress=False)
    embedding = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE vectorstore_document_passage, vectorstore_document RESTART IDENTITY")
    started = time.perf_counter()
    report = ingest.load(path, progress=False, tune=False)
    seconds = time.perf_counter() - started
    print(
        f"    embed_parquet --passages {embedding:.1f} s ({embedded.passages:,} passages), then the load"
        f" from its file {seconds:.1f} s ({seconds / words * 1000:.4f} s per 1,000 words; indexes"
        f" {report.index_seconds:.2f} s)",
        flush=True,
    )


def bench(corpus: str, args: argparse.Namespace) -> None:
    from vectorstore.embedding import Embedder
    from vectorstore.loading import ingest
    from vectorstore.models import Document
    from vectorstore.passages import passage_model

    docs = documents(corpus, args.documents, args.seed)
    asked = quotes(docs, args.queries, args.seed)
    words = sum(len(t.split()) for _, t in docs)
    table = pa.table({"external_id": [d for d, _ in docs], "text": [t for _, t in docs]})
    qvectors = Embedder().encode([q for _, q in asked])
    wanted = [d for d, _ in asked]
    print(f"\n== {corpus}: {len(docs)} documents, {words:,} words; {len(asked)} quoted queries")
    runs = [(False, 0, None)] + [(True, o, w) for w in args.windows for o in args.overlaps]
    for on, overlap, size in runs:
        reset(on, overlap, size)
        started = time.perf_counter()
        report = ingest.load(table, progress=False, tune=False)
        seconds = time.perf_counter() - started
        hit, mrr, p50 = measure(qvectors, wanted)
        label = f"passages, {size or 'model'}/{overlap}" if on else "truncation (passages off)"
        print(
            f"  {label:28} hit@10 {hit:.3f}  MRR {mrr:.3f}  load {seconds / words * 1000:.3f} s per"
            f" 1,000 words ({seconds:.1f} s, {report.passages:,} passages)  search p50 {p50:.2f} ms"
            + (f", {ROUNDS[1]:.2f} passage reads a search" if on else ""),
            flush=True,
        )
        if args.hybrid:
            hit, mrr, p50 = measure(qvectors, wanted, [q for _, q in asked], passes=1)
            print(f"  {'  hybrid':28} hit@10 {hit:.3f}  MRR {mrr:.3f}  search p50 {p50:.2f} ms", flush=True)
        if on and args.fanouts:
            fanouts(qvectors, wanted, args.fanouts)
        if on and args.from_file:
            from_file(table, words, args.from_file)
    # A document search over as many rows as the last passage table.
    model = passage_model(Document)
    rows = list(model.objects.select_related("document").order_by("pk"))
    texts = [r.document.text[r.start : r.end] for r in rows]
    vectors = np.stack([np.asarray(r.embedding, dtype=np.float32) for r in rows])
    reset(False, 0)
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    ingest.load(
        pa.table({"text": texts, "embedding": column.cast(pa.list_(pa.float32()))}),
        progress=False,
        tune=False,
    )
    _, _, p50 = measure(qvectors, wanted)
    print(f"  document search over the same {len(rows):,} rows: p50 {p50:.2f} ms")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", nargs="+", choices=["pydocs", "sotu"], default=["pydocs", "sotu"])
    parser.add_argument("--documents", type=int, default=100, help="sotu: addresses loaded")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--overlaps", type=int, nargs="+", default=[32])
    parser.add_argument(
        "--windows", type=int, nargs="+", default=[0],
        help="word pieces a passage holds (PASSAGE_WINDOW); 0: the model's limit",
    )  # fmt: skip
    parser.add_argument("--hybrid", action="store_true", help="also hybrid queries (text and vector)")
    parser.add_argument("--fanouts", type=int, nargs="*", help="also vector searches at each PASSAGE_FANOUT")
    parser.add_argument(
        "--from-file", metavar="PATH", help="also embed_parquet --passages into PATH, then a load from it"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    args.windows = [w or None for w in args.windows]
    setup_database("passages")
    for corpus in args.corpus:
        bench(corpus, args)


if __name__ == "__main__":
    main()
