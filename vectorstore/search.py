"""Vector, filtered, hybrid and text search: one service for the API, the admin and users' own code.

    from vectorstore.search import search
    result = search("tariffs on imported goods", k=5, filters={"category": "Whig", "year": {"$lt": 1850}})
    for hit in result.hits:
        print(hit.rank, round(hit.distance, 3), hit.document.text[:60])

Every vector query is ``ORDER BY distance LIMIT k`` through pgvector-python's
distance functions, so the index serves it; ``hnsw.ef_search``,
``hnsw.iterative_scan`` and ``ivfflat.probes`` are set with ``SET LOCAL`` in the
query's own transaction. Search follows the vector index the table has (``vector_indexes.serving``): a
half-precision index is ordered by its ``halfvec`` cast, a binary one by Hamming distance between sign
bits, and the candidates of either (k x ``rerank``) are re-ranked by the full-precision distance, which
is the distance every hit reports. A filtered query that still comes back with fewer than
k rows (more were filtered out than the index scan could make up for) is
answered again exactly, so it returns k rows whenever k rows match.

Django builds each query (filters become lookups and parameters); ``statements`` runs it with
the vector bound in binary, the settings and the query in one round trip, and hands back rows:
``hit.values`` is the row, ``hit.document`` a model instance built only when asked for.
"""

from __future__ import annotations

import operator
import re
import time
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cached_property, reduce
from threading import Lock
from typing import Any, NamedTuple

import numpy as np
import psycopg
from django.apps import apps
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import OperationalError, connections, models, transaction
from django.db.models import ExpressionWrapper, F, Func, Q, Value
from django.db.models.lookups import Exact
from pgvector.django import CosineDistance, L2Distance, MaxInnerProduct

from vectorstore import bm25, conf, statements, vector_indexes
from vectorstore.embedding import Embedder
from vectorstore.filters import SearchError, build_filter, storable
from vectorstore.limits import (
    EF_SEARCH_RANGE,
    ITERATIVE_SCANS,
    MAX_K,
    MAX_QUERY_CHARS,
    PROBES_RANGE,
    RERANK_RANGE,
    SEARCH_MODES,
    TEXT_SEARCH_CONFIG,
)
from vectorstore.statements import QueryVector, Statement

__all__ = [
    "Hit",
    "SearchError",
    "SearchResult",
    "SearchTimeout",
    "build_filter",
    "embed_query",
    "search",
    "similar",
]

# pgvector-python's distance functions, by the names of limits.METRICS.
METRICS = {"cosine": CosineDistance, "l2": L2Distance, "inner_product": MaxInnerProduct}
# Hybrid search: weighted reciprocal rank fusion of the vector ranking (weight 1) and the text ranking,
# a text match holding every word weighing HYBRID_TEXT_WEIGHT and one holding only some of them
# HYBRID_PARTIAL_WEIGHT, each side ranking HYBRID_CANDIDATES (or k, if more). Chosen with
# benchmarks/bench_hybrid.py on two corpora and two kinds of query (benchmarks/README.md): text weight
# 1 is what known items need (MRR 0.94 against 0.46-0.58 at 0.5), and precision on natural-language
# needs stayed at 1.03-1.04x vector search's; ranking partial matches moved precision by no more than
# the noise of the query sets and cost 14-25% more time, so it is off unless asked for.
RRF_K = 60
HYBRID_TEXT_WEIGHT = 1.0
HYBRID_PARTIAL_WEIGHT = 0.0
HYBRID_CANDIDATES = 50
MAX_QUERY_WORDS = 32  # words of a hybrid query's partial-match side (each one a term of an OR query)
HYBRID_OPTIONS = ("text_weight", "partial_weight", "rrf_k", "vector_k", "text_k")
MMR_LAMBDA = 0.5  # maximal marginal relevance: langchain's defaults
MMR_FETCH_K = 20
FILTERED_EF_FACTOR = 2  # filtered searches through the graph use this many times the tuned ef_search


@dataclass
class Hit:
    """One result: rank, score and distance, the stored fields in ``values`` (every concrete field but the
    vector and the tsvector), and ``document``, a model instance built from them on first use."""

    rank: int
    score: float
    distance: float | None
    values: dict[str, Any]
    model: type[models.Model] = field(repr=False)
    using: str = field(default="default", repr=False)

    @cached_property
    def document(self) -> models.Model:
        """The hit as a model instance (its vector and tsvector deferred), with ``distance`` and ``score``."""
        document = self.model.from_db(self.using, list(self.values), list(self.values.values()))
        document.distance = self.distance
        document.score = self.score
        return document


class SearchTimeout(RuntimeError):
    """A search ran past VECTORSTORE SEARCH_TIMEOUT_MS (PostgreSQL's statement_timeout cancelled it)."""

    def __init__(self, timeout_ms: int) -> None:
        super().__init__(
            f"the search took longer than {timeout_ms} ms and was stopped; try a narrower filter"
        )
        self.timeout_ms = timeout_ms

    @property
    def retry_after(self) -> str:
        """Seconds for a Retry-After header: the timeout, at least one."""
        return str(max(1, round(self.timeout_ms / 1000)))


@contextmanager
def _timeouts() -> Iterator[None]:
    """PostgreSQL's statement_timeout cancelling a query, as SearchTimeout."""
    try:
        yield
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            raise SearchTimeout(conf.search_timeout_ms()) from exc
        raise


@dataclass
class SearchResult:
    hits: list[Hit]
    took_ms: float
    mode: str
    metric: str
    exact: bool = False  # answered by an exact scan after the index scan came back short
    details: dict[str, Any] = field(default_factory=dict)
    database: str = "default"  # the database alias that answered (a replica, with vectorstore.routers)


# --------------------------------------------------------------------------- query vectors


class _LRU:
    """A small thread-safe LRU of query vectors: repeated queries skip the model."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.data: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.lock = Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> np.ndarray | None:
        with self.lock:
            value = self.data.get(key)
            if value is None:
                self.misses += 1
                return None
            self.data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: np.ndarray) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


query_cache = _LRU()


def embed_query(text: str, model: type[models.Model] | None = None) -> np.ndarray:
    """The query's vector from the document model's Embedder (``Embedder.for_model``), cached by
    (embedding model, text)."""
    model = model or conf.document_model()
    name = getattr(model, "embedding_model", None) or conf.model_name()
    key = (name, model._meta.get_field("embedding").dimensions, text)
    vector = query_cache.get(key)
    if vector is None:
        vector = Embedder.for_model(model).encode([text])[0]
        vector.setflags(write=False)
        query_cache.put(key, vector)
    return vector


def check_vector(vector: Any, dimensions: int, name: str = "vector") -> np.ndarray:
    try:
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
            array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SearchError(name, "must be a list of numbers") from exc
    if array.ndim != 1:
        raise SearchError(name, "must be a flat list of numbers")
    if len(array) != dimensions:
        raise SearchError(name, f"has {len(array)} numbers; the vector column holds {dimensions}")
    if not np.isfinite(array).all():
        raise SearchError(name, "holds NaN or infinity, or a number beyond float32's range")
    return array


# --------------------------------------------------------------------------- index settings


class Tuned(NamedTuple):
    """What tune_search stored for a table: ef_search, probes, and a binary index's re-rank factor."""

    ef_search: int | None = None
    probes: int | None = None
    rerank: int | None = None


class Rerank(NamedTuple):
    """A search through a quantized index: order by the index's expression, re-rank k x factor
    candidates by the full-precision distance."""

    quantization: str
    dimensions: int
    factor: int


def index_settings(
    ef_search: int | None,
    iterative_scan: str | None,
    probes: int | None,
    tuned: tuple[int | None, ...] = Tuned(),
) -> dict[str, str]:
    """Every knob, every time: SET LOCAL must not leak one query's choice into the next.

    A value given for this query wins; then the table's tuned one (``manage.py tune_search``); then
    the VECTORSTORE setting (``EF_SEARCH``) or pgvector's default.
    """
    scan = iterative_scan or conf.iterative_scan()
    return {
        "hnsw.ef_search": str(ef_search or tuned[0] or conf.ef_search()),
        "hnsw.iterative_scan": scan,
        # IVFFlat knows only off and relaxed_order.
        "ivfflat.iterative_scan": "off" if scan == "off" else "relaxed_order",
        "ivfflat.probes": str(probes or tuned[1] or 1),
    }


TUNING_TTL = 30.0  # seconds a process keeps a table's tuned settings before reading them again
_tuning: dict[tuple[str, str], tuple[float, Tuned]] = {}
_tuning_lock = Lock()


def tuned_settings(table: str, using: str) -> Tuned:
    """(ef_search, probes, rerank) that tune_search stored for the table, read at most every TUNING_TTL s."""
    now = time.monotonic()
    with _tuning_lock:
        cached = _tuning.get((table, using))
    if cached is not None and now - cached[0] < TUNING_TTL:
        return cached[1]
    # Looked up in the app registry, not imported: the models import this module.
    tuning = apps.get_model("vectorstore", "SearchTuning")
    rows = list(
        tuning.objects.using(using).filter(db_table=table).values_list("ef_search", "probes", "rerank")
    )
    found = Tuned(*(max((r[i] for r in rows if r[i]), default=None) for i in range(3)))
    with _tuning_lock:
        _tuning[(table, using)] = (now, found)
    return found


def forget_tuning() -> None:
    """Read tuned settings afresh at the next search (tune() calls this after storing new ones)."""
    with _tuning_lock:
        _tuning.clear()


# --------------------------------------------------------------------------- queries


def distance_expression(metric: str, vector: np.ndarray, field_name: str = "embedding"):
    return METRICS[metric](field_name, vector)


def vector_queryset(queryset: models.QuerySet, vector: np.ndarray, metric: str, k: int) -> models.QuerySet:
    """``ORDER BY distance LIMIT k``: the shape pgvector's indexes serve."""
    return queryset.annotate(distance=distance_expression(metric, vector)).order_by("distance")[:k]


def score_of(metric: str, distance: float) -> float:
    if metric == "cosine":
        return 1.0 - distance
    if metric == "inner_product":
        return -distance  # pgvector's <#> is the negative inner product
    return 1.0 / (1.0 + distance)


def _text_query(text: str) -> SearchQuery:
    """Mode text: web search syntax (every word, "quoted phrases", -excluded, or), as PostgreSQL's
    websearch_to_tsquery reads it."""
    return SearchQuery(text, search_type="websearch", config=TEXT_SEARCH_CONFIG)


def _any_words(text: str) -> SearchQuery | None:
    """Hybrid's text side when partial matches count (``partial_weight`` > 0): documents holding any of
    the query's words, those with more (and closer) of them ranked higher, so that a natural-language
    query that no text matches word for word still has a text side. Each word is a parameter of its
    own plainto_tsquery; None when the text has no word."""
    words = list(dict.fromkeys(w.lower() for w in re.findall(r"\w+", text)))[:MAX_QUERY_WORDS]
    if not words:
        return None
    return reduce(
        operator.or_, (SearchQuery(w, search_type="plain", config=TEXT_SEARCH_CONFIG) for w in words)
    )


def search(
    query: str | None = None,
    *,
    vector: Sequence[float] | np.ndarray | None = None,
    k: int = 10,
    filters: dict | None = None,
    mode: str = "vector",
    metric: str | None = None,
    ef_search: int | None = None,
    iterative_scan: str | None = None,
    probes: int | None = None,
    queryset: models.QuerySet | None = None,
    using: str | None = None,
    mmr: dict[str, Any] | None = None,
    hybrid: dict[str, Any] | None = None,
    rerank: int | None = None,
) -> SearchResult:
    """Search the document table; see the module docstring. Raises SearchError naming the bad input.

    ``mmr={"lambda_mult": 0.5, "fetch_k": 20}`` (langchain's names; either may be left out) picks the k
    results by maximal marginal relevance among the ``fetch_k`` best candidates (``mmr_select``).
    ``hybrid={"text_weight", "partial_weight", "rrf_k", "vector_k", "text_k"}`` (any of them) tunes mode
    hybrid's fusion (``hybrid_options``). ``rerank``: through a quantized index, re-rank k x rerank
    candidates by the full vectors (default: the factor tune_search stored, else VECTORSTORE RERANK for a
    binary index and 1 for a half-precision one).
    """
    started = time.perf_counter()
    model = queryset.model if queryset is not None else conf.document_model()
    base = queryset if queryset is not None else model._default_manager.all()
    using = using or base.db
    dims = model._meta.get_field("embedding").dimensions
    if mode not in SEARCH_MODES:
        raise SearchError("mode", f"expected one of {', '.join(SEARCH_MODES)}")
    metric = metric or conf.distance()
    if metric not in METRICS:
        raise SearchError("metric", f"expected one of {', '.join(METRICS)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise SearchError("k", f"must be an integer from 1 to {MAX_K}")
    for name, value, (low, high) in (
        ("ef_search", ef_search, EF_SEARCH_RANGE),
        ("probes", probes, PROBES_RANGE),
        ("rerank", rerank, RERANK_RANGE),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high
        ):
            raise SearchError(name, f"must be from {low} to {high}")
    if iterative_scan is not None and iterative_scan not in ITERATIVE_SCANS:
        raise SearchError("iterative_scan", f"expected one of {', '.join(ITERATIVE_SCANS)}")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise SearchError("query", "must be a non-empty string")
        storable(query, "query")
        if len(query) > MAX_QUERY_CHARS:
            raise SearchError("query", f"at most {MAX_QUERY_CHARS} characters")
    if mode in ("hybrid", "text") and query is None:
        raise SearchError("query", f"{mode} search needs a query text")
    if mode == "vector" and query is None and vector is None:
        raise SearchError("query", "give a query text or a vector")
    if vector is not None and query is not None and mode == "vector":
        raise SearchError("vector", "give a query text or a vector, not both")
    lambda_mult, wanted = None, k
    if mmr is not None:
        if mode == "text":
            raise SearchError("mmr", "needs vectors to compare: use mode vector or hybrid")
        lambda_mult, k = mmr_options(mmr, k)
    if hybrid is not None and mode != "hybrid":
        raise SearchError("hybrid", "applies to mode hybrid only")
    fusion = hybrid_options(hybrid, k) if mode == "hybrid" else None
    condition = build_filter(filters)
    filtered = base.filter(condition)
    # The hits' vectors and tsvectors stay in the database: parsing 10 x 384 numbers back
    # would cost more than the search itself (Hit.document.embedding loads on use). MMR needs them.
    fields = [f.attname for f in model._meta.concrete_fields if f.name not in ("embedding", "search_vector")]
    if lambda_mult is not None:
        fields.append(model._meta.get_field("embedding").attname)
    tuned = Tuned()
    if ef_search is None or probes is None or rerank is None:
        tuned = tuned_settings(model._meta.db_table, using)
    settings = index_settings(ef_search, iterative_scan, probes, tuned)
    plan = None
    if mode != "text":
        index = vector_indexes.serving(model, metric, using)
        if index is not None and index.quantization is not None:
            binary = index.quantization == "binary"
            factor = rerank or (tuned.rerank if binary else None) or (conf.rerank() if binary else 1)
            plan = Rerank(index.quantization, dims, factor)
    # The SQL of a search on the model's own manager depends only on its shape: Django compiles it once.
    shape = (
        (model._meta.label, using, tuple(fields), metric, plan) if queryset is None and not filters else None
    )
    if filters and ef_search is None:
        # A filtered walk of the graph keeps fewer of each batch's candidates: a wider batch holds the
        # recall that the tuned setting gives unfiltered (0.947-0.957 at x1 on a 10% filter, measured).
        wider = min(EF_SEARCH_RANGE[1], FILTERED_EF_FACTOR * int(settings["hnsw.ef_search"]))
        settings["hnsw.ef_search"] = str(wider)
    settings["statement_timeout"] = str(conf.search_timeout_ms())

    qvector = None
    if mode != "text":
        qvector = check_vector(vector, dims) if vector is not None else embed_query(query, model)

    def hit(rank: int, row: tuple, score: float, distance: float | None) -> Hit:
        return Hit(rank, score, distance, dict(zip(fields, row, strict=False)), model, using)

    exact = False
    with _timeouts():
        if mode == "vector":
            rows, exact, _ = _vector_rows(
                filtered, fields, metric, k, shape, settings, qvector, using, bool(filters), plan=plan
            )
            rows.sort(key=lambda r: r[-1])  # relaxed_order may hand rows back slightly out of order
            hits = [hit(i + 1, r, score_of(metric, r[-1]), r[-1]) for i, r in enumerate(rows)]
        else:
            # BM25 where the table has a pg_textsearch index (vectorstore.bm25), else ts_rank_cd.
            bm25_index = bm25.index_for(model, using)
            ranking = (query, bm25_index) if bm25_index else None
            if mode == "text":
                text = Statement.compile(
                    _text_query_set(filtered, fields, _text_query(query), None, k, ranking)
                )
                (text_rows,) = statements.run(using, settings, [text], None)
                hits = [
                    hit(i + 1, r, _text_score(r[len(fields)], ranking), None) for i, r in enumerate(text_rows)
                ]
            else:
                text_weight, partial_weight, rrf_k, vector_k, text_k = fusion
                # Partial matches weighed at 0 need not be ranked at all: the text side is then the
                # documents holding every word (ranking every document holding any word costs more).
                partial = partial_weight > 0
                every_word = _text_query(query)
                words = _any_words(query) if partial else every_word
                text = Statement.compile(
                    _text_query_set(
                        filtered, fields, words, metric, text_k, ranking, every_word if partial else None
                    )
                    if words
                    else filtered.none()
                )
                vector_rows, exact, text_rows = _vector_rows(
                    filtered,
                    fields,
                    metric,
                    vector_k,
                    shape,
                    settings,
                    qvector,
                    using,
                    bool(filters),
                    text,
                    plan,
                )
                vector_rows.sort(key=lambda r: r[-1])
                pk = fields.index(model._meta.pk.attname)
                fused: dict[Any, float] = {}
                by_pk: dict[Any, tuple] = {}
                for i, r in enumerate(vector_rows):
                    fused[r[pk]] = 1.0 / (rrf_k + i + 1)
                    by_pk[r[pk]] = r
                # A text match holding every word counts with text_weight; one holding only some of them,
                # a weaker signal on its own, with partial_weight (the row's every_word flag).
                for i, r in enumerate(text_rows):
                    weight = text_weight if not partial or r[len(fields) + 1] else partial_weight
                    fused[r[pk]] = fused.get(r[pk], 0.0) + weight / (rrf_k + i + 1)
                    by_pk.setdefault(r[pk], r)
                # Ties (one document first in each list) go to the full-text match: it holds the words.
                text_rank = {r[pk]: i for i, r in enumerate(text_rows)}
                order = sorted(fused, key=lambda key: (-fused[key], text_rank.get(key, text_k), key))[:k]
                hits = [hit(i + 1, by_pk[key], fused[key], by_pk[key][-1]) for i, key in enumerate(order)]
    if lambda_mult is not None:
        hits = _mmr_hits(hits, fields[-1], lambda_mult, wanted)
    return SearchResult(
        hits=hits,
        took_ms=(time.perf_counter() - started) * 1000,
        mode=mode,
        metric=metric,
        exact=exact,
        details={"rerank": plan.factor, "quantization": plan.quantization} if plan else {},
        database=using,
    )


def hybrid_options(hybrid: Any, k: int) -> tuple[float, float, int, int, int]:
    """Mode hybrid's fusion: ``text_weight`` (the weight of a text match holding every word, against the
    vector ranking's 1), ``partial_weight`` (of a text match holding only some of the words; both 0 is
    vector search alone), ``rrf_k`` (the rank constant: smaller favours each list's first places),
    ``vector_k`` and ``text_k`` (candidates each side ranks, k or more)."""
    if hybrid is None:
        hybrid = {}
    if not isinstance(hybrid, dict):
        raise SearchError("hybrid", f"expected an object with {', '.join(HYBRID_OPTIONS)}")
    unknown = sorted(set(hybrid) - set(HYBRID_OPTIONS))
    if unknown:
        raise SearchError(f"hybrid.{unknown[0]}", f"unknown option; expected {', '.join(HYBRID_OPTIONS)}")
    weights = []
    for name, default in (("text_weight", HYBRID_TEXT_WEIGHT), ("partial_weight", HYBRID_PARTIAL_WEIGHT)):
        value = hybrid.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
            raise SearchError(f"hybrid.{name}", "must be a number from 0 to 10")
        weights.append(float(value))
    rrf_k = hybrid.get("rrf_k", RRF_K)
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or not 0 <= rrf_k <= 10_000:
        raise SearchError("hybrid.rrf_k", "must be an integer from 0 to 10000")
    sides = []
    for name in ("vector_k", "text_k"):
        value = hybrid.get(name, max(k, HYBRID_CANDIDATES))
        if isinstance(value, bool) or not isinstance(value, int) or not k <= value <= MAX_K:
            raise SearchError(f"hybrid.{name}", f"must be an integer from k ({k}) to {MAX_K}")
        sides.append(value)
    return weights[0], weights[1], rrf_k, sides[0], sides[1]


def mmr_options(mmr: Any, k: int) -> tuple[float, int]:
    """``lambda_mult`` (0: most diverse .. 1: plain relevance) and ``fetch_k`` (candidates, k or more)."""
    if not isinstance(mmr, dict):
        raise SearchError("mmr", "expected an object with lambda_mult and fetch_k")
    unknown = sorted(set(mmr) - {"lambda_mult", "fetch_k"})
    if unknown:
        raise SearchError(f"mmr.{unknown[0]}", "unknown option; expected lambda_mult or fetch_k")
    lambda_mult = mmr.get("lambda_mult", MMR_LAMBDA)
    if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, int | float) or not 0 <= lambda_mult <= 1:
        raise SearchError("mmr.lambda_mult", "must be a number from 0 to 1")
    fetch_k = mmr.get("fetch_k", max(MMR_FETCH_K, k))
    if isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or not k <= fetch_k <= MAX_K:
        raise SearchError("mmr.fetch_k", f"must be an integer from k ({k}) to {MAX_K}")
    return float(lambda_mult), fetch_k


def mmr_select(relevance: np.ndarray, vectors: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """Maximal marginal relevance (Carbonell and Goldstein, 1998): repeatedly take the candidate that
    maximizes ``lambda_mult * relevance - (1 - lambda_mult) * (its greatest cosine similarity to those
    taken)``. ``relevance`` is rescaled to [0, 1] over the candidates, so that it and the similarity
    share a scale whatever the metric or mode (hybrid's fused scores are ~0.03); the first pick is the
    most relevant, and lambda_mult 1 keeps the plain order.

    Written here (some 15 lines of numpy) rather than taken from langchain, whose helper would bring its
    whole package for one function and measures relevance by cosine only.
    """
    n = len(relevance)
    if n == 0:
        return []
    spread = relevance.max() - relevance.min()
    rel = (relevance - relevance.min()) / spread if spread > 0 else np.ones(n)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    similarity = unit @ unit.T
    chosen = [int(np.argmax(rel))]
    closest = similarity[chosen[0]].copy()  # each candidate's greatest similarity to those taken
    taken = np.zeros(n, dtype=bool)
    taken[chosen[0]] = True
    while len(chosen) < min(k, n):
        value = lambda_mult * rel - (1.0 - lambda_mult) * closest
        value[taken] = -np.inf
        pick = int(np.argmax(value))  # ties: the earlier (more relevant) candidate
        chosen.append(pick)
        taken[pick] = True
        np.maximum(closest, similarity[pick], out=closest)
    return chosen


def _mmr_hits(hits: list[Hit], vector_field: str, lambda_mult: float, k: int) -> list[Hit]:
    """The k of the candidate hits that MMR picks, ranked in picking order (their vectors dropped)."""
    if not hits:
        return hits
    vectors = np.stack([np.asarray(h.values.pop(vector_field), dtype=np.float32) for h in hits])
    relevance = np.array([h.score for h in hits], dtype=np.float64)
    picked = mmr_select(relevance, vectors, k, lambda_mult)
    out = []
    for rank, i in enumerate(picked, start=1):
        hits[i].rank = rank
        out.append(hits[i])
    return out


def _vector_rows(
    filtered: models.QuerySet,
    fields: list[str],
    metric: str,
    k: int,
    shape: tuple | None,
    settings: dict[str, str],
    qvector: np.ndarray,
    using: str,
    has_filter: bool,
    also: Statement | None = None,
    plan: Rerank | None = None,
) -> tuple[list[tuple], bool, list[tuple]]:
    """The k nearest rows, whether an exact scan of the filter's matches found them, and the rows of
    ``also`` (hybrid's full-text statement), sent in the first round trip.

    A filter that matches few rows (at most EXACT_SEARCH_ROWS) is answered exactly over its matches,
    which the filter's own index finds; a broad one through the vector index's iterative scan, which
    finds k matches quickly when many rows match. The bounded count and both branches go in one round
    trip (``_planned``), only the chosen branch reading rows. Asking the vector index for a rare
    filter's rows would walk the graph until max_scan_tuples and then scan the whole table anyway.

    Through a quantized index (``plan``) the index's order picks k x factor candidates, re-ranked by the
    full distance; the graph search keeps at least that many (``hnsw.ef_search``).
    """
    started = time.perf_counter()
    extra = [also] if also is not None else []
    limit = conf.exact_search_rows()
    if plan is not None:
        wider = max(int(settings["hnsw.ef_search"]), min(EF_SEARCH_RANGE[1], k * plan.factor))
        settings = {**settings, "hnsw.ef_search": str(wider)}
    if not has_filter or limit <= 0:
        rows, *rest = statements.run(
            using, settings, [_nearest(filtered, fields, metric, k, shape, plan), *extra], qvector
        )
        exact = False
    else:
        probe, few, broad, *rest = statements.run(
            using, settings, [*_planned(filtered, fields, metric, k, limit, plan), *extra], qvector
        )
        exact = not probe or probe[0][0] == "on"
        rows = few if exact else broad
    if has_filter and not exact and len(rows) < k:
        # The iterative scan ran out (max_scan_tuples) before k matches: search them all exactly.
        # The search as a whole stays within the timeout: this second round trip gets what is left.
        timeout = conf.search_timeout_ms()
        left = timeout - round((time.perf_counter() - started) * 1000)
        if left <= 0:
            raise SearchTimeout(timeout)
        exact_statement = Statement.compile(_nearest_query(filtered, fields, metric, k, exact=True))
        (rows,) = statements.run(
            using, {**settings, "statement_timeout": str(left)}, [exact_statement], qvector
        )
        exact = True
    return rows, exact, rest[0] if rest else []


# Set by the first of _planned's statements, read by the second (within the search's transaction).
_FEW_ROWS_SETTING = "vectorstore.few_rows"


def _planned(
    filtered: models.QuerySet, fields: list[str], metric: str, k: int, limit: int, plan: Rerank | None = None
) -> list[Statement]:
    """Three statements for one round trip. The first sets ``vectorstore.few_rows`` to 'on' when at most
    ``limit`` rows match (it reads at most limit + 1 of them, through the filter's index) and returns it.
    The second, run only when it is 'on', returns the k nearest matches by an exact scan; the third, run
    only when it is 'off', the k nearest through the vector index's iterative scan. Each is gated by a
    one-time filter on the setting, so the one not wanted stops before reading a row."""
    beyond = Statement.compile(filtered.values_list("pk")[limit : limit + 1])
    if beyond.empty:  # the filter matches nothing: there is nothing to send
        return [beyond, beyond, beyond]
    probe = Statement(
        f"SELECT set_config('{_FEW_ROWS_SETTING}', CASE WHEN EXISTS ({beyond.sql}) THEN 'off' ELSE 'on' END,"
        " true)",
        beyond.params,
        (),
    )
    setting = Func(Value(_FEW_ROWS_SETTING), function="current_setting", output_field=models.TextField())
    few = _nearest_query(filtered.filter(Exact(setting, Value("on"))), fields, metric, k, exact=True)
    broad = filtered.filter(Exact(setting, Value("off")))
    return [probe, Statement.compile(few), _nearest(broad, fields, metric, k, None, plan)]


def _nearest_query(
    queryset: models.QuerySet,
    fields: list[str],
    metric: str,
    k: int,
    exact: bool = False,
    plan: Rerank | None = None,
) -> models.QuerySet:
    """The rows' fields and full-precision distance, nearest first: ``ORDER BY distance LIMIT k`` (the
    index's shape); ordered by distance + 0, which keeps the planner off the index (an exact scan of the
    matches); or, through a quantized index, the k x factor rows first by the index's own expression."""
    annotated = queryset.annotate(distance=METRICS[metric]("embedding", QueryVector()))
    if exact:
        order = (F("distance") + Value(0.0)).asc()
    elif plan is not None:
        annotated = annotated.alias(
            index_distance=vector_indexes.order_expression(
                "embedding", plan.quantization, plan.dimensions, metric, QueryVector()
            )
        )
        order, k = "index_distance", k * plan.factor
    else:
        order = "distance"
    return annotated.order_by(order).values_list(*fields, "distance")[:k]


def _nearest(
    queryset: models.QuerySet,
    fields: list[str],
    metric: str,
    k: int,
    shape: tuple | None,
    plan: Rerank | None = None,
) -> Statement:
    """The k nearest: through the index's order, and for a quantized index re-ranked by full distance."""
    if shape is None:
        statement = Statement.compile(_nearest_query(queryset, fields, metric, k, plan=plan))
    else:
        statement = statements.statement_cache.get(
            ("nearest", *shape, k), lambda: _nearest_query(queryset, fields, metric, k, plan=plan)
        )
    return statement.reranked(k) if plan is not None else statement


def _text_query_set(
    queryset: models.QuerySet,
    fields: list[str],
    tsquery: SearchQuery,
    metric: str | None,
    k: int,
    ranking: tuple[str, str] | None = None,
    every_word: SearchQuery | None = None,
) -> models.QuerySet:
    """Full-text matches, best first: the rows' fields, their rank, and (for hybrid) whether they hold
    ``every_word`` and their distance.

    ``ranking`` (the query text and a bm25 index) ranks the matches by BM25, in the order the index
    scans (``ORDER BY text <@> to_bm25query(...)``, negative scores); else by ``ts_rank_cd``, the
    matches holding ``every_word`` first.
    """
    matches = queryset.filter(search_vector=tsquery)
    if ranking is not None:
        ranked = matches.annotate(text_rank=bm25.BM25Score("text", *ranking))
        order = ["text_rank"]  # no tie-break column: it would keep the index from giving the order
    else:
        ranked = matches.annotate(text_rank=SearchRank(F("search_vector"), tsquery, cover_density=True))
        order = ["-text_rank", "pk"]
    columns = [*fields, "text_rank"]
    if every_word is not None:
        holds = ExpressionWrapper(Q(search_vector=every_word), output_field=models.BooleanField())
        ranked = ranked.annotate(every_word=holds)
        columns.append("every_word")
        if ranking is None:
            order.insert(0, "-every_word")
    if metric is not None:
        ranked = ranked.annotate(distance=METRICS[metric]("embedding", QueryVector()))
        columns.append("distance")
    return ranked.order_by(*order).values_list(*columns)[:k]


def _text_score(value: float, ranking: tuple[str, str] | None) -> float:
    """A text match's score, higher is better: BM25's (the index gives it negated) or ts_rank_cd's."""
    return -float(value) if ranking is not None else float(value)


@contextmanager
def bounded(using: str = "default") -> Iterator[None]:
    """Run the ORM queries inside under the search timeout (SEARCH_TIMEOUT_MS), in one transaction:
    a query that runs past it raises SearchTimeout (the API answers 503), never holds a worker."""
    with transaction.atomic(using=using), _timeouts():
        with connections[using].cursor() as cursor:
            timeout = str(conf.search_timeout_ms())
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
        yield


def similar(document: models.Model, k: int = 10, **kwargs: Any) -> SearchResult:
    """The k documents nearest to one stored document (itself left out)."""
    queryset = kwargs.pop("queryset", None)
    queryset = queryset if queryset is not None else type(document)._default_manager.all()
    return search(vector=document.embedding, k=k, queryset=queryset.exclude(pk=document.pk), **kwargs)
