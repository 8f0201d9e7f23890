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

from vectorstore import passages, replicas
from vectorstore.freshness import stale_flag
from vectorstore.indexing import bm25, vector_indexes
from vectorstore.reembed import record
from vectorstore.search import query_log
from vectorstore.search.distances import score_of
from vectorstore.search.diversity import mmr_hits
from vectorstore.search.filters import SearchError
from vectorstore.search.fusion import adaptive_weight, fuse
from vectorstore.search.passage_search import passage_rows
from vectorstore.search.plan import vector_rows
from vectorstore.search.quantized import plan_for
from vectorstore.search.query_vector import cached_query_vector, check_vector, embed_query
from vectorstore.search.request import SearchRequest
from vectorstore.search.results import STALE, Hit, SearchResult
from vectorstore.search.settings import Tuned, cached_tuning, search_settings, timeouts, tuned_settings
from vectorstore.search.statements import Statement
from vectorstore.search.steps import Call, Guard, Run, Steps, adrive, drive
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
    request = SearchRequest.build(**locals())
    try:
        return drive(_steps(request))
    except record.ModelChanged:  # reembed swapped the table's vectors meanwhile: again, with its new model
        return drive(_steps(request))


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
    request = SearchRequest.build(**locals())
    try:
        return await adrive(_steps(request))
    except record.ModelChanged:  # as in search()
        return await adrive(_steps(request))


def _steps(request: SearchRequest) -> Steps[SearchResult]:
    """The search as steps (``vectorstore.search.steps``), for ``drive`` or ``adrive``: a request
    (``SearchRequest``, checked) in, its result out."""
    started = time.perf_counter()
    r = request
    model, base, mode, metric, query, k = r.model, r.base, r.mode, r.metric, r.query, r.candidates
    using = r.using
    if using is None:
        # The router may pick a replica, which can mean asking it (and the primary) where it stands.
        using = yield Call(lambda: base.db, None if replicas.configured() else lambda: (base.db,))
    fusion, lambda_mult, filters = r.fusion, r.lambda_mult, r.filters
    filtered = base.filter(r.condition)
    # The hits' vectors and tsvectors stay in the database: parsing 10 x 384 numbers back
    # would cost more than the search itself (Hit.document.embedding loads on use). MMR needs them.
    fields = [f.attname for f in model._meta.concrete_fields if f.name not in ("embedding", "search_vector")]
    # Whether each hit's vector is stale (its text changed since, by any path): one index probe a hit.
    filtered = filtered.annotate(**{STALE: stale_flag(model)})
    fields.append(STALE)
    if lambda_mult is not None:
        fields.append(model._meta.get_field("embedding").attname)
    # A model that keeps passages is searched through them (vectorstore.search.passage_search): the
    # passage table's index, tuning and quantization serve the vector side.
    passage_model = passages.passage_model(model) if mode != "text" and passages.enabled(model) else None
    searched = passage_model or model
    table = searched._meta.db_table
    tuned = Tuned()
    if r.ef_search is None or r.probes is None or r.rerank is None:
        tuned = yield Call(lambda: tuned_settings(table, using), lambda: cached_tuning(table, using))
    settings = search_settings(r.ef_search, r.iterative_scan, r.probes, tuned, bool(filters))
    plan = None
    if mode != "text":
        index = yield Call(
            lambda: vector_indexes.serving(searched, metric, using),
            lambda: vector_indexes.cached_serving(searched, metric, using),
        )
        plan = plan_for(searched, index, r.rerank, tuned)
    ranking = None
    if mode != "vector":
        index = yield Call(lambda: bm25.index_for(model, using), lambda: bm25.cached_index_for(model, using))
        ranking = (query, index) if index else None
    # The SQL of a search on the model's own manager depends only on its shape: Django compiles it once.
    shape = (
        (model._meta.label, using, tuple(fields), metric, plan)
        if not r.custom_queryset and not filters
        else None
    )
    qvector = None
    if mode != "text":
        # The table's embedding model and vector size (its record; a swap may run ahead of the field).
        recorded = yield Call(lambda: record.current(model, using), lambda: record.cached(model, using))
        if r.vector is not None:
            try:
                qvector = check_vector(r.vector, recorded.dimensions)
            except SearchError:
                recorded = yield Call(lambda: record.read(model, using))  # a swap this process missed?
                qvector = check_vector(r.vector, recorded.dimensions)
        else:
            qvector = yield Call(
                lambda: embed_query(query, model, recorded),
                lambda: cached_query_vector(query, model, recorded),
                database=False,
            )
            yield Guard(model, using, recorded.version)

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
        hits = mmr_hits(hits, fields[-1], lambda_mult, r.k)
    if r.log_query and qvector is not None:
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
