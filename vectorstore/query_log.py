"""A bounded sample of the query vectors searches actually see, for ``tune_search`` to measure recall on
the queries users send (``QUERY_LOG_SIZE``; 0 turns it off).

Vectors only, never the query's text. Each process samples its own stream of searches by reservoir
sampling (Algorithm R): its n-th query of a table is kept with probability SIZE / n, in one of the
table's SIZE slots chosen at random, so the table never holds more than SIZE vectors per document
table, and what it holds is a uniform sample of the queries since the process started (with several
processes or restarts, the slots mix their samples, leaning to recent ones). Rows older than
``QUERY_LOG_DAYS`` are not read and are deleted when the table is tuned. Written to the primary, in the
search's own transaction where there is one (inside a savepoint, so a failed write never fails the
search or the caller's transaction), else on its own; a sampled query costs one INSERT, the others
nothing.

Searches by a stored document's vector (``similar()``) and the tuner's own searches are not logged:
they are not queries users typed.
"""

from __future__ import annotations

import logging
import random
from datetime import timedelta
from threading import Lock

import numpy as np
import psycopg
from django.apps import apps
from django.db import DatabaseError, connections, models, transaction
from django.utils import timezone

from vectorstore import conf, pgcopy

logger = logging.getLogger(__name__)

_seen: dict[str, int] = {}
_lock = Lock()
_random = random.Random()


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


def offer(model: type[models.Model], vector: np.ndarray) -> bool:
    """Maybe keep a query vector of a search of ``model``'s table; True when it was written."""
    size = conf.query_log_size()
    if size <= 0:
        return False
    table = model._meta.db_table
    slot = slot_for(table, size)
    if slot is None:
        return False
    log = _model()
    quote = connections["default"].ops.quote_name
    statement = (
        f"INSERT INTO {quote(log._meta.db_table)} (db_table, slot, vector, created_at)"
        " VALUES (%s, %s, %s, %s) ON CONFLICT (db_table, slot)"
        " DO UPDATE SET vector = EXCLUDED.vector, created_at = EXCLUDED.created_at"
    )
    params = [table, slot, pgcopy.binary_vector(np.asarray(vector, dtype=np.float32)), timezone.now()]
    # The primary (a replica takes no writes), through psycopg's own cursor: server-side binding sends the
    # vector in pgvector's binary format (Django's client-side cursor would quote it as bytea).
    wrapper = connections["default"]
    try:
        conn = pgcopy.django_connection("default")
        if wrapper.in_atomic_block:
            # A savepoint inside a caller's transaction: a read-only one refuses the INSERT, and the
            # caller's transaction goes on.
            with transaction.atomic(using="default"), psycopg.Cursor(conn) as cursor:
                cursor.execute(statement, params, prepare=False)
        else:
            with psycopg.Cursor(conn) as cursor:  # one autocommitted statement, never prepared
                cursor.execute(statement, params, prepare=False)
    except (DatabaseError, psycopg.Error) as exc:
        logger.debug("query log: sample not kept (%s)", exc)
        return False
    return True


def recent(model: type[models.Model], using: str = "default") -> models.QuerySet:
    """The logged queries of the model's table younger than QUERY_LOG_DAYS."""
    since = timezone.now() - timedelta(days=conf.query_log_days())
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
    """Start this process's sampling afresh (tests)."""
    with _lock:
        _seen.clear()
