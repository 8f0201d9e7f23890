"""A search request: the arguments of ``search()`` checked once into one immutable object, which the
steps of a search read (``service``) instead of fifteen parameters carried beside the query."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from django.db import models

from vectorstore import conf
from vectorstore.limits import (
    EF_SEARCH_RANGE,
    ITERATIVE_SCANS,
    MAX_K,
    MAX_QUERY_CHARS,
    PROBES_RANGE,
    RERANK_RANGE,
    SEARCH_MODES,
)
from vectorstore.search.distances import METRICS
from vectorstore.search.diversity import mmr_options
from vectorstore.search.filters import SearchError, build_filter, storable
from vectorstore.search.fusion import Fusion, hybrid_options


@dataclass(frozen=True, eq=False)
class SearchRequest:
    """What ``search()`` was asked, checked: every value here is valid, defaults filled in."""

    model: type[models.Model]
    base: models.QuerySet  # the caller's queryset, or the model's whole table
    mode: str  # vector | text | hybrid
    metric: str
    k: int  # the results wanted
    candidates: int  # the rows the vector side reads: k, or MMR's fetch_k
    query: str | None = None
    vector: Any = None  # as given (checked against the table's dimension when the search reads it)
    filters: dict | None = None
    condition: models.Q | None = None  # the filters, as Django lookups
    ef_search: int | None = None
    iterative_scan: str | None = None
    probes: int | None = None
    rerank: int | None = None
    fusion: Fusion | None = None  # mode hybrid's options
    lambda_mult: float | None = None  # MMR's, where asked for
    using: str | None = None  # None: the router chooses when the search runs
    custom_queryset: bool = False  # a caller's queryset (its SQL is not cached by shape)
    log_query: bool = True

    @classmethod
    def build(
        cls,
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
    ) -> SearchRequest:
        """``search()``'s arguments checked (SearchError naming the first bad one) and completed."""
        model = queryset.model if queryset is not None else conf.document_model()
        metric = metric or conf.distance()
        _check_arguments(query, vector, k, mode, metric, ef_search, iterative_scan, probes, rerank, hybrid)
        lambda_mult, candidates = None, k
        if mmr is not None:
            if mode == "text":
                raise SearchError("mmr", "needs vectors to compare: use mode vector or hybrid")
            lambda_mult, candidates = mmr_options(mmr, k)
        return cls(
            model=model,
            base=queryset if queryset is not None else model._default_manager.all(),
            mode=mode,
            metric=metric,
            k=k,
            candidates=candidates,
            query=query,
            vector=vector,
            filters=filters,
            condition=build_filter(filters),
            ef_search=ef_search,
            iterative_scan=iterative_scan,
            probes=probes,
            rerank=rerank,
            fusion=hybrid_options(hybrid, candidates) if mode == "hybrid" else None,
            lambda_mult=lambda_mult,
            using=using,
            custom_queryset=queryset is not None,
            log_query=log_query,
        )


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
