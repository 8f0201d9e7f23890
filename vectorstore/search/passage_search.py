"""The vector side over a document model's passages, answered as documents: the nearest passages (through
the passage table's own index, the document filters applied to the passages' documents, planned as
``plan.vector_rows`` plans any filtered search), the best passage of each document, k distinct documents.

A document's distance is its best passage's (the usual rule: a long document is as near as its nearest
part; the other common one, a sum over its passages, favours long documents for their length). Passages
of one document crowd the top of the ranking (a 3,000-word text has about twenty), so the passages are
read ``PASSAGE_FANOUT`` times k at a time, four times as many again while fewer than k documents are
among them and more passages remain, up to ``MAX_PASSAGES``.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from dataclasses import dataclass

import numpy as np
from django.db import models

from vectorstore.search.plan import vector_rows
from vectorstore.search.quantized import Rerank
from vectorstore.search.statements import Statement
from vectorstore.search.steps import Run

PASSAGE_FANOUT = 4  # passages read per document wanted, at first
MAX_PASSAGES = 4000  # the most passages one search reads


@dataclass(frozen=True)
class Span:
    """Where a document's best passage lies in its text (``text[start:end]``)."""

    ordinal: int
    start: int
    end: int


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
    and each document's best passage (``Span``) by primary key."""
    candidates = passages._default_manager.all()
    if has_filter:
        # The filters are the documents': a passage qualifies when its document does (a semi-join the
        # iterative index scan checks as it goes, or the exact scan of a rare filter's passages).
        candidates = candidates.filter(document__in=filtered.values("pk"))
    columns = ["document_id", "ordinal", "start", "end"]
    fetch = min(MAX_PASSAGES, k * PASSAGE_FANOUT)
    rest: list[list[tuple]] | None = None
    while True:
        rows, exact, more = yield from vector_rows(
            candidates, columns, metric, fetch, None, settings, qvector, using, has_filter,
            also if rest is None else (), plan,
        )  # fmt: skip
        rest = more if rest is None else rest
        best: dict[object, tuple[float, Span]] = {}
        for document, ordinal, start, end, distance in rows:  # nearest first
            best.setdefault(document, (distance, Span(ordinal, start, end)))
        if len(best) >= k or len(rows) < fetch or fetch >= MAX_PASSAGES:
            break
        fetch = min(MAX_PASSAGES, fetch * 4)
    chosen = sorted(best.items(), key=lambda item: item[1][0])[:k]
    if not chosen:
        return [], exact, rest, {}
    pk = filtered.model._meta.pk
    wanted = [document for document, _ in chosen]
    (documents,) = yield Run(
        using, settings, [Statement.compile(filtered.filter(pk__in=wanted).values_list(*fields))], None
    )
    column = fields.index(pk.attname)
    by_pk = {row[column]: row for row in documents}
    out = [(*by_pk[d], distance) for d, (distance, _) in chosen if d in by_pk]
    return out, exact, rest, {d: span for d, (_, span) in chosen}
