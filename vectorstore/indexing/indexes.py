"""A table's secondary indexes: drop and build around a bulk load (with progress), rebuild them
concurrently under traffic, and clean up what a failed concurrent build leaves behind."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import connections
from psycopg import sql

from vectorstore.indexing import build_memory, vector_indexes
from vectorstore.loading.pgcopy import new_connection
from vectorstore.progress import IndexProgressCallback

VECTOR_METHODS = ("hnsw", "ivfflat")


@dataclass(frozen=True)
class IndexDef:
    name: str
    definition: str
    method: str


def rebuildable_indexes(conn: psycopg.Connection, table: str) -> list[IndexDef]:
    """The table's indexes that back no constraint: safe to drop before a bulk load and build after.

    Oldest first, so that a rebuild in this order keeps which index was added last (searches use the
    vector index added last, ``vector_indexes.serving``)."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), am.amname"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
        " WHERE i.indrelid = to_regclass(%s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
        " ORDER BY c.oid",
        [sql.Identifier(table).as_string(conn)],
    ).fetchall()
    return [IndexDef(*row) for row in rows]


def drop_indexes(conn: psycopg.Connection, indexes: Sequence[IndexDef]) -> None:
    for index in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index.name)))


class IndexProgress:
    """Polls pg_stat_progress_create_index for one backend from a second connection, into a callback."""

    def __init__(
        self, using: str, backend_pid: int, callback: Callable[..., None], interval: float = 0.5
    ) -> None:
        self.using = using
        self.backend_pid = backend_pid
        self.callback = callback
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="index-progress")

    def _run(self) -> None:
        try:
            conn = new_connection(self.using, autocommit=True)
        except psycopg.Error:
            return  # progress is a nicety: never fail a load over it
        with conn:
            while not self._stop.wait(self.interval):
                row = conn.execute(
                    "SELECT c.relname, p.phase, p.blocks_done, p.blocks_total, p.tuples_done, p.tuples_total"
                    " FROM pg_stat_progress_create_index p LEFT JOIN pg_class c ON c.oid = p.index_relid"
                    " WHERE p.pid = %s",
                    [self.backend_pid],
                ).fetchone()
                if row:
                    self.callback(*row)

    def __enter__(self) -> IndexProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def build_indexes(
    conn: psycopg.Connection,
    indexes: Sequence[IndexDef],
    *,
    using: str = "default",
    maintenance_work_mem: str | None = None,
    parallel_workers: int | None = None,
    progress: IndexProgressCallback | None = None,
    progress_interval: float = 0.5,
    notices: list[str] | None = None,
) -> float:
    """Create the indexes (inside the caller's transaction) with the given memory and workers.

    ``progress(index_name, phase, done, total)`` is called while each builds; the server's notices
    (pgvector's "graph no longer fits into maintenance_work_mem") are appended to ``notices``. Returns
    the seconds spent.
    """
    started = time.perf_counter()
    if maintenance_work_mem:
        conn.execute("SELECT set_config('maintenance_work_mem', %s, true)", [maintenance_work_mem])
    if parallel_workers is not None:
        conn.execute(
            "SELECT set_config('max_parallel_maintenance_workers', %s, true)", [str(parallel_workers)]
        )
    pid = conn.info.backend_pid
    building = [""]  # the poller cannot read the name: the new index is not committed yet

    report = relay_progress(progress, building)
    # One poller for all the builds: a connection per index would cost more than small builds take.
    with IndexProgress(using, pid, report, interval=progress_interval), server_notices(conn, notices):
        for index in indexes:
            building[0] = index.name
            conn.execute(index.definition)
    return time.perf_counter() - started


def relay_progress(progress: IndexProgressCallback | None, building: list[str]) -> Callable[..., None]:
    """IndexProgress's rows as ``progress(index, phase, done, total)`` calls: tuples where the phase
    counts them, else blocks; ``building[0]`` names the index being built (the poller cannot read the
    name of an index not yet committed)."""

    def report(_relname, phase, blocks_done, blocks_total, tuples_done, tuples_total):
        if progress is not None:
            done, total = (
                (tuples_done, tuples_total) if tuples_total else (blocks_done or 0, blocks_total or 0)
            )
            progress(building[0], phase, done, total)

    return report


@contextmanager
def server_notices(conn: psycopg.Connection, into: list[str] | None) -> Iterator[None]:
    """Collect the NOTICEs the server sends on ``conn`` meanwhile (nothing when ``into`` is None)."""
    if into is None:
        yield
        return

    def handler(diagnostic: psycopg.errors.Diagnostic) -> None:
        if diagnostic.message_primary:
            into.append(diagnostic.message_primary)

    conn.add_notice_handler(handler)
    try:
        yield
    finally:
        conn.remove_notice_handler(handler)


def spill_warnings(notices: Sequence[str]) -> list[str]:
    """pgvector's notices that a build outgrew maintenance_work_mem and went on on disk."""
    return [
        f"pgvector: {n} (the rest of the build went on on disk, slower)"
        for n in notices
        if "no longer fits into maintenance_work_mem" in n
    ]


def invalid_indexes(conn: psycopg.Connection, table: str) -> list[str]:
    """Indexes a failed concurrent build left behind (INVALID: maintained on writes, never used).

    An index another session is building concurrently is INVALID too until it finishes: while
    any such build runs on the table, none is reported (a leftover waits for the next call).
    """
    rows = conn.execute(
        "SELECT c.relname FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
        " WHERE i.indrelid = to_regclass(%s) AND NOT i.indisvalid"
        " AND NOT EXISTS (SELECT 1 FROM pg_stat_progress_create_index p"
        "                 WHERE p.relid = i.indrelid AND p.pid <> pg_backend_pid())"
        " ORDER BY c.relname",
        [sql.Identifier(table).as_string(conn)],
    ).fetchall()
    return [r[0] for r in rows]


def drop_invalid_indexes(conn: psycopg.Connection, table: str) -> list[str]:
    """Drop the INVALID leftovers of failed concurrent builds (conn must be in autocommit)."""
    names = invalid_indexes(conn, table)
    for name in names:
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    return names


def reindex_concurrently(
    table: str,
    *,
    using: str = "default",
    vector_only: bool = True,
    maintenance_work_mem: str | None = None,
    timeout: str | None = None,
    progress: IndexProgressCallback | None = None,
    model: type | None = None,
    warnings: list[str] | None = None,
) -> list[str]:
    """Rebuild the table's (vector) indexes with REINDEX CONCURRENTLY: searches and writes go on meanwhile.

    A failed rebuild leaves an INVALID ``<name>_ccnew`` index behind, which would
    slow every write for nothing: it is dropped before the error is raised, and
    any such leftover from an earlier run is dropped first. Returns the indexes rebuilt.
    ``maintenance_work_mem`` None: sized for the largest graph (``build_memory``, needs ``model``);
    a build that cannot fit, and pgvector's notice if one spilled to disk, go to ``warnings``.
    """
    conn = new_connection(using, autocommit=True)
    notices: list[str] = []
    try:
        drop_invalid_indexes(conn, table)
        chosen = rebuildable_indexes(conn, table)
        chosen = [i for i in chosen if not vector_only or i.method in VECTOR_METHODS]
        names = [i.name for i in chosen]
        memory = size_build(conn, table, chosen, model, using, maintenance_work_mem)
        if warnings is not None and memory.warning():
            warnings.append(memory.warning())
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [memory.setting])
        building = [""]

        report = relay_progress(progress, building)
        with IndexProgress(using, conn.info.backend_pid, report), server_notices(conn, notices):
            if timeout:
                conn.execute("SELECT set_config('statement_timeout', %s, false)", [timeout])
            for name in names:
                building[0] = name
                try:
                    conn.execute(sql.SQL("REINDEX INDEX CONCURRENTLY {}").format(sql.Identifier(name)))
                except psycopg.Error:
                    conn.execute("SELECT set_config('statement_timeout', '0', false)")
                    drop_invalid_indexes(conn, table)
                    raise
        if warnings is not None:
            warnings += spill_warnings(notices)
        return names
    finally:
        conn.close()


def size_build(
    conn: psycopg.Connection,
    table: str,
    building: Sequence[IndexDef],
    model: type | None,
    using: str,
    requested: str | None,
) -> build_memory.MemoryPlan:
    """maintenance_work_mem for building ``building`` on ``table`` now (``build_memory.plan``)."""
    builds = []
    if model is not None:
        column = model._meta.get_field("embedding")
        for index in building:
            kind = vector_indexes.kind_from_definition(index.definition, column.column)
            if kind is not None:
                method, quantization, dims, m = kind
                size = dims or column.dimensions
                builds.append(build_memory.BuildIndex(index.name, method, quantization, size, m or 16))
    rows = (
        conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
        if builds
        else 0
    )
    workers = parallel_workers(using)
    return build_memory.plan(builds, rows, using=using, requested=requested, parallel=bool(workers))


def parallel_workers(using: str) -> int | None:
    """Index build workers: all but one core when the server runs on this machine (a Unix socket)."""
    host = connections[using].settings_dict.get("HOST") or ""
    if str(host).startswith("/"):
        return max(0, (os.cpu_count() or 1) - 1)
    return None  # a remote server: keep its own max_parallel_maintenance_workers
