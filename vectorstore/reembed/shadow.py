"""The shadow column: another model's vectors beside a table's own, filled in chunks by any number of
workers, indexed like the column, and swapped with it in one transaction.

- **prepare**: ``<column>_shadow``, a nullable vector column of the new model's size, on the document table
  and its passage table (PostgreSQL adds it without rewriting the table), and a ``BEFORE UPDATE`` trigger
  on the document table that empties a row's shadow vector when its text changes (a passage whose text
  changes is a new row: its document's passages are replaced whole). So a row written while the shadow
  fills, by any path, is left for the fill to embed again, never kept with its old text's vector.
- **fill**: rows without a shadow vector, a chunk of 1,024 primary-key values at a time, each chunk under
  a session-level advisory lock taken without waiting: another worker (process or machine) skips it, and
  a worker killed at any moment leaves nothing claimed. A vector is written ``WHERE`` the text still
  hashes as it did when read, in a transaction that checks the record still fills toward this model.
  What is written stays written: a rerun goes on with the rows still empty.
- **indexes**: each vector index of the column built again on the shadow (same method, kind, metric and
  options, at the new size), ``CONCURRENTLY``, while the site writes.
- **swap**: one transaction under ACCESS EXCLUSIVE on both tables embeds the rows written since the last
  fill, exchanges the columns' names and the indexes' names (the site's declared index names stay on the
  column searches use), moves the record (version + 1) and forgets the table's search tuning. The old
  vectors stay in the shadow column, kept up to date the same way, for ``--rollback``.

Written by hand: no library moves a pgvector column between models.
"""

from __future__ import annotations

import concurrent.futures
import re
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import psycopg
from django.db import connections, models, transaction
from django.utils import timezone
from psycopg import sql

from vectorstore import passages, pg
from vectorstore.freshness.worker import text_digest
from vectorstore.indexing import vector_indexes
from vectorstore.reembed import record

CHUNK = 1024  # primary-key values a worker claims at a time


def column(model: type[models.Model]) -> str:
    return model._meta.get_field("embedding").column


def shadow_column(model: type[models.Model]) -> str:
    return f"{column(model)}_shadow"


def tables(document: type[models.Model]) -> list[type[models.Model]]:
    """The document model and, where it has one, its passage model: their vectors move together."""
    passage = passages.passage_model(document)
    return [document] if passage is None else [document, passage]


def _trigger(document: type[models.Model]) -> str:
    return f"{document._meta.db_table[:40]}_shadow_reset"


def _quote(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def exists(model: type[models.Model], using: str) -> bool:
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT 1 FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s"
            " AND NOT attisdropped",
            [connections[using].ops.quote_name(model._meta.db_table), shadow_column(model)],
        )
        return cursor.fetchone() is not None


def add(document: type[models.Model], dims: int, using: str) -> None:
    """The shadow columns (of ``dims``) and the document table's reset trigger (caller's transaction)."""
    conn = pg.django_connection(using)
    for model in tables(document):
        names = {"t": _quote(model._meta.db_table), "s": _quote(shadow_column(model))}
        added = sql.SQL("ALTER TABLE {t} ADD COLUMN {s} vector({n})")
        conn.execute(added.format(n=sql.Literal(int(dims)), **names))
        # Kept in the row as the column is (vectorstore.apps: STORAGE MAIN), so a swap keeps the layout.
        conn.execute(sql.SQL("ALTER TABLE {t} ALTER COLUMN {s} SET STORAGE MAIN").format(**names))
    names = {
        "t": _quote(document._meta.db_table),
        "s": _quote(shadow_column(document)),
        "text": _quote(document._meta.get_field("text").column),
        "f": _quote(_trigger(document)),
    }
    conn.execute(
        sql.SQL(
            "CREATE OR REPLACE FUNCTION {f}() RETURNS trigger LANGUAGE plpgsql AS $body$ BEGIN"
            " IF NEW.{text} IS DISTINCT FROM OLD.{text} AND NEW.{s} IS NOT DISTINCT FROM OLD.{s} THEN"
            " NEW.{s} := NULL; END IF; RETURN NEW; END $body$"
        ).format(**names)
    )
    conn.execute(
        sql.SQL("CREATE TRIGGER {f} BEFORE UPDATE ON {t} FOR EACH ROW EXECUTE FUNCTION {f}()").format(**names)
    )


def drop(document: type[models.Model], using: str) -> None:
    """The shadow columns (their indexes go with them) and the trigger, in the caller's transaction."""
    conn = pg.django_connection(using)
    names = {"t": _quote(document._meta.db_table), "f": _quote(_trigger(document))}
    conn.execute(sql.SQL("DROP TRIGGER IF EXISTS {f} ON {t}").format(**names))
    conn.execute(sql.SQL("DROP FUNCTION IF EXISTS {f}()").format(**names))
    for model in tables(document):
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP COLUMN IF EXISTS {}").format(
                _quote(model._meta.db_table), _quote(shadow_column(model))
            )
        )


# --------------------------------------------------------------------------- filling


def _texts_sql(model: type[models.Model]) -> sql.Composable:
    """(pk, text) of a table's rows: a passage's text is its span of its document's text."""
    document = passages.document_of(model)
    if document is None:
        return sql.SQL("SELECT t.{pk}, t.{text} FROM {t} t").format(
            pk=_quote(model._meta.pk.column),
            text=_quote(model._meta.get_field("text").column),
            t=_quote(model._meta.db_table),
        )
    return sql.SQL(
        'SELECT t.{pk}, substr(d.{text}, t."start" + 1, t."end" - t."start") FROM {t} t JOIN {d} d'
        " ON d.{dpk} = t.{fk}"
    ).format(
        pk=_quote(model._meta.pk.column),
        text=_quote(document._meta.get_field("text").column),
        t=_quote(model._meta.db_table),
        d=_quote(document._meta.db_table),
        dpk=_quote(document._meta.pk.column),
        fk=_quote(model._meta.get_field("document").column),
    )


def _lock_class(model: type[models.Model]) -> int:
    return zlib.crc32(f"vectorstore.reembed:{model._meta.db_table}".encode()) & 0x7FFFFFFF


def _next_chunk(conn: Any, model: type[models.Model], after: int) -> int | None:
    """The first chunk from ``after`` on holding a row without a shadow vector."""
    row = conn.execute(
        sql.SQL("SELECT {pk} / %s FROM {t} WHERE {s} IS NULL AND {pk} >= %s ORDER BY {pk} LIMIT 1").format(
            pk=_quote(model._meta.pk.column), t=_quote(model._meta.db_table), s=_quote(shadow_column(model))
        ),
        [CHUNK, after * CHUNK],
    ).fetchone()
    return None if row is None else int(row[0])


def empty_rows(model: type[models.Model], using: str) -> int:
    """Rows still without a shadow vector."""
    return (
        pg.django_connection(using)
        .execute(
            sql.SQL("SELECT count(*) FROM {t} WHERE {s} IS NULL").format(
                t=_quote(model._meta.db_table), s=_quote(shadow_column(model))
            )
        )
        .fetchone()[0]
    )


def _write(
    conn: Any, model: type[models.Model], rows: list[tuple[int, str]], vectors: np.ndarray, using: str
) -> int:
    """The shadow vectors of rows whose text is still the one embedded; returns how many were written."""
    document = passages.document_of(model) or model
    if passages.document_of(model) is None:
        check = sql.SQL("AND md5({text}) = %s").format(text=_quote(model._meta.get_field("text").column))
    else:  # a passage's text changes only with a new row: its id is the check
        check = sql.SQL("AND %s::text IS NOT NULL")
    write = sql.SQL("UPDATE {t} SET {s} = %s WHERE {pk} = %s {check} RETURNING 1").format(
        t=_quote(model._meta.db_table),
        s=_quote(shadow_column(model)),
        pk=_quote(model._meta.pk.column),
        check=check,
    )
    written = 0
    with transaction.atomic(using=using):
        conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(_quote(document._meta.db_table)))
        state = record.read_table(document._meta.db_table, using)
        if state is None or state.shadow_state != "filling":
            raise record.ModelChanged(f"{document._meta.db_table}: its shadow column is no longer filled")
        with psycopg.Cursor(conn) as cursor:
            cursor.executemany(
                write,
                [
                    (pg.binary_vector(v), pk, text_digest(text))
                    for (pk, text), v in zip(rows, vectors, strict=True)
                ],
                returning=True,
            )
            for _ in rows:
                written += cursor.fetchone() is not None
                cursor.nextset()
    return written


def fill(
    model: type[models.Model],
    encode: Callable[[list[str]], np.ndarray],
    using: str,
    on_rows: Callable[[int], None] = lambda n: None,
) -> int:
    """Embed this worker's share of the rows without a shadow vector (see the module's docstring);
    returns how many it wrote. Chunks another worker holds are skipped; a pass from the start after the
    end catches rows written behind this worker."""
    conn = pg.django_connection(using)
    klass = _lock_class(model)
    select = sql.SQL("{texts} WHERE t.{s} IS NULL AND t.{pk} >= %s AND t.{pk} < %s ORDER BY t.{pk}").format(
        texts=_texts_sql(model), s=_quote(shadow_column(model)), pk=_quote(model._meta.pk.column)
    )
    written = 0
    after, wrapped = 0, False
    # A chunk's writes run in a thread of their own (its own connection) while the model embeds the next
    # chunk: each row's UPDATE also inserts into the table's indexes (its new version does not fit its
    # page), which on short texts cost a quarter of the embedding time when done in turn. One write in
    # flight at most; a chunk's lock is released once its write is done.
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="reembed-writer")
    pending: tuple[concurrent.futures.Future, int] | None = None

    def finish() -> int:
        future, held = pending
        try:
            return future.result()
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", [klass, held % 2147483647])

    try:
        while True:
            chunk = _next_chunk(conn, model, after)
            if chunk is None:
                if wrapped or after == 0:
                    break
                after, wrapped = 0, True
                continue
            if pending is not None and pending[1] == chunk:
                # Its own chunk, still being written (a session's advisory locks are re-entrant: it would
                # take it again): the write first, then look again from there.
                written += finish()
                pending = None
                after = chunk
                continue
            after = chunk + 1
            key = chunk % 2147483647
            if not conn.execute("SELECT pg_try_advisory_lock(%s, %s)", [klass, key]).fetchone()[0]:
                continue  # another worker's
            rows = [(pk, text or "") for pk, text in conn.execute(select, [chunk * CHUNK, after * CHUNK])]
            if not rows:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", [klass, key])
                continue
            try:
                vectors = encode([text for _, text in rows])
            except BaseException:
                conn.execute("SELECT pg_advisory_unlock(%s, %s)", [klass, key])
                raise
            if pending is not None:
                written += finish()
                pending = None
            pending = (pool.submit(_write_in_thread, model, rows, vectors, using), chunk)
            on_rows(len(rows))
        if pending is not None:
            written += finish()
            pending = None
    finally:
        if pending is not None:
            pending[0].cancel()
            concurrent.futures.wait([pending[0]])
            conn.execute("SELECT pg_advisory_unlock(%s, %s)", [klass, pending[1] % 2147483647])
        pool.submit(connections.close_all).result()  # the writer thread's own connection
        pool.shutdown()
    return written


def _write_in_thread(model: type[models.Model], rows: list, vectors: np.ndarray, using: str) -> int:
    return _write(pg.django_connection(using), model, rows, vectors, using)


def others_filling(model: type[models.Model], using: str) -> int:
    """Chunks other sessions hold now (workers still filling)."""
    return (
        pg.django_connection(using)
        .execute(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid = %s::oid AND granted"
            " AND pid <> pg_backend_pid()",
            [_lock_class(model)],
        )
        .fetchone()[0]
    )


# --------------------------------------------------------------------------- indexes


def _rewritten(definition: str, name: str, shadow: str, col: str, dims: int) -> str:
    """pg_get_indexdef's statement for the column, made the same index of the shadow column at ``dims``."""
    head, _, tail = definition.partition(" USING ")
    head = re.sub(
        r"^CREATE (UNIQUE )?INDEX \S+ ON ", rf'CREATE INDEX CONCURRENTLY IF NOT EXISTS "{name}" ON ', head
    )
    tail = re.sub(rf'(?<![\w"])"?{re.escape(col)}"?(?![\w"])', f'"{shadow}"', tail)
    tail = re.sub(r"\b(halfvec|bit)\(\d+\)", rf"\g<1>({int(dims)})", tail)
    return f"{head} USING {tail}"


def shadow_index_name(name: str) -> str:
    return f"{name[:53]}_shadow"


def build_indexes(document: type[models.Model], dims: int, using: str) -> list[str]:
    """Each vector index of the columns built on the shadow columns where it is not there yet (outside a
    transaction: CONCURRENTLY, so the site writes on); returns the names built."""
    built = []
    conn = pg.new_connection(using, autocommit=True)
    try:
        for model in tables(document):
            table = model._meta.db_table
            have = {
                i.name for i in vector_indexes.table_indexes(table, shadow_column(model), using, sizes=False)
            }
            for index in vector_indexes.table_indexes(table, column(model), using, sizes=False):
                if not index.valid or shadow_index_name(index.name) in have:
                    continue
                definition = conn.execute("SELECT pg_get_indexdef(%s)", [index.oid]).fetchone()[0]
                name = shadow_index_name(index.name)
                conn.execute(_rewritten(definition, name, shadow_column(model), column(model), dims))
                built.append(name)
    finally:
        conn.close()
    return built


def _index_pairs(model: type[models.Model], using: str) -> Iterator[tuple[str, str]]:
    """(the column's index, its shadow twin) by name."""
    shadow = {i.name for i in vector_indexes.table_indexes(model._meta.db_table, shadow_column(model), using)}
    for index in vector_indexes.table_indexes(model._meta.db_table, column(model), using, sizes=False):
        if shadow_index_name(index.name) in shadow:
            yield index.name, shadow_index_name(index.name)


# --------------------------------------------------------------------------- the swap


def swap(
    document: type[models.Model], encode: Callable[[list[str]], np.ndarray], using: str
) -> tuple[record.Recorded, int]:
    """One transaction: the rows written since the fill embedded, the columns and their indexes exchanged,
    the record moved; returns the new record and how many rows were embedded under the lock."""
    conn = pg.django_connection(using)
    late = 0
    with transaction.atomic(using=using):
        conn.execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(_quote(m._meta.db_table) for m in tables(document))
            )
        )
        state = record.read_table(document._meta.db_table, using)
        if state is None or state.shadow_state != "filling":
            raise record.ModelChanged(f"{document._meta.db_table}: swapped already by another reembed")
        for model in tables(document):
            select = sql.SQL("{texts} WHERE t.{s} IS NULL").format(
                texts=_texts_sql(model), s=_quote(shadow_column(model))
            )
            rows = [(pk, text or "") for pk, text in conn.execute(select)]
            if rows:
                late += _write(conn, model, rows, encode([t for _, t in rows]), using)
        for model in tables(document):
            t, col, shadow = _quote(model._meta.db_table), column(model), shadow_column(model)
            pairs = list(_index_pairs(model, using))
            not_null = conn.execute(
                "SELECT attnotnull FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s",
                [connections[using].ops.quote_name(model._meta.db_table), col],
            ).fetchone()[0]
            rename = sql.SQL("ALTER TABLE {} RENAME COLUMN {} TO {}")
            conn.execute(rename.format(t, _quote(col), _quote(f"{col}_swapping")))
            conn.execute(rename.format(t, _quote(shadow), _quote(col)))
            conn.execute(rename.format(t, _quote(f"{col}_swapping"), _quote(shadow)))
            if not_null:  # the column's constraint stays with the column searches use
                conn.execute(
                    sql.SQL("ALTER TABLE {} ALTER COLUMN {} DROP NOT NULL").format(t, _quote(shadow))
                )
                conn.execute(sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(t, _quote(col)))
            index = sql.SQL("ALTER INDEX {} RENAME TO {}")
            for old, new in pairs:
                conn.execute(index.format(_quote(old), _quote(f"{old[:50]}_swapping")))
                conn.execute(index.format(_quote(new), _quote(old)))
                conn.execute(index.format(_quote(f"{old[:50]}_swapping"), _quote(new)))
        conn.execute(
            f"UPDATE {record.RECORD} SET model = shadow_model, dimensions = shadow_dimensions,"
            " fingerprint = shadow_fingerprint, shadow_model = model, shadow_dimensions = dimensions,"
            " shadow_fingerprint = fingerprint, shadow_state = 'previous', version = version + 1,"
            " updated_at = %s WHERE db_table = %s",
            [timezone.now(), document._meta.db_table],
        )
        # The old model's tuning and logged queries say nothing of the new vectors.
        tables_ = [m._meta.db_table for m in tables(document)]
        conn.execute("DELETE FROM vectorstore_searchtuning WHERE db_table = ANY(%s)", [tables_])
        conn.execute("DELETE FROM vectorstore_querylog WHERE db_table = ANY(%s)", [tables_])
    record.forget(document._meta.db_table)
    vector_indexes.forget()
    return record.read(document, using), late
