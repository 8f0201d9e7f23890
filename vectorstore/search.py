"""Vector, filtered and hybrid search: one service for the API, the admin and users' own code.

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

import json
import math
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from threading import Lock
from typing import Any

import numpy as np
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connections, models, transaction
from django.db.models import F, Func, Q, Value
from django.db.models.fields.json import KeyTransform
from django.db.models.functions import Cast
from django.db.models.lookups import Exact, Lookup
from django.utils.dateparse import parse_datetime
from pgvector.django import CosineDistance, L2Distance, MaxInnerProduct

from vectorstore import conf
from vectorstore.models import TEXT_SEARCH_CONFIG
from vectorstore.validation import storable_text

METRICS = {"cosine": CosineDistance, "l2": L2Distance, "inner_product": MaxInnerProduct}
MODES = ("vector", "hybrid", "text")
RRF_K = 60  # reciprocal rank fusion constant (Cormack et al.)
MAX_K = 1000
MAX_QUERY_CHARS = 2000
MAX_LIST = 1000
COLUMN_FILTERS = {
    "category": "category",
    "external_id": "external_id",
    "created_at": "created_at",
    "id": "pk",
}
OPERATORS = ("$eq", "$ne", "$lt", "$lte", "$gt", "$gte", "$in", "$nin", "$exists")


class SearchError(ValueError):
    """A bad search request; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


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
    from vectorstore.embedding import Embedder

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


# --------------------------------------------------------------------------- filters


def _text(value: str, where: str) -> str:
    try:
        return storable_text(value)
    except ValueError as exc:
        raise SearchError(where, f"strings {exc}") from None


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return _text(value, where)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SearchError(where, "numbers must be finite")
        return value
    raise SearchError(where, f"expected a string, number, boolean or null, not {type(value).__name__}")


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list | tuple):
        raise SearchError(where, "expected a list")
    if len(value) > MAX_LIST:
        raise SearchError(where, f"at most {MAX_LIST} values")
    return [_scalar(v, where) for v in value]


def _column_value(column: str, value: Any, where: str) -> Any:
    value = _scalar(value, where)
    if value is None:
        return value
    if column == "created_at":
        parsed = parse_datetime(value) if isinstance(value, str) else None
        if parsed is None:
            raise SearchError(where, "expected an ISO 8601 date and time, such as 2024-01-31T00:00:00Z")
        return parsed
    if column == "pk" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise SearchError(where, "expected an integer")
    if column in ("category", "external_id") and not isinstance(value, str):
        raise SearchError(where, "expected a string")
    return value


_LOOKUPS = {"$eq": "exact", "$ne": "exact", "$lt": "lt", "$lte": "lte", "$gt": "gt", "$gte": "gte"}
_NOTHING = Q(pk__in=[])


def _conditions(spec: Any, where: str, value_of, make, exists) -> Q:
    """One field's filter: a bare value means $eq; a dict holds operators.

    ``value_of(value, where)`` checks a value, ``make(lookup, value)`` builds a condition,
    ``exists()`` the condition that the field is present. A document without the field matches
    no comparison ($ne and $nin included), only ``$exists: false``.
    """
    if not isinstance(spec, dict):
        return make("exact", value_of(spec, where))
    if not spec:
        raise SearchError(where, f"expected a value or at least one operator of {', '.join(OPERATORS)}")
    q = Q()
    for op, value in spec.items():
        at = f"{where}.{op}"
        if op not in OPERATORS:
            raise SearchError(at, f"unknown operator; expected one of {', '.join(OPERATORS)}")
        if op == "$exists":
            if not isinstance(value, bool):
                raise SearchError(at, "expected true or false")
            cond = exists()
            q &= cond if value else ~cond
        elif op in ("$in", "$nin"):
            values = [value_of(v, at) for v in _list(value, at)]
            if not values:  # nothing to be in: $in matches nothing, $nin every document with the field
                q &= _NOTHING if op == "$in" else exists()
                continue
            cond = make("in", values)
            q &= (exists() & ~cond) if op == "$nin" else cond
        else:
            value = value_of(value, at)
            if value is None and op not in ("$eq", "$ne"):
                raise SearchError(at, "null can only be compared with $eq, $ne, $in and $nin")
            cond = make(_LOOKUPS[op], value)
            q &= (exists() & ~cond) if op == "$ne" else cond
    return q


def _column_condition(column: str, spec: Any, where: str) -> Q:
    def make(lookup: str, value: Any) -> Q:
        if lookup == "in" and None in value:
            rest = [v for v in value if v is not None]
            return Q(**{f"{column}__isnull": True}) | (Q(**{f"{column}__in": rest}) if rest else _NOTHING)
        return Q(**{f"{column}__{lookup}": value})

    return _conditions(
        spec,
        where,
        lambda value, at: _column_value(column, value, at),
        make,
        lambda: Q(**{f"{column}__isnull": False}),
    )


_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string"}


class _JsonIn(Lookup):
    """``lhs = ANY(%s::jsonb[])`` over JSON values: what Django's IN cannot say, because it drops
    None (JSON's null is a value here) and de-duplicates in Python, where False == 0 == -0.0."""

    lookup_name = "json_in"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = compiler.compile(self.lhs)
        return f"{lhs} = ANY(%s::jsonb[])", (*lhs_params, [json.dumps(v) for v in self.rhs])


class MetadataKey(KeyTransform):
    """``metadata -> 'key'`` with the key always sent as text.

    Django's KeyTransform sends a key that int() accepts ("0", "-1", " 7", "1_0") as an
    integer, which PostgreSQL reads as an array index: {"0": 5} would not match key "0".
    """

    def as_postgresql(self, compiler, connection):
        lhs, params = compiler.compile(self.lhs)
        return f"({lhs} -> %s)", (*params, self.key_name)


def _metadata_condition(key: str, spec: Any, where: str) -> Q:
    # The key reaches SQL only as a parameter of the -> operator, never as a lookup path:
    # a key such as "a__b" or "x'); DROP" is just a (strange) JSON key.
    transform = MetadataKey(key, "metadata")

    def make(lookup: str, value: Any) -> Q:
        if lookup == "in":
            # Django's IN drops None (SQL's NULL never equals); JSON's null is a value to match.
            return Q(_JsonIn(transform, value))
        if value is None:  # JSON's null: Value(None) would be SQL's NULL, which equals nothing
            return Q(transform.get_lookup("exact")(transform, Cast(Value("null"), models.JSONField())))
        # Values go in as JSON, as Django's own metadata__key=value would send them.
        cond = Q(transform.get_lookup(lookup)(transform, Value(value, output_field=models.JSONField())))
        if lookup != "exact":
            # jsonb orders every string below every number (and null below both): a range
            # compares like with like, so {"$lt": 5} never matches "abc".
            typeof = Func(transform, function="jsonb_typeof", output_field=models.TextField())
            cond &= Q(Exact(typeof, _JSON_TYPES[type(value)]))
        return cond

    return _conditions(spec, where, _scalar, make, lambda: Q(metadata__has_key=key))


def build_filter(spec: Any, where: str = "filters", depth: int = 0) -> Q:
    """Translate a filter document (the langchain-postgres operator set) into a Q, never into SQL text.

    Keys ``category``, ``external_id``, ``created_at`` and ``id`` filter those columns;
    any other key filters that key of ``metadata``. ``$and`` / ``$or`` take lists of filters.
    """
    if spec is None:
        return Q()
    if not isinstance(spec, dict):
        raise SearchError(where, "expected an object")
    if depth > 8:
        raise SearchError(where, "nested too deeply")
    q = Q()
    for key, value in spec.items():
        at = f"{where}.{key}"
        if not isinstance(key, str) or not key or len(key) > 255:
            raise SearchError(at, "keys are non-empty strings of at most 255 characters")
        _text(key, at)
        if key in ("$and", "$or"):
            parts = value if isinstance(value, list) else None
            if not parts:
                raise SearchError(at, "expected a non-empty list of filters")
            subs = [build_filter(p, f"{at}[{i}]", depth + 1) for i, p in enumerate(parts)]
            combined = subs[0]
            for sub in subs[1:]:
                combined = combined & sub if key == "$and" else combined | sub
            q &= combined
        elif key.startswith("$"):
            raise SearchError(at, "unknown operator at this level; expected $and, $or or a field name")
        elif key in COLUMN_FILTERS:
            q &= _column_condition(COLUMN_FILTERS[key], value, at)
        else:
            q &= _metadata_condition(key, value, at)
    return q


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
    if mode not in MODES:
        raise SearchError("mode", f"expected one of {', '.join(MODES)}")
    metric = metric or conf.distance()
    if metric not in METRICS:
        raise SearchError("metric", f"expected one of {', '.join(METRICS)}")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= MAX_K:
        raise SearchError("k", f"must be an integer from 1 to {MAX_K}")
    if ef_search is not None and not 1 <= ef_search <= 1000:
        raise SearchError("ef_search", "must be from 1 to 1000")
    if probes is not None and not 1 <= probes <= 10000:
        raise SearchError("probes", "must be from 1 to 10000")
    if iterative_scan is not None and iterative_scan not in conf.ITERATIVE_SCANS:
        raise SearchError("iterative_scan", f"expected one of {', '.join(conf.ITERATIVE_SCANS)}")
    if query is not None:
        if not isinstance(query, str) or not query.strip():
            raise SearchError("query", "must be a non-empty string")
        _text(query, "query")
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
