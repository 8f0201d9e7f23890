"""The settings each search runs under: the index knobs (``hnsw.ef_search``, ``hnsw.iterative_scan``,
``ivfflat.probes``) from the query, the table's stored tuning or the app's settings, and the statement
timeout that turns a runaway query into ``SearchTimeout`` (the API's 503)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from threading import Lock
from typing import NamedTuple

import psycopg
from django.apps import apps
from django.db import OperationalError, connections, transaction

from vectorstore import conf
from vectorstore.limits import EF_SEARCH_RANGE

FILTERED_EF_FACTOR = 2  # filtered searches through the graph use this many times the tuned ef_search
TUNING_TTL = 30.0  # seconds a process keeps a table's tuned settings before reading them again


class Tuned(NamedTuple):
    """What tune_search stored for a table: ef_search, probes, and a binary index's re-rank factor."""

    ef_search: int | None = None
    probes: int | None = None
    rerank: int | None = None


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


def search_settings(
    ef_search: int | None,
    iterative_scan: str | None,
    probes: int | None,
    tuned: Tuned,
    filtered: bool,
) -> dict[str, str]:
    """``index_settings`` and the statement timeout; a filtered walk of the graph searches wider."""
    settings = index_settings(ef_search, iterative_scan, probes, tuned)
    if filtered and ef_search is None:
        # A filtered walk of the graph keeps fewer of each batch's candidates: a wider batch holds the
        # recall that the tuned setting gives unfiltered (0.947-0.957 at x1 on a 10% filter, measured).
        wider = min(EF_SEARCH_RANGE[1], FILTERED_EF_FACTOR * int(settings["hnsw.ef_search"]))
        settings["hnsw.ef_search"] = str(wider)
    settings["statement_timeout"] = str(conf.search_timeout_ms())
    return settings


_tuning: dict[tuple[str, str], tuple[float, Tuned]] = {}
_tuning_lock = Lock()


def cached_tuning(table: str, using: str) -> tuple[Tuned] | None:
    """``(tuned_settings(table, using),)`` when the process has it fresh, else None (no I/O)."""
    with _tuning_lock:
        cached = _tuning.get((table, using))
    if cached is not None and time.monotonic() - cached[0] < TUNING_TTL:
        return (cached[1],)
    return None


def tuned_settings(table: str, using: str) -> Tuned:
    """(ef_search, probes, rerank) that tune_search stored for the table, read at most every TUNING_TTL s."""
    now = time.monotonic()
    cached = cached_tuning(table, using)
    if cached is not None:
        return cached[0]
    # Looked up in the app registry, not imported: the models import the search package.
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
def timeouts() -> Iterator[None]:
    """PostgreSQL's statement_timeout cancelling a query, as SearchTimeout."""
    try:
        yield
    except OperationalError as exc:
        if isinstance(exc.__cause__, psycopg.errors.QueryCanceled):
            raise SearchTimeout(conf.search_timeout_ms()) from exc
        raise


@contextmanager
def bounded(using: str = "default") -> Iterator[None]:
    """Run the ORM queries inside under the search timeout (SEARCH_TIMEOUT_MS), in one transaction:
    a query that runs past it raises SearchTimeout (the API answers 503), never holds a worker."""
    with transaction.atomic(using=using), timeouts():
        with connections[using].cursor() as cursor:
            timeout = str(conf.search_timeout_ms())
            cursor.execute("SELECT set_config('statement_timeout', %s, true)", [timeout])
        yield
