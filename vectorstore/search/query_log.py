"""A bounded sample of the query vectors searches actually see, for ``tune_search`` to measure recall on
the queries users send (``QUERY_LOG_SIZE``; 0 turns it off).

Vectors only, never the query's text. Each process samples its own stream of searches by reservoir
sampling (Algorithm R): its n-th query of a table is kept with probability SIZE / n, in one of the
table's SIZE slots chosen at random, so the table never holds more than SIZE vectors per document
table, and what it holds is a uniform sample of the queries since the process started (with several
processes or restarts, the slots mix their samples, leaning to recent ones). Rows older than
``QUERY_LOG_DAYS`` are not read and are deleted when the table is tuned.

Kept slots wait in the process and are written to the primary in batches: every ``FLUSH_BATCH`` slots,
or at the first search after the oldest has waited ``FLUSH_SECONDS``, at exit, and before this process
reads the log (``recent()``). A batch is one pipelined round trip in its own transaction, committed
without waiting for the WAL flush (a lost sample costs nothing); inside a caller's transaction it is a
savepoint, so a failed write never fails the search or the caller's transaction. Writing each sample
as it came cost one fsynced INSERT on every one of a new process's first ``QUERY_LOG_SIZE`` searches:
under load, more of PostgreSQL's time than the search itself (``benchmarks/README.md``, bench_serve).

Searches by a stored document's vector (``similar()``) and the tuner's own searches are not logged:
they are not queries users typed.
"""

from __future__ import annotations

import atexit
import logging
import random
import time
from collections.abc import Callable
from datetime import timedelta
from threading import Lock

import numpy as np
import psycopg
from django.apps import apps
from django.db import DatabaseError, connections, models, transaction
from django.utils import timezone

from vectorstore import conf, pg
from vectorstore.reembed import record

logger = logging.getLogger(__name__)

FLUSH_BATCH = 100
FLUSH_SECONDS = 10.0
# Called with the tables whose samples a flush wrote (vectorstore.tuning.autotune registers itself at start):
# this module sits below tuning, which it must not import.
after_flush: list[Callable[[set[str]], None]] = []

_seen: dict[str, int] = {}
_lock = Lock()
_random = random.Random()
# (table, slot) -> (vector, when kept); a slot chosen again before the flush keeps its newest vector,
# as Algorithm R would have overwritten it.
_pending: dict[tuple[str, int], tuple[np.ndarray, object]] = {}
_oldest: float | None = None


def _model() -> type[models.Model]:
    # Looked up in the app registry, not imported: the models import the search package, which calls this.
    return apps.get_model("vectorstore", "QueryLog")


def slot_for(table: str, size: int) -> int | None:
    """Algorithm R for this process's n-th query of ``table``: the slot to write, or None to skip it."""
    with _lock:
        n = _seen[table] = _seen.get(table, 0) + 1
        if n <= size:
            return n - 1
        j = _random.randrange(n)
    return j if j < size else None


def offer(model: type[models.Model], vector: np.ndarray, flush_when_due: bool = True) -> bool:
    """Maybe keep a query vector of a search of ``model``'s table; True when it was kept (written at
    the next flush). ``flush_when_due=False`` leaves a due flush to the caller (``flush_due()``): an
    async search sends it to a thread."""
    global _oldest
    size = conf.query_log_size()
    if size <= 0:
        return False
    table = model._meta.db_table
    slot = slot_for(table, size)
    now = time.monotonic()
    with _lock:
        if slot is not None:
            _pending[(table, slot)] = (np.asarray(vector, dtype=np.float32).copy(), timezone.now())
            if _oldest is None:
                _oldest = now
        due = bool(_pending) and (
            len(_pending) >= min(FLUSH_BATCH, size) or now - (_oldest or now) >= FLUSH_SECONDS
        )
    if due and flush_when_due:
        flush()
    return slot is not None


def flush_due() -> bool:
    """Whether the kept samples are due to be written (FLUSH_BATCH of them, or one FLUSH_SECONDS old)."""
    size = conf.query_log_size()
    with _lock:
        return bool(_pending) and (
            len(_pending) >= min(FLUSH_BATCH, size)
            or time.monotonic() - (_oldest or time.monotonic()) >= FLUSH_SECONDS
        )


def flush() -> int:
    """Write the kept slots now; returns how many were written (0 when there were none or it failed)."""
    global _oldest
    with _lock:
        batch = list(_pending.items())
        _pending.clear()
        _oldest = None
    if not batch:
        return 0
    log = _model()
    quote = connections["default"].ops.quote_name
    statement = (
        f"INSERT INTO {quote(log._meta.db_table)} (db_table, slot, vector, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (db_table, slot)"
        " DO UPDATE SET vector = EXCLUDED.vector, created_at = EXCLUDED.created_at"
    )
    params = [(table, slot, pg.binary_vector(vector), when) for (table, slot), (vector, when) in batch]
    # The primary (a replica takes no writes), through psycopg's own cursor: server-side binding sends the
    # vector in pgvector's binary format (Django's client-side cursor would quote it as bytea). The rows go
    # in one pipeline (one round trip), each never prepared: executemany() would prepare the statement on
    # a connection whose prepare_threshold is 0 (a site's OPTIONS may say so).
    wrapper = connections["default"]
    try:
        outer = wrapper.in_atomic_block
        conn = pg.django_connection("default")
        # Inside a caller's transaction a savepoint (a read-only one refuses the INSERT, and the caller's
        # transaction goes on), else a transaction of its own.
        with transaction.atomic(using="default"), psycopg.Cursor(conn) as cursor, conn.pipeline():
            if not outer:
                cursor.execute("SET LOCAL synchronous_commit = off", prepare=False)
            for row in params:
                cursor.execute(statement, row, prepare=False)
    except (DatabaseError, psycopg.Error) as exc:
        logger.debug("query log: %d samples not kept (%s)", len(batch), exc)
        return 0
    tables = {table for (table, _), _ in batch}
    for hook in after_flush:
        try:
            hook(tables)
        except Exception:  # a hook's failure never fails the search that flushed
            logger.warning("query log: a hook after the flush failed", exc_info=True)
    return len(batch)


def _flush_at_exit() -> None:
    try:
        flush()
    except Exception as exc:  # at exit, a lost sample is no reason for a traceback
        logger.debug("query log: not flushed at exit (%s)", exc)


atexit.register(_flush_at_exit)


def recent(model: type[models.Model], using: str = "default") -> models.QuerySet:
    """The logged queries of the model's table younger than QUERY_LOG_DAYS and than its embedding model
    (``reembed``'s swap: a query of the old model says nothing of the new vectors), this process's kept
    slots written first."""
    if using == "default":
        flush()
    since = timezone.now() - timedelta(days=conf.query_log_days())
    recorded = record.read(model, using)
    if recorded.updated_at is not None and not recorded.adopt:
        since = max(since, recorded.updated_at)
    return _model().objects.using(using).filter(db_table=model._meta.db_table, created_at__gte=since)


def vectors(model: type[models.Model], n: int, seed: int = 0, using: str = "default") -> np.ndarray:
    """Up to n of the recent logged query vectors (a random choice when there are more), as float32."""
    stored = [np.asarray(v, dtype=np.float32) for v in recent(model, using).values_list("vector", flat=True)]
    if not stored:
        return np.empty((0, model._meta.get_field("embedding").dimensions), dtype=np.float32)
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(stored), size=min(n, len(stored)), replace=False)
    return np.stack([stored[i] for i in sorted(chosen)])


def prune(model: type[models.Model] | None = None, using: str = "default") -> int:
    """Delete logged queries older than QUERY_LOG_DAYS (of one table, or all); returns how many."""
    since = timezone.now() - timedelta(days=conf.query_log_days())
    rows = _model().objects.using(using).filter(created_at__lt=since)
    if model is not None:
        rows = rows.filter(db_table=model._meta.db_table)
    return rows.delete()[0]


def forget() -> None:
    """Start this process's sampling afresh, dropping the slots not yet written (tests)."""
    global _oldest
    with _lock:
        _seen.clear()
        _pending.clear()
        _oldest = None
