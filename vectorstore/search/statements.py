"""Running search statements fast: Django builds the SQL, psycopg runs it the way a hand-written client would.

A search through the ORM paid for more than PostgreSQL's work: the query vector went out as a
384-number text literal (pgvector's ``to_text``, then the server's parser), Django compiled the
query on every call, and BEGIN, the ``SET LOCAL``s, the SELECT and COMMIT were four round trips.
Here the query vector is a parameter in pgvector's binary format, the SQL Django compiles for the
unfiltered shapes is cached, and BEGIN, the settings, every SELECT of the search and COMMIT go to
the server in one psycopg pipeline: one round trip. Rows come back as tuples; model instances are
built only when a caller asks for one (``Hit.document``).

Filters still become Django lookups with parameters, compiled by Django; nothing here writes SQL text
from input. (No well-kept library runs Django-compiled SQL with binary parameters in a pipeline.)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from threading import Lock
from typing import Any

import numpy as np
import psycopg
from django.core.exceptions import EmptyResultSet
from django.db import connections, models
from django.db.models import Expression
from pgvector.django import VectorField

from vectorstore import pg


class _QueryVectorMark:
    """Stands for the query vector among a compiled statement's parameters."""

    def __repr__(self) -> str:
        return "<query vector>"


QUERY_VECTOR = _QueryVectorMark()


class QueryVector(Expression):
    """The query vector in an ORM expression, bound when the statement runs (``Statement.run``)."""

    output_field = VectorField()

    def as_sql(self, compiler: Any, connection: Any) -> tuple[str, list]:
        return "%s", [QUERY_VECTOR]


@dataclass(frozen=True)
class Statement:
    """A SELECT compiled by Django, with the query vector left as a parameter, and how to read its rows."""

    sql: str
    params: tuple
    converters: tuple[tuple[int, tuple[Callable, ...]], ...]  # (column, Django's from-db converters)

    @classmethod
    def compile(cls, queryset: models.QuerySet) -> Statement:
        """Compile a ``values_list`` queryset once; its rows are converted as the ORM would."""
        compiler = queryset.query.get_compiler(queryset.db)
        try:
            sql, params = compiler.as_sql()
        except EmptyResultSet:  # a filter that can match nothing ($in: []): the ORM sends no query
            return cls("", (), ())
        connection = connections[queryset.db]
        converters = []
        for i, (expression, _, _) in enumerate(compiler.select):
            found = tuple(
                connection.ops.get_db_converters(expression) + expression.get_db_converters(connection)
            )
            if found:
                converters.append((i, found))
        return cls(sql, tuple(params), tuple(converters))

    @property
    def empty(self) -> bool:
        """Known to match nothing, so never sent."""
        return not self.sql

    def reranked(self, k: int, column: str = "distance") -> Statement:
        """This statement's rows ordered by its ``column``, the first k: the outer query of pgvector's
        re-rank (``SELECT * FROM (candidates by the index's order) ORDER BY full distance LIMIT k``).
        Django has no subquery in FROM, so the compiled SQL is wrapped as text (no input in it)."""
        if self.empty:
            return self
        sql = f'SELECT * FROM ({self.sql}) AS candidates ORDER BY "{column}" LIMIT {int(k)}'
        return Statement(sql, self.params, self.converters)

    def bind(self, vector: bytes | None) -> list:
        return [vector if p is QUERY_VECTOR else p for p in self.params]

    def rows(self, raw: list[tuple], connection: Any) -> list[tuple]:
        if not self.converters:
            return raw
        out = []
        for row in raw:
            values = list(row)
            for i, functions in self.converters:
                for convert in functions:
                    values[i] = convert(values[i], None, connection)
            out.append(tuple(values))
        return out


class StatementCache:
    """Compiled statements by shape (model, database, metric, k, ...): Django compiles each shape once."""

    def __init__(self, size: int = 256) -> None:
        self.size = size
        self.data: OrderedDict[tuple, Statement] = OrderedDict()
        self.lock = Lock()

    def get(self, key: tuple, build: Callable[[], models.QuerySet]) -> Statement:
        with self.lock:
            found = self.data.get(key)
            if found is not None:
                self.data.move_to_end(key)
                return found
        statement = Statement.compile(build())
        if any(p is not QUERY_VECTOR for p in statement.params):
            return statement  # parameters of its own (a custom manager's filter, say) may change: not kept
        with self.lock:
            self.data[key] = statement
            while len(self.data) > self.size:
                self.data.popitem(last=False)
        return statement


statement_cache = StatementCache()


def pipelined(
    settings: dict[str, str], statements: Sequence[Statement], vector: bytes | None, own: bool
) -> list[tuple[int, str, list]]:
    """What one search sends in its round trip, as (cursor, SQL, parameters): cursor 0 runs the control
    statements (BEGIN when ``own``, the ``set_config``s that are SET LOCAL, COMMIT), cursor i + 1 the
    i-th statement (none for one known to match nothing). Shared by ``run`` and the async ``arun``."""
    names = ", ".join(["set_config(%s, %s, true)"] * len(settings))
    setting_params = [part for item in settings.items() for part in item]
    sent: list[tuple[int, str, list]] = [(0, "BEGIN", [])] if own else []
    sent.append((0, f"SELECT {names}", setting_params))
    sent += [(i + 1, s.sql, s.bind(vector)) for i, s in enumerate(statements) if not s.empty]
    if own:
        sent.append((0, "COMMIT", []))
    return sent


def run(
    using: str, settings: dict[str, str], statements: Sequence[Statement], vector: np.ndarray | None
) -> list[list[tuple]]:
    """Run the statements after ``SET LOCAL`` of ``settings``, in one transaction and one round trip.

    Inside a caller's transaction the statements join it (the settings end with it); otherwise this
    opens and commits its own. Returns each statement's rows, converted as the ORM would.
    """
    wrapper = connections[using]
    conn = pg.django_connection(using)
    bound = pg.binary_vector(vector) if vector is not None else None
    # Django's connections run in autocommit between atomic blocks: then this opens its own transaction.
    own = (
        conn.autocommit
        and not wrapper.in_atomic_block
        and conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    )
    # Server-side binding (psycopg's own Cursor, not Django's client-side one): parameters travel
    # apart from the SQL, so the vector goes as binary and the text of each statement stays the same.
    cursors = [psycopg.Cursor(conn) for _ in range(len(statements) + 1)]
    try:
        with wrapper.wrap_database_errors:
            try:
                with conn.pipeline():
                    # Never prepared: a generic plan of ORDER BY distance may leave the index.
                    for slot, sql, params in pipelined(settings, statements, bound, own):
                        cursors[slot].execute(sql, params, prepare=False)
            except BaseException:
                if own and conn.info.transaction_status != psycopg.pq.TransactionStatus.IDLE:
                    cursors[0].execute("ROLLBACK")
                raise
            return [
                [] if statement.empty else statement.rows(cursor.fetchall(), wrapper)
                for cursor, statement in zip(cursors[1:], statements, strict=True)
            ]
    finally:
        for cursor in cursors:
            cursor.close()
