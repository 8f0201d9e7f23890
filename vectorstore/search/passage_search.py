"""The vector side over a document model's passages, answered as documents: the nearest passages (through
the passage table's own index, the document filters applied to the passages' documents, planned as
``plan.vector_rows`` plans any filtered search), the best passage of each document, k distinct documents.

A document's distance is its best passage's (the usual rule: a long document is as near as its nearest
part; the other common one, a sum over its passages, favours long documents for their length). Passages
of one document crowd the top of the ranking (a 3,000-word text has about twenty), so the passages are
read ``PASSAGE_FANOUT`` times k at a time, four times as many again while fewer than k documents are
among them and more passages remain, up to ``MAX_PASSAGES``. The passages, their best per document and
the documents' fields are one statement (``as_documents``): a search is one round trip, as a document
search is, unless it has to read wider.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
from django.db import models

from vectorstore.freshness import stale_flag
from vectorstore.search import statements
from vectorstore.search.plan import vector_rows
from vectorstore.search.quantized import Rerank
from vectorstore.search.results import STALE
from vectorstore.search.statements import Statement
from vectorstore.search.steps import Run

PASSAGE_FANOUT = 8  # passages read per document wanted, at first (chosen: benchmarks/README.md)
MAX_PASSAGES = 4000  # the most passages one search reads


@dataclass(frozen=True)
class Span:
    """Where a document's best passage lies in its text (``text[start:end]``)."""

    ordinal: int
    start: int
    end: int


def as_documents(candidates: Statement, documents: Statement, pk: str, k: int) -> Statement:
    """The statement of the nearest passages (document, ordinal, start, end, distance), answered as the
    k nearest documents: each document's best passage (DISTINCT ON), joined to the document's fields
    (``documents``: the fields of every document, which the join reads by primary key), nearest first.
    Rows: the fields, the passage's ordinal, start and end, how many passages were read, the distance.
    Django has no DISTINCT ON over a subquery in FROM, so the compiled SQL is wrapped as text (no input
    in it: columns and table come from the models, k is an int)."""
    if candidates.empty:
        return candidates
    sql = (
        f"WITH candidates AS MATERIALIZED ({candidates.sql})"
        ' SELECT documents.*, best.ordinal, best."start", best."end",'
        " (SELECT count(*) FROM candidates) AS passages_read, best.distance FROM"
        ' (SELECT DISTINCT ON (document_id) document_id, ordinal, "start", "end", distance FROM candidates'
        " ORDER BY document_id, distance) AS best"
        f' JOIN ({documents.sql}) AS documents ON documents."{pk}" = best.document_id'
        f" ORDER BY best.distance LIMIT {int(k)}"
    )
    return Statement(sql, candidates.params + documents.params, documents.converters)


def passage_rows(
    filtered: models.QuerySet,
    passages: type[models.Model],
    fields: list[str],
    metric: str,
    k: int,
    settings: dict[str, str],
    qvector: np.ndarray,
    using: str,
    has_filter: bool,
    also: Sequence[Statement] = (),
    plan: Rerank | None = None,
) -> Generator[Run, list[list[tuple]], tuple[list[tuple], bool, list[list[tuple]], dict]]:
    """Steps giving the k nearest documents' rows (``fields``, then their best passage's distance), nearest
    first; whether an exact scan found the passages; the rows of ``also`` (sent with the first read);
    and each document's best passage (``Span``) by primary key. One statement a round trip: the passages,
    their best per document and the documents' fields (``as_documents``)."""
    candidates = passages._default_manager.all()
    # The filters, and whatever else narrows the documents (a queryset's own filter, similar()'s
    # exclusion of the document itself, a manager's), are the documents': a passage qualifies when its
    # document does (a semi-join the iterative index scan checks as it goes, or the exact scan of a
    # rare filter's passages).
    has_filter = has_filter or bool(filtered.query.where)
    if has_filter:
        candidates = candidates.filter(document__in=filtered.values("pk"))
    model = filtered.model
    pk = model._meta.pk
    documents = statements.statement_cache.get(
        ("passage documents", model._meta.label, using, tuple(fields)),
        lambda: model._base_manager.using(using).annotate(**{STALE: stale_flag(model)}).values_list(*fields),
    )
    n = len(fields)

    def passages_read(found: list[tuple]) -> int:
        """How many passages the statement read (as_documents' column after the span)."""
        return found[0][n + 3] if found else 0

    columns = ["document_id", "ordinal", "start", "end"]
    # Unfiltered, the passages' statement depends only on its shape: Django compiles it once.
    shape = None if has_filter else ("passages", passages._meta.label, using, tuple(columns), metric, plan)
    fetch = min(MAX_PASSAGES, k * PASSAGE_FANOUT)
    rest: list[list[tuple]] | None = None
    while True:
        rows, exact, more = yield from vector_rows(
            candidates, columns, metric, fetch, shape, settings, qvector, using, has_filter,
            also if rest is None else (), plan,
            wrap=lambda statement: as_documents(statement, documents, pk.column, k), read=passages_read,
        )  # fmt: skip
        rest = more if rest is None else rest
        if len(rows) >= k or passages_read(rows) < fetch or fetch >= MAX_PASSAGES:
            break
        fetch = min(MAX_PASSAGES, fetch * 4)
    column = fields.index(pk.attname)
    spans = {row[column]: Span(*row[n : n + 3]) for row in rows}
    return [(*row[:n], row[-1]) for row in rows], exact, rest, spans
