"""Search through a quantized index (``vector_indexes``: half precision, or sign bits): the index's own
order picks k x ``rerank`` candidates, which the full-precision distance re-ranks (pgvector's re-rank
shape); the distance every hit reports is the full-precision one."""

from __future__ import annotations

from typing import NamedTuple

from django.db import models

from vectorstore import conf
from vectorstore.indexing import vector_indexes
from vectorstore.limits import EF_SEARCH_RANGE
from vectorstore.search.settings import Tuned
from vectorstore.search.statements import QueryVector


class Rerank(NamedTuple):
    """A search through a quantized index: order by the index's expression, re-rank k x factor
    candidates by the full-precision distance."""

    quantization: str
    dimensions: int
    factor: int


def rerank_plan(
    model: type[models.Model], metric: str, using: str, rerank: int | None, tuned: Tuned
) -> Rerank | None:
    """The re-rank the table's serving index needs, or None for a full-precision index (or none).

    The factor: the query's ``rerank``, else what tune_search stored for a binary index, else
    VECTORSTORE RERANK for a binary index and 1 for a half-precision one (measured: half loses nothing).
    """
    return plan_for(model, vector_indexes.serving(model, metric, using), rerank, tuned)


def plan_for(
    model: type[models.Model], index: vector_indexes.FoundIndex | None, rerank: int | None, tuned: Tuned
) -> Rerank | None:
    """``rerank_plan`` for the index that serves the search (``vector_indexes.serving``)."""
    if index is None or index.quantization is None:
        return None
    binary = index.quantization == "binary"
    factor = rerank or (tuned.rerank if binary else None) or (conf.rerank() if binary else 1)
    # The index's own size (its cast's): the column's, even while a swap runs ahead of the field.
    dims = index.dimensions or model._meta.get_field("embedding").dimensions
    return Rerank(index.quantization, dims, factor)


def widened(settings: dict[str, str], k: int, plan: Rerank) -> dict[str, str]:
    """The settings with ``hnsw.ef_search`` at least the candidates' count: the graph search keeps them."""
    wider = max(int(settings["hnsw.ef_search"]), min(EF_SEARCH_RANGE[1], k * plan.factor))
    return {**settings, "hnsw.ef_search": str(wider)}


def by_index_order(
    annotated: models.QuerySet, plan: Rerank, metric: str, k: int
) -> tuple[models.QuerySet, str, int]:
    """The queryset aliased with the index's own distance, the name to order by, and how many candidates."""
    aliased = annotated.alias(
        index_distance=vector_indexes.order_expression(
            "embedding", plan.quantization, plan.dimensions, metric, QueryVector()
        )
    )
    return aliased, "index_distance", k * plan.factor
