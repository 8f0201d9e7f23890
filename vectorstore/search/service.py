"""``search()`` and ``similar()``, and their async forms ``asearch()`` and ``asimilar()``: check the
arguments, choose the settings and the plan, run the statements in one round trip, and assemble the hits
(fused for hybrid, diversified for MMR). Written once as steps (``steps``): the sync forms run them in
the calling thread on Django's connection, the async ones on the event loop with a pooled async
connection (``aio``)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from django.db import models

from vectorstore import conf, passages, replicas
from vectorstore.indexing import bm25, vector_indexes
from vectorstore.limits import (
    EF_SEARCH_RANGE,
    ITERATIVE_SCANS,
    MAX_K,
    MAX_QUERY_CHARS,
    PROBES_RANGE,
    RERANK_RANGE,
    SEARCH_MODES,
)
from vectorstore.search import query_log
from vectorstore.search.distances import METRICS, score_of
from vectorstore.search.diversity import mmr_hits, mmr_options
from vectorstore.search.filters import SearchError, build_filter, storable
from vectorstore.search.fusion import adaptive_weight, fuse, hybrid_options
from vectorstore.search.passage_search import passage_rows
from vectorstore.search.plan import vector_rows
from vectorstore.search.quantized import plan_for
from vectorstore.search.query_vector import cached_query_vector, check_vector, embed_query
from vectorstore.search.results import Hit, SearchResult
from vectorstore.search.settings import Tuned, cached_tuning, search_settings, timeouts, tuned_settings
from vectorstore.search.statements import Statement
from vectorstore.search.steps import Call, Run, Steps, adrive, drive
from vectorstore.search.text import (
    all_words_count,
    any_words,
    text_query,
    text_query_set,
    text_score,
)

# The BM25 path counts the documents holding every word up to this many (beyond, the adaptive text
# weight is under 1% of its maximum).
MATCH_COUNT_CAP = 1000


def _check_arguments(
    query: str | None,
    vector: Any,
    k: int,
    mode: str,
    metric: str,
    ef_search: int | None,
    iterative_scan: str | None,
    probes: int | None,
    rerank: int | None,
    hybrid: Any,
) -> None:
    """SearchError naming the first bad argument."""
    if mode not in SEARCH_MODES:
        raise SearchError("mode", f"expected one of {', '.join(SEARCH_MODES)}")
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
    if hybrid is not None and mode != "hybrid":
        raise SearchError("hybrid", "applies to mode hybrid only")


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
    log_query: bool = True,
) -> SearchResult:
    """Search the document table (see the package's docstring). Raises SearchError naming the bad input.

    ``mmr={"lambda_mult": 0.5, "fetch_k": 20}`` (langchain's names; either may be left out) picks the k
    results by maximal marginal relevance among the ``fetch_k`` best candidates (``mmr_select``).
    ``hybrid={"text_weight", "partial_weight", "rrf_k", "vector_k", "text_k"}`` (any of them) tunes mode
    hybrid's fusion (``hybrid_options``). ``rerank``: through a quantized index, re-rank k x rerank
    candidates by the full vectors (default: the factor tune_search stored, else VECTORSTORE RERANK for a
    binary index and 1 for a half-precision one). ``log_query=False`` keeps the query vector out of the
    query log that tune_search measures recall on (``vectorstore.search.query_log``; ``similar()`` does).
    """
    return drive(_steps(**locals()))


async def asearch(
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
    log_query: bool = True,
) -> SearchResult:
    """``search()`` for async code (async views, ASGI servers): the same arguments and answers, the
    statements sent on a pooled async connection (``vectorstore.search.aio``; one pool per event loop,
    at most VECTORSTORE ASYNC_POOL_SIZE connections), so a search in flight holds no thread. It sees
    what is committed: unlike ``search()``, it cannot join a transaction of Django's connection.
    Cancelling the task cancels the query on the server; the statement timeout raises SearchTimeout.
    """
    return await adrive(_steps(**locals()))


def _steps(
    query: str | None,
    *,
    vector: Any,
    k: int,
    filters: dict | None,
    mode: str,
    metric: str | None,
    ef_search: int | None,
    iterative_scan: str | None,
    probes: int | None,
    queryset: models.QuerySet | None,
    using: str | None,
    mmr: dict[str, Any] | None,
    hybrid: dict[str, Any] | None,
    rerank: int | None,
    log_query: bool,
) -> Steps[SearchResult]:
    """The search as steps (``vectorstore.search.steps``), for ``drive`` or ``adrive``."""
    started = time.perf_counter()
    model = queryset.model if queryset is not None else conf.document_model()
    base = queryset if queryset is not None else model._default_manager.all()
    if using is None:
        # The router may pick a replica, which can mean asking it (and the primary) where it stands.
        using = yield Call(lambda: base.db, None if replicas.configured() else lambda: (base.db,))
    metric = metric or conf.distance()
    _check_arguments(query, vector, k, mode, metric, ef_search, iterative_scan, probes, rerank, hybrid)
    lambda_mult, wanted = None, k
    if mmr is not None:
        if mode == "text":
            raise SearchError("mmr", "needs vectors to compare: use mode vector or hybrid")
        lambda_mult, k = mmr_options(mmr, k)
    fusion = hybrid_options(hybrid, k) if mode == "hybrid" else None
    filtered = base.filter(build_filter(filters))
    # The hits' vectors and tsvectors stay in the database: parsing 10 x 384 numbers back
    # would cost more than the search itself (Hit.document.embedding loads on use). MMR needs them.
    fields = [f.attname for f in model._meta.concrete_fields if f.name not in ("embedding", "search_vector")]
    if lambda_mult is not None:
        fields.append(model._meta.get_field("embedding").attname)
    # A model that keeps passages is searched through them (vectorstore.search.passage_search): the
    # passage table's index, tuning and quantization serve the vector side.
    passage_model = passages.passage_model(model) if mode != "text" and passages.enabled(model) else None
    searched = passage_model or model
    table = searched._meta.db_table
    tuned = Tuned()
    if ef_search is None or probes is None or rerank is None:
        tuned = yield Call(lambda: tuned_settings(table, using), lambda: cached_tuning(table, using))
    settings = search_settings(ef_search, iterative_scan, probes, tuned, bool(filters))
    plan = None
    if mode != "text":
        index = yield Call(
            lambda: vector_indexes.serving(searched, metric, using),
            lambda: vector_indexes.cached_serving(searched, metric, using),
        )
        plan = plan_for(searched, index, rerank, tuned)
    ranking = None
    if mode != "vector":
        index = yield Call(lambda: bm25.index_for(model, using), lambda: bm25.cached_index_for(model, using))
        ranking = (query, index) if index else None
    # The SQL of a search on the model's own manager depends only on its shape: Django compiles it once.
    shape = (
        (model._meta.label, using, tuple(fields), metric, plan) if queryset is None and not filters else None
    )
    qvector = None
    if mode != "text":
        dims = model._meta.get_field("embedding").dimensions
        if vector is not None:
            qvector = check_vector(vector, dims)
        else:
            qvector = yield Call(
                lambda: embed_query(query, model), lambda: cached_query_vector(query, model), database=False
            )

    spans: dict = {}

    def nearest_documents(wanted: int, also: Sequence[Statement] = ()) -> Steps[tuple]:
        """The ``wanted`` nearest documents' rows, exact or not, and the rows of ``also``."""
        if passage_model is None:
            return (
                yield from vector_rows(
                    filtered,
                    fields,
                    metric,
                    wanted,
                    shape,
                    settings,
                    qvector,
                    using,
                    bool(filters),
                    also,
                    plan,
                )
            )
        rows, exact, rest, found = yield from passage_rows(
            filtered,
            passage_model,
            fields,
            metric,
            wanted,
            settings,
            qvector,
            using,
            bool(filters),
            also,
            plan,
        )
        spans.update(found)
        return rows, exact, rest

    pk = model._meta.pk.attname

    def hit(rank: int, row: tuple, score: float, distance: float | None) -> Hit:
        values = dict(zip(fields, row, strict=False))
        span = spans.get(values[pk])
        passage = None
        if span is not None:
            passage = {"ordinal": span.ordinal, "start": span.start, "end": span.end}
            passage["text"] = values["text"][span.start : span.end] if "text" in values else None
        return Hit(rank, score, distance, values, model, using, passage)

    exact = False
    details: dict[str, Any] = {}
    with timeouts():
        if mode == "vector":
            rows, exact, _ = yield from nearest_documents(k)
            hits = [hit(i + 1, r, score_of(metric, r[-1]), r[-1]) for i, r in enumerate(rows)]
        elif mode == "text":
            text = Statement.compile(text_query_set(filtered, fields, text_query(query), None, k, ranking))
            (text_rows,) = yield Run(using, settings, [text], None)
            hits = [hit(i + 1, r, text_score(r[len(fields)], ranking), None) for i, r in enumerate(text_rows)]
        else:
            every_word = text_query(query)
            words = any_words(query) if fusion.partial else every_word
            # The adaptive text weight needs how many documents hold every word: a window count on the
            # text side (ts_rank_cd reads every match anyway), or a bounded count beside it for BM25.
            adaptive = fusion.text_weight is None and words is not None
            counted = every_word if adaptive and ranking is None else None
            text = Statement.compile(
                text_query_set(
                    filtered,
                    fields,
                    words,
                    metric,
                    fusion.text_k,
                    ranking,
                    every_word if fusion.partial else None,
                    counted,
                )
                if words
                else filtered.none()
            )
            also = [text]
            if adaptive and ranking is not None:
                also.append(all_words_count(filtered, every_word, MATCH_COUNT_CAP))
            near, exact, rest = yield from nearest_documents(fusion.vector_k, also)
            text_rows = rest[0]
            # A text row: its fields, its rank, [its every-word flag,] [the all-words count,] its distance.
            flag = len(fields) + 1 if fusion.partial else None
            matches = 0
            if counted is not None and text_rows:
                matches = text_rows[0][len(fields) + 1 + (1 if fusion.partial else 0)]
            elif adaptive and ranking is not None:
                matches = rest[1][0][0] if rest[1] else 0
            key = fields.index(model._meta.pk.attname)
            fused = fuse(near, text_rows, key, flag, fusion, k, matches, query, metric)
            hits = [hit(i + 1, row, score, row[-1]) for i, (row, score) in enumerate(fused)]
            weight = fusion.text_weight if fusion.text_weight is not None else adaptive_weight(matches)
            details["text_weight"] = round(weight, 4)
    if lambda_mult is not None:
        hits = mmr_hits(hits, fields[-1], lambda_mult, wanted)
    if log_query and qvector is not None:
        query_log.offer(model, qvector, flush_when_due=False)
        if query_log.flush_due():
            yield Call(query_log.flush)
    return SearchResult(
        hits=hits,
        took_ms=(time.perf_counter() - started) * 1000,
        mode=mode,
        metric=metric,
        exact=exact,
        details={**({"rerank": plan.factor, "quantization": plan.quantization} if plan else {}), **details},
        database=using,
    )


def _similar_arguments(document: models.Model, k: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    queryset = kwargs.pop("queryset", None)
    queryset = queryset if queryset is not None else type(document)._default_manager.all()
    kwargs.setdefault("log_query", False)  # a stored vector is not a query anyone typed
    return {"vector": document.embedding, "k": k, "queryset": queryset.exclude(pk=document.pk), **kwargs}


def similar(document: models.Model, k: int = 10, **kwargs: Any) -> SearchResult:
    """The k documents nearest to one stored document (itself left out)."""
    return search(**_similar_arguments(document, k, kwargs))


async def asimilar(document: models.Model, k: int = 10, **kwargs: Any) -> SearchResult:
    """``similar()`` for async code (see ``asearch``); the document's vector must be loaded."""
    return await asearch(**_similar_arguments(document, k, kwargs))
