"""The vector side of a search, planned: the k nearest rows, unfiltered through the index, filtered by
whichever of an exact scan of the matches or the index's iterative scan the filter's size calls for.

A filter that matches few rows (at most EXACT_SEARCH_ROWS) is answered exactly over its matches, which
the filter's own index finds; a broad one through the vector index's iterative scan, which finds k
matches quickly when many rows match. The bounded count and both branches go in one round trip
(``planned``), only the chosen branch reading rows. Asking the vector index for a rare filter's rows
would walk the graph until max_scan_tuples and then scan the whole table anyway. A filtered query that
still comes back with fewer than k rows is answered again exactly, so it returns k rows whenever k
rows match.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Sequence

import numpy as np
from django.db import models
from django.db.models import F, Func, Value
from django.db.models.lookups import Exact

from vectorstore import conf
from vectorstore.search import statements
from vectorstore.search.distances import METRICS
from vectorstore.search.quantized import Rerank, by_index_order, widened
from vectorstore.search.settings import SearchTimeout
from vectorstore.search.statements import QueryVector, Statement
from vectorstore.search.steps import Run


def vector_rows(
    filtered: models.QuerySet,
    fields: list[str],
    metric: str,
    k: int,
    shape: tuple | None,
    settings: dict[str, str],
    qvector: np.ndarray,
    using: str,
    has_filter: bool,
    also: Sequence[Statement] = (),
    plan: Rerank | None = None,
    wrap: Callable[[Statement], Statement] | None = None,
    read: Callable[[list[tuple]], int] = len,
) -> Generator[Run, list[list[tuple]], tuple[list[tuple], bool, list[list[tuple]]]]:
    """Steps (``steps.Run``) giving the k nearest rows (fields, then distance), whether an exact scan of
    the filter's matches found them, and the rows of each of ``also`` (hybrid's text side), sent in the
    first round trip.

    Through a quantized index (``plan``) the index's order picks k x factor candidates, re-ranked by the
    full distance; the graph search keeps at least that many (``hnsw.ef_search``).

    ``wrap``: each statement of the k nearest is sent inside another (passage search's, which answers
    with documents; its rows still end with their distance), and ``read`` tells from its rows how many
    of the k it read.
    """
    started = time.perf_counter()
    extra = list(also)
    wrap = wrap or (lambda statement: statement)
    limit = conf.exact_search_rows()
    if plan is not None:
        settings = widened(settings, k, plan)
    if not has_filter or limit <= 0:
        rows, *rest = yield Run(
            using, settings, [wrap(nearest(filtered, fields, metric, k, shape, plan)), *extra], qvector
        )
        exact = False
    else:
        probe, few, broad = planned(filtered, fields, metric, k, limit, plan)
        probe, few, broad, *rest = yield Run(
            using, settings, [probe, wrap(few), wrap(broad), *extra], qvector
        )
        exact = not probe or probe[0][0] == "on"
        rows = few if exact else broad
    if has_filter and not exact and read(rows) < k:
        # The iterative scan ran out (max_scan_tuples) before k matches: search them all exactly.
        # The search as a whole stays within the timeout: this second round trip gets what is left.
        timeout = conf.search_timeout_ms()
        left = timeout - round((time.perf_counter() - started) * 1000)
        if left <= 0:
            raise SearchTimeout(timeout)
        exact_statement = wrap(Statement.compile(nearest_query(filtered, fields, metric, k, exact=True)))
        (rows,) = yield Run(using, {**settings, "statement_timeout": str(left)}, [exact_statement], qvector)
        exact = True
    # relaxed_order may hand rows back slightly out of order. A row without a vector yet (written for the
    # embedding worker) has no distance: an exact scan reaches it, last; it is found by meaning once
    # embedded, not before.
    rows = sorted((r for r in rows if r[-1] is not None), key=lambda r: r[-1])
    return rows, exact, rest


# Set by the first of planned()'s statements, read by the second (within the search's transaction).
_FEW_ROWS_SETTING = "vectorstore.few_rows"


def planned(
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
    few = nearest_query(filtered.filter(Exact(setting, Value("on"))), fields, metric, k, exact=True)
    broad = filtered.filter(Exact(setting, Value("off")))
    return [probe, Statement.compile(few), nearest(broad, fields, metric, k, None, plan)]


def nearest_query(
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
        annotated, order, k = by_index_order(annotated, plan, metric, k)
    else:
        order = "distance"
    return annotated.order_by(order).values_list(*fields, "distance")[:k]


def nearest(
    queryset: models.QuerySet,
    fields: list[str],
    metric: str,
    k: int,
    shape: tuple | None,
    plan: Rerank | None = None,
) -> Statement:
    """The k nearest: through the index's order, and for a quantized index re-ranked by full distance.
    A search's ``shape`` (no filter, the model's own manager) is compiled once (``statement_cache``)."""
    if shape is None:
        statement = Statement.compile(nearest_query(queryset, fields, metric, k, plan=plan))
    else:
        statement = statements.statement_cache.get(
            ("nearest", *shape, k), lambda: nearest_query(queryset, fields, metric, k, plan=plan)
        )
    return statement.reranked(k) if plan is not None else statement
