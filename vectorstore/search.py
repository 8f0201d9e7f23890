"""Vector, filtered, hybrid and text search: one service for the API, the admin and users' own code.

    from vectorstore.search import search
    result = search("tariffs on imported goods", k=5, filters={"category": "Whig", "year": {"$lt": 1850}})
    for hit in result.hits:
        print(hit.rank, round(hit.distance, 3), hit.document.text[:60])

Every vector query is ``ORDER BY distance LIMIT k`` through pgvector-python's
distance functions, so the index serves it; ``hnsw.ef_search``,
``hnsw.iterative_scan`` and ``ivfflat.probes`` are set with ``SET LOCAL`` in the
query's own transaction. A filtered query that still comes back with fewer than
k rows (more were filtered out than the index scan could make up for) is
answered again exactly, so it returns k rows whenever k rows match.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

import numpy as np
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connections, models, transaction
from django.db.models import F, Value
from pgvector.django import CosineDistance, L2Distance, MaxInnerProduct

from vectorstore import conf
from vectorstore.embedding import Embedder
from vectorstore.filters import SearchError, build_filter, storable
from vectorstore.limits import (
    EF_SEARCH_RANGE,
    ITERATIVE_SCANS,
    MAX_K,
    MAX_QUERY_CHARS,
    PROBES_RANGE,
    SEARCH_MODES,
    TEXT_SEARCH_CONFIG,
)

__all__ = ["Hit", "SearchError", "SearchResult", "build_filter", "embed_query", "search", "similar"]

# pgvector-python's distance functions, by the names of limits.METRICS.
METRICS = {"cosine": CosineDistance, "l2": L2Distance, "inner_product": MaxInnerProduct}
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.)


@dataclass
class Hit:
    document: models.Model
    rank: int
    score: float
    distance: float | None = None


@dataclass
class SearchResult:
    hits: list[Hit]
    took_ms: float
    mode: str
    metric: str
    exact: bool = False  # answered by an exact scan after the index scan came back short
    details: dict[str, Any] = field(default_factory=dict)


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


def embed_query(text: str, dimensions: int | None = None) -> np.ndarray:
    """The query's vector from the configured Embedder, cached by (model, text)."""
    key = (conf.model_name(), text)
    vector = query_cache.get(key)
    if vector is None:
        vector = Embedder(dimensions=dimensions).encode([text])[0]
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


def _set_local(using: str, settings: dict[str, str]) -> None:
    # set_config(..., true) is SET LOCAL: it ends with the transaction. One statement, one round trip.
    calls = ", ".join(["set_config(%s, %s, true)"] * len(settings))
    params = [part for item in settings.items() for part in item]
    with connections[using].cursor() as cursor:
        cursor.execute(f"SELECT {calls}", params)


def index_settings(ef_search: int | None, iterative_scan: str | None, probes: int | None) -> dict[str, str]:
    """Every knob, every time: SET LOCAL must not leak one query's choice into the next."""
    scan = iterative_scan or conf.iterative_scan()
    return {
        "hnsw.ef_search": str(ef_search or conf.ef_search()),
        "hnsw.iterative_scan": scan,
        # IVFFlat knows only off and relaxed_order.
        "ivfflat.iterative_scan": "off" if scan == "off" else "relaxed_order",
        "ivfflat.probes": str(probes or 1),
    }


# --------------------------------------------------------------------------- queries


def distance_expression(metric: str, vector: np.ndarray, field_name: str = "embedding"):
    return METRICS[metric](field_name, vector)


def vector_queryset(queryset: models.QuerySet, vector: np.ndarray, metric: str, k: int) -> models.QuerySet:
    """``ORDER BY distance LIMIT k``: the shape pgvector's indexes serve."""
    return queryset.annotate(distance=distance_expression(metric, vector)).order_by("distance")[:k]


def exact_queryset(queryset: models.QuerySet, vector: np.ndarray, metric: str, k: int) -> models.QuerySet:
    # Ordering by distance + 0 keeps the planner off the vector index: an exact scan of the matches.
    return queryset.annotate(distance=distance_expression(metric, vector)).order_by(
        (F("distance") + Value(0.0)).asc()
    )[:k]


def score_of(metric: str, distance: float) -> float:
    if metric == "cosine":
        return 1.0 - distance
    if metric == "inner_product":
        return -distance  # pgvector's <#> is the negative inner product
    return 1.0 / (1.0 + distance)


def _text_query(text: str) -> SearchQuery:
    return SearchQuery(text, search_type="websearch", config=TEXT_SEARCH_CONFIG)


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
) -> SearchResult:
    """Search the document table; see the module docstring. Raises SearchError naming the bad input."""
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
    ):
        if value is not None and not low <= value <= high:
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
    condition = build_filter(filters)
    # The hits' vectors and tsvectors stay in the database: parsing 10 x 384 numbers back
    # from text would cost more than the search itself (document.embedding loads on use).
    filtered = base.filter(condition).defer("embedding", "search_vector")

    qvector = None
    if mode != "text":
        qvector = check_vector(vector, dims) if vector is not None else embed_query(query, dims)

    exact = False
    with transaction.atomic(using=using):
        _set_local(using, index_settings(ef_search, iterative_scan, probes))
        if mode == "vector":
            docs = list(vector_queryset(filtered, qvector, metric, k))
            if len(docs) < k and filters:
                docs = list(exact_queryset(filtered, qvector, metric, k))
                exact = True
            docs.sort(key=lambda d: d.distance)  # relaxed_order may hand rows back slightly out of order
            hits = [Hit(d, i + 1, score_of(metric, d.distance), d.distance) for i, d in enumerate(docs)]
        else:
            tsquery = _text_query(query)
            pool = max(k, 50) if mode == "hybrid" else k
            text_docs = list(
                filtered.filter(search_vector=tsquery)
                .annotate(text_rank=SearchRank(F("search_vector"), tsquery, cover_density=True))
                .order_by("-text_rank", "pk")[:pool]
            )
            if mode == "text":
                hits = [Hit(d, i + 1, float(d.text_rank)) for i, d in enumerate(text_docs)]
            else:
                vector_docs = list(vector_queryset(filtered, qvector, metric, pool))
                vector_docs.sort(key=lambda d: d.distance)
                fused: dict[Any, float] = {}
                by_pk: dict[Any, models.Model] = {}
                for ranked in (vector_docs, text_docs):
                    for i, d in enumerate(ranked):
                        fused[d.pk] = fused.get(d.pk, 0.0) + 1.0 / (RRF_K + i + 1)
                        by_pk.setdefault(d.pk, d)
                # Ties (one document first in each list) go to the full-text match: it holds the words.
                text_rank = {d.pk: i for i, d in enumerate(text_docs)}
                order = sorted(fused, key=lambda pk: (-fused[pk], text_rank.get(pk, pool), pk))[:k]
                distances = dict(
                    filtered.filter(pk__in=order)
                    .annotate(distance=distance_expression(metric, qvector))
                    .values_list("pk", "distance")
                )
                hits = [Hit(by_pk[pk], i + 1, fused[pk], distances.get(pk)) for i, pk in enumerate(order)]
    for hit in hits:
        hit.document.distance = hit.distance
        hit.document.score = hit.score
    return SearchResult(
        hits=hits,
        took_ms=(time.perf_counter() - started) * 1000,
        mode=mode,
        metric=metric,
        exact=exact,
    )


def similar(document: models.Model, k: int = 10, **kwargs: Any) -> SearchResult:
    """The k documents nearest to one stored document (itself left out)."""
    queryset = kwargs.pop("queryset", None)
    queryset = queryset if queryset is not None else type(document)._default_manager.all()
    return search(vector=document.embedding, k=k, queryset=queryset.exclude(pk=document.pk), **kwargs)
