"""All of the loader's SQL: binary COPY and batched INSERT, the staging table of loads that merge, and
the small statements around a load (the connections and the vectors' binary format: ``vectorstore.pg``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

# The connection helpers, re-exported: the loader's callers reach them here too.
from vectorstore.pg import (  # noqa: F401
    binary_vector,
    count_rows,
    django_connection,
    encode_vectors,
    new_connection,
    prepare_connection,
)


def _dumps(obj: Any) -> str:
    # default=str: dates, decimals and other scalars a parquet file may hold.
    return json.dumps(obj, ensure_ascii=False, default=str)


def jsonb(obj: Any) -> Jsonb:
    return Jsonb(obj, dumps=_dumps)


@dataclass(frozen=True)
class Target:
    """A table and the columns a load writes, with their PostgreSQL type names for COPY."""

    table: str
    columns: tuple[str, ...]
    types: tuple[str, ...]

    @classmethod
    def introspect(cls, conn: psycopg.Connection, table: str, columns: Sequence[str]) -> Target:
        rows = conn.execute(
            "SELECT a.attname, t.typname FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid"
            " WHERE a.attrelid = to_regclass(%s) AND a.attnum > 0 AND NOT a.attisdropped",
            [sql.Identifier(table).as_string(conn)],
        ).fetchall()
        types = dict(rows)
        missing = [c for c in columns if c not in types]
        if missing:
            raise ValueError(f"table {table} has no column(s) {', '.join(missing)}")
        return cls(table, tuple(columns), tuple(types[c] for c in columns))

    def copy_sql(self, table: str | None = None) -> sql.Composed:
        return sql.SQL("COPY {} ({}) FROM STDIN (FORMAT BINARY)").format(
            sql.Identifier(table or self.table), sql.SQL(", ").join(map(sql.Identifier, self.columns))
        )

    def insert_sql(self, suffix: str = "") -> sql.Composed:
        return sql.SQL("INSERT INTO {} ({}) VALUES ({}){}").format(
            sql.Identifier(self.table),
            sql.SQL(", ").join(map(sql.Identifier, self.columns)),
            sql.SQL(", ").join(sql.Placeholder() * len(self.columns)),
            sql.SQL(suffix),
        )


def copy_rows(
    conn: psycopg.Connection, target: Target, rows: Iterable[Sequence[Any]], table: str | None = None
) -> int:
    """Binary COPY of rows (tuples in ``target.columns`` order) into the table; returns the count."""
    count = 0
    with conn.cursor() as cursor, cursor.copy(target.copy_sql(table)) as copy:
        copy.set_types(list(target.types))
        for row in rows:
            copy.write_row(row)
            count += 1
    return count


def insert_rows(
    conn: psycopg.Connection, target: Target, rows: Sequence[Sequence[Any]], batch_size: int, suffix: str = ""
) -> int:
    """Batched INSERT (executemany, pipelined by psycopg), ``batch_size`` rows per call; returns the count."""
    statement = target.insert_sql(suffix)
    with conn.cursor() as cursor:
        for start in range(0, len(rows), batch_size):
            cursor.executemany(statement, rows[start : start + batch_size])
    return len(rows)


# --------------------------------------------------------------------------- around a load


def take_load_turn(conn: psycopg.Connection, table: str) -> None:
    """Wait for this transaction's turn among loads that may drop ``table``'s indexes.

    Two such loads at once deadlock. An advisory lock, not a table lock, so searches and API
    inserts carry on meanwhile; it ends with the transaction.
    """
    conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"vectorstore-load:{table}"])


def table_size_at_least(conn: psycopg.Connection, table: str, n: int) -> int:
    """min(count(*), n) without counting a large table to the end."""
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(sql.Identifier(table))
    return conn.execute(query, [n]).fetchone()[0]


def analyze(conn: psycopg.Connection, table: str) -> None:
    """Fresh statistics, so the planner sees new rows (and uses the vector index) at once."""
    conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))


def next_ids(conn: psycopg.Connection, table: str, n: int) -> list[int]:
    """n ids drawn from the table's id sequence (COPY returns nothing, so ids are drawn first)."""
    return [
        row[0]
        for row in conn.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [sql.Identifier(table).as_string(conn), n],
        )
    ]


# --------------------------------------------------------------------------- staging and merge


def create_staging(conn: psycopg.Connection, target: Target) -> Target:
    """A temporary table shaped like ``target`` plus ``_row`` (the input row number); returns its Target.

    Loads that skip, update or reject rows COPY into it first and merge with ``merge_staged``.
    """
    stage = f"vectorstore_stage_{uuid.uuid4().hex[:12]}"
    cols = sql.SQL(", ").join(map(sql.Identifier, target.columns))
    conn.execute(
        sql.SQL(
            "CREATE TEMP TABLE {} ON COMMIT DROP AS SELECT NULL::bigint AS _row, {} FROM {} WITH NO DATA"
        ).format(sql.Identifier(stage), cols, sql.Identifier(target.table))
    )
    return Target(stage, ("_row", *target.columns), ("int8", *target.types))


def drop_staging(conn: psycopg.Connection, stage: Target) -> None:
    # ON COMMIT DROP would do, but not when the load runs inside a caller's transaction.
    conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(stage.table)))


def staged_duplicate_ids(conn: psycopg.Connection, stage: Target) -> list[tuple[int, str, int]]:
    """(row, id, first row with that id) for every staged row whose id an earlier staged row has."""
    return conn.execute(
        sql.SQL(
            "SELECT _row, external_id, first FROM (SELECT _row, external_id, row_number() OVER w AS n,"
            " first_value(_row) OVER w AS first FROM {} WHERE external_id IS NOT NULL"
            " WINDOW w AS (PARTITION BY external_id ORDER BY _row)) s WHERE n > 1 ORDER BY _row"
        ).format(sql.Identifier(stage.table))
    ).fetchall()


def staged_ids_stored(conn: psycopg.Connection, stage: Target, table: str) -> list[tuple[int, str]]:
    """(row, id) for every staged row whose id the table already holds."""
    return conn.execute(
        sql.SQL(
            "SELECT s._row, s.external_id FROM {} s JOIN {} t ON t.external_id = s.external_id"
            " ORDER BY s._row"
        ).format(sql.Identifier(stage.table), sql.Identifier(table))
    ).fetchall()


def count_staged_ids_stored(conn: psycopg.Connection, stage: Target, table: str) -> int:
    return conn.execute(
        sql.SQL("SELECT count(*) FROM {} s JOIN {} t ON t.external_id = s.external_id").format(
            sql.Identifier(stage.table), sql.Identifier(table)
        )
    ).fetchone()[0]


def delete_staged(conn: psycopg.Connection, stage: Target, rows: Sequence[int]) -> None:
    conn.execute(sql.SQL("DELETE FROM {} WHERE _row = ANY(%s)").format(sql.Identifier(stage.table)), [rows])


def merge_staged(conn: psycopg.Connection, stage: Target, target: Target, on_conflict: str) -> int:
    """INSERT the staged rows into the table in input order; returns the rows inserted or updated.

    ``on_conflict``: error (a stored id fails the statement), skip (ON CONFLICT DO NOTHING) or
    update (ON CONFLICT DO UPDATE every other column).
    """
    cols = sql.SQL(", ").join(map(sql.Identifier, target.columns))
    insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY _row").format(
        sql.Identifier(target.table), cols, cols, sql.Identifier(stage.table)
    )
    if on_conflict == "skip":
        insert += sql.SQL(" ON CONFLICT (external_id) DO NOTHING")
    elif on_conflict == "update":
        updates = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in target.columns
            if c != "external_id"
        )
        insert += sql.SQL(" ON CONFLICT (external_id) DO UPDATE SET {}").format(updates)
    with conn.cursor() as cursor:
        cursor.execute(insert)
        return cursor.rowcount
