"""The queries recall is measured on, and their exact answers.

Two query models, best first (and a third that benchmarks compare them with):

- ``log``: the query vectors searches of the table actually saw (``vectorstore.search.query_log``), once the
  table has at least TUNE_MIN_LOGGED of them.
- ``pseudo``: short runs of words of sampled documents' own text (the lengths real queries have),
  embedded with the table's own embedding model. Real queries are short texts whose vectors lie away
  from the documents, where the graph needs a deeper search; a stored vector plus noise sits next to
  the document it came from and is found easily (the tuner that used only those asked for ef_search
  16-32 where a corpus's real queries needed 64-100). Measured against hand-written queries on three
  corpora, these are harder still: a safe estimate until the log takes over.
- ``noise`` (benchmarks only): stored vectors moved by noise as long as themselves. It understates the
  search real queries need (a table tuned on it told users "~0.97" where real queries got 0.92), so no
  setting is chosen on it: where neither of the others can be had, nothing is measured (``tuning``).

The truth is exact: each query's k-th smallest distance over the whole table, from one pass over it
(``kth_distances``); a search's answer is right where its distance is within that.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import models, transaction
from psycopg import sql
from psycopg.types.string import ByteaBinaryLoader

from vectorstore import conf, passages, pg
from vectorstore.reembed import record
from vectorstore.search import query_log

QUERY_MODELS = ("log", "pseudo")
# Pseudo-queries: runs of 3 to 12 words from a random place. On all three benchmark corpora they are
# harder for the graph than hand-written queries (the setting they ask for is 1.5-6.4x what those need,
# never less), shorter runs harder still; chosen on two corpora and reported on the third, each way
# round (benchmarks/README.md, bench_tuning). SENTENCE_SHARE of them may be a whole sentence instead.
SPAN_WORDS = (3, 12)
SENTENCE_SHARE = 0.0
SENTENCE_WORDS = 24
TEXT_CHARS = 4000  # of each sampled document's text, read for its spans
# Noise as long as the vector: a query about as far from its source (cosine ~0.7) as real queries are
# from their nearest stored texts (it still finds its neighbours more easily than they do).
NOISE = 1.0
WORD = re.compile(r"[\w][\w'.-]*\w|\w")
SENTENCE = re.compile(r"(?<=[.!?])\s+")


@dataclass
class Queries:
    """Query vectors and where they came from."""

    model: str  # log | pseudo | noise
    vectors: np.ndarray  # (n, dimensions) float32
    texts: list[str] | None = None  # the pseudo-queries' texts (kept in memory only, never stored)


def model_stack_installed() -> bool:
    return importlib.util.find_spec("sentence_transformers") is not None


def measurable(model: type[models.Model], using: str = "default") -> bool:
    """Whether recall can be measured on queries like real ones: the log is large enough, or the model
    stack is installed for pseudo-queries."""
    return model_stack_installed() or logged_queries(model, using, 1) is not None


def spans(texts: list[str], n: int, seed: int = 0) -> list[str]:
    """n pseudo-query texts cut from ``texts`` (cycled): a run of SPAN_WORDS words from a random place,
    or (SENTENCE_SHARE of them) a whole sentence of at most SENTENCE_WORDS words."""
    rng = np.random.default_rng(seed)
    out: list[str] = []
    usable = [t for t in texts if WORD.search(t)]
    for i in range(n if usable else 0):
        text = usable[i % len(usable)]
        if rng.random() < SENTENCE_SHARE:
            sentences = [s for s in SENTENCE.split(text) if 3 <= len(WORD.findall(s)) <= SENTENCE_WORDS]
            if sentences:
                out.append(" ".join(WORD.findall(sentences[rng.integers(len(sentences))])))
                continue
        words = WORD.findall(text)
        length = int(rng.integers(SPAN_WORDS[0], SPAN_WORDS[1] + 1))
        start = int(rng.integers(0, max(1, len(words) - length + 1)))
        out.append(" ".join(words[start : start + length]))
    return out


def sample_rows(conn: Any, table: str, columns: list[str], n: int, rows: int, seed: int) -> list[tuple]:
    """About ``n`` rows chosen at random, repeatably for a seed.

    TABLESAMPLE SYSTEM reads a few random pages instead of the whole table (ORDER BY random() reads and
    sorts all of it: seconds at a million rows); it falls back to that when the pages hold too few.
    """
    percent = min(100.0, 100.0 * 4 * n / max(rows, 1))
    select = sql.SQL(", ").join(sql.SQL(c) if "(" in c else sql.Identifier(c) for c in columns)
    query = sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM (%s) REPEATABLE (%s)").format(
        select, sql.Identifier(table)
    )
    found = conn.execute(query, [percent, seed]).fetchall()
    if len(found) < n:
        query = sql.SQL("SELECT {} FROM {} ORDER BY random() LIMIT %s").format(select, sql.Identifier(table))
        found = conn.execute(query, [n]).fetchall()
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(found), size=min(n, len(found)), replace=False)
    return [found[i] for i in sorted(chosen)]


def pseudo_queries(model: type[models.Model], using: str, n: int, rows: int, seed: int = 0) -> Queries:
    """Spans of sampled documents' text, embedded with the model that made the table's vectors (its
    record). Raises ModelStackMissing where sentence-transformers is not installed."""
    conn = pg.django_connection(using)
    document = passages.document_of(model)
    if document is None:
        text = sql.Identifier(model._meta.get_field("text").column)
    else:  # a passage table: each sampled passage's own text, its span of its document's text
        text = sql.SQL(
            '(SELECT substr(d.{text}, {p}."start" + 1, {p}."end" - {p}."start") FROM {d} d'
            " WHERE d.{pk} = {p}.{fk})"
        ).format(
            text=sql.Identifier(document._meta.get_field("text").column),
            p=sql.Identifier(model._meta.db_table),
            d=sql.Identifier(document._meta.db_table),
            pk=sql.Identifier(document._meta.pk.column),
            fk=sql.Identifier(model._meta.get_field("document").column),
        )
    expr = sql.SQL("left({}, {})").format(text, sql.Literal(TEXT_CHARS)).as_string(conn)
    texts = [r[0] for r in sample_rows(conn, model._meta.db_table, [expr], n, rows, seed)]
    return from_texts(document or model, texts, n, seed, record.embedder(document or model, using))


def from_texts(model: type[models.Model], texts: list[str], n: int, seed: int, embedder: Any) -> Queries:
    """Pseudo-queries cut from ``texts`` and embedded with the model's embedder."""
    cut = spans(texts, n, seed)
    vectors = embedder.encode(cut) if cut else np.empty((0, 0), dtype=np.float32)
    return Queries("pseudo", np.asarray(vectors, dtype=np.float32), cut)


def noisy_queries(model: type[models.Model], using: str, n: int, rows: int, seed: int = 0) -> Queries:
    """Stored vectors moved by noise as long as each of them (no stored vector is a query)."""
    conn = pg.django_connection(using)
    column = model._meta.get_field("embedding").column
    stored = sample_rows(conn, model._meta.db_table, [column], n, rows, seed)
    rng = np.random.default_rng(seed)
    vectors = []
    for (value,) in stored:
        if value is None:
            continue
        v = np.asarray(value.to_numpy(), dtype=np.float32)
        noise = rng.standard_normal(v.shape).astype(np.float32)
        vectors.append(v + noise * (NOISE * float(np.linalg.norm(v)) / float(np.linalg.norm(noise))))
    dims = model._meta.get_field("embedding").dimensions
    return Queries("noise", np.stack(vectors) if vectors else np.empty((0, dims), dtype=np.float32))


def logged_queries(model: type[models.Model], using: str, n: int, seed: int = 0) -> Queries | None:
    """The logged queries (up to n), or None while the table has fewer than TUNE_MIN_LOGGED. A passage
    table's are its documents' (what is searched through it)."""
    model = passages.document_of(model) or model
    if query_log.recent(model, using).count() < max(1, conf.tune_min_logged()):
        return None
    return Queries("log", query_log.vectors(model, n, seed, using))


def choose(
    model: type[models.Model], using: str, n: int, rows: int, seed: int = 0, query_model: str = "auto"
) -> Queries:
    """The queries of ``query_model``; "auto": the log once it is large enough, else pseudo-queries
    (``noise``: benchmarks only)."""
    if query_model in ("auto", "log"):
        logged = logged_queries(model, using, n, seed)
        if logged is not None:
            return logged
        if query_model == "log":
            raise ValueError(
                f"query_model='log': {model._meta.db_table} has fewer than {conf.tune_min_logged()} logged"
                " queries (VECTORSTORE TUNE_MIN_LOGGED)"
            )
    if query_model == "noise":
        return noisy_queries(model, using, n, rows, seed)
    return pseudo_queries(model, using, n, rows, seed)


# Rows per fetch of the exact scan: 20,000 x 384 float32 is 30 MB, whatever the table's size.
_EXACT_CHUNK = 20_000


class KthDistances:
    """Each query's k smallest exact distances, kept up to date a chunk of stored vectors at a time."""

    def __init__(self, queries: np.ndarray, metric: str, k: int) -> None:
        queries = np.asarray(queries, dtype=np.float32)
        if metric == "cosine":
            queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
        self.queries, self.metric, self.k = queries, metric, k
        self.q_norms = (queries * queries).sum(axis=1)
        self.best = np.full((len(queries), 0), np.inf, dtype=np.float64)

    def add(self, matrix: np.ndarray) -> None:
        """Stored vectors (n, dimensions) float32."""
        if not len(matrix) or not len(self.queries):
            return
        dots = (self.queries @ matrix.T).astype(np.float64)
        if self.metric == "cosine":
            norms = np.linalg.norm(matrix, axis=1).astype(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                dist = 1.0 - dots / norms
            dist[:, norms == 0] = np.inf  # pgvector: NaN distance, ranked last
        elif self.metric == "l2":
            sq = (matrix.astype(np.float64) ** 2).sum(axis=1)
            dist = np.sqrt(np.maximum(self.q_norms[:, None] + sq[None, :] - 2.0 * dots, 0.0))
        else:
            dist = -dots
        both = np.concatenate([self.best, dist], axis=1)
        if both.shape[1] > self.k:
            both = np.partition(both, self.k - 1, axis=1)[:, : self.k]
        self.best = both

    def kth(self) -> np.ndarray:
        """The k-th smallest distance per query (inf where the table has fewer than k rows)."""
        if self.best.shape[1] < self.k:
            return np.full(len(self.queries), np.inf)
        return self.best.max(axis=1)


def kth_distances(
    using: str, table: str, column: str, metric: str, queries: np.ndarray, k: int
) -> np.ndarray:
    """Each query's exact k-th smallest distance over the table: one pass over it for all the queries.

    An exact scan per query in SQL reads the whole table once per query (200 queries, 200 scans);
    streaming the vectors once and ranking them here with one matrix product per chunk costs one scan.
    """
    truth = KthDistances(queries, metric, k)
    conn = pg.django_connection(using)
    query = sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(column), sql.Identifier(table), sql.Identifier(column)
    )
    with transaction.atomic(using=using), conn.cursor(name="vectorstore_tune_exact", binary=True) as cursor:
        # Vectors arrive as pgvector's binary bytes (uint16 dims, uint16 unused, float32 big-endian) and
        # are decoded a chunk at a time: a Vector object per row cost 1.5 s per 60,000 rows.
        cursor.adapters.register_loader("vector", ByteaBinaryLoader)
        cursor.execute(query)
        while batch := cursor.fetchmany(_EXACT_CHUNK):
            raw = np.frombuffer(b"".join(r[0] for r in batch), dtype=">f4")
            truth.add(raw.reshape(len(batch), -1)[:, 1:].astype(np.float32))
    return truth.kth()
