"""Binary COPY and batched INSERT on Django's own psycopg 3 connection, and the index work around them.

pgvector-python registers the vector type with psycopg; what it does not give
is a way to hand COPY a whole batch of vectors encoded at once, so
``encode_vectors`` builds pgvector's binary format with numpy (one pass per
batch instead of one Python object per row) and ``VectorBytesDumper`` passes
those bytes through.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from django.db import connections
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb

_registered: weakref.WeakSet = weakref.WeakSet()


class VectorBytesDumper(Dumper):
    """Binary dumper for the vector oid: pre-encoded bytes pass through; anything else via pgvector."""

    format = Format.BINARY

    def dump(self, obj: Any) -> Any:
        if isinstance(obj, bytes | memoryview):
            return obj
        from pgvector import Vector

        return (obj if isinstance(obj, Vector) else Vector(obj)).to_binary()


class _EncodedVector(bytes):
    """Marker type under which VectorBytesDumper is registered."""


def prepare_connection(conn: psycopg.Connection) -> psycopg.Connection:
    """Register pgvector's types (and the pass-through dumper) on a psycopg connection, once."""
    if conn not in _registered:
        register_vector(conn)
        info = conn.adapters.types["vector"]
        conn.adapters.register_dumper(_EncodedVector, type("", (VectorBytesDumper,), {"oid": info.oid}))
        _registered.add(conn)
    return conn


def django_connection(using: str = "default") -> psycopg.Connection:
    """Django's own psycopg connection for ``using``, ready for vectors."""
    wrapper = connections[using]
    wrapper.ensure_connection()
    return prepare_connection(wrapper.connection)


def new_connection(using: str = "default", **kwargs: Any) -> psycopg.Connection:
    """A separate connection with the same parameters as Django's (for workers and progress polling)."""
    params = connections[using].get_connection_params()
    params.pop("cursor_factory", None)
    params.update(kwargs)
    return prepare_connection(psycopg.connect(**params))


def encode_vectors(vectors: np.ndarray) -> list[bytes]:
    """pgvector's binary format (uint16 dim, uint16 0, float32 big-endian values) for each row."""
    n, dims = vectors.shape
    width = 4 + 4 * dims
    buf = np.empty((n, width), dtype=np.uint8)
    buf[:, :4] = np.array([dims, 0], dtype=">u2").view(np.uint8)
    buf[:, 4:] = np.ascontiguousarray(vectors, dtype=">f4").view(np.uint8).reshape(n, 4 * dims)
    data = buf.tobytes()
    return [data[i : i + width] for i in range(0, n * width, width)]


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


@dataclass(frozen=True)
class IndexDef:
    name: str
    definition: str
    method: str


def rebuildable_indexes(conn: psycopg.Connection, table: str) -> list[IndexDef]:
    """The table's indexes that back no constraint: safe to drop before a bulk load and build after."""
    rows = conn.execute(
        "SELECT c.relname, pg_get_indexdef(i.indexrelid), am.amname"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
        " WHERE i.indrelid = to_regclass(%s)"
        " AND NOT EXISTS (SELECT 1 FROM pg_constraint k WHERE k.conindid = i.indexrelid)"
        " ORDER BY c.relname",
        [sql.Identifier(table).as_string(conn)],
    ).fetchall()
    return [IndexDef(*row) for row in rows]


def drop_indexes(conn: psycopg.Connection, indexes: Sequence[IndexDef]) -> None:
    for index in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index.name)))


class IndexProgress:
    """Polls pg_stat_progress_create_index for one backend from a second connection, into a callback."""

    def __init__(self, using: str, backend_pid: int, callback, interval: float = 0.5) -> None:
        self.using = using
        self.backend_pid = backend_pid
        self.callback = callback
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="index-progress")

    def _run(self) -> None:
        params = connections[self.using].get_connection_params()
        params.pop("cursor_factory", None)
        try:
            conn = psycopg.connect(**params, autocommit=True)
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
    progress=None,
    progress_interval: float = 0.5,
) -> float:
    """Create the indexes (inside the caller's transaction) with the given memory and workers.

    ``progress(index_name, phase, done, total)`` is called while each builds. Returns the seconds spent.
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

    def report(_relname, phase, blocks_done, blocks_total, tuples_done, tuples_total):
        if progress is None:
            return
        if tuples_total:
            progress(building[0], phase, tuples_done, tuples_total)
        else:
            progress(building[0], phase, blocks_done or 0, blocks_total or 0)

    # One poller for all the builds: a connection per index would cost more than small builds take.
    with IndexProgress(using, pid, report, interval=progress_interval):
        for index in indexes:
            building[0] = index.name
            conn.execute(index.definition)
    return time.perf_counter() - started


class ParallelCopyUnavailable(RuntimeError):
    """The server cannot make several COPY streams one transaction (no prepared transactions)."""


def parallel_copy(
    using: str,
    target: Target,
    batches: Iterable[Sequence[Sequence[Any]]],
    workers: int,
    on_batch=None,
) -> int:
    """COPY batches into the table over ``workers`` connections at once, committed all or nothing.

    pgvector's HNSW index takes concurrent inserts, so on a populated, indexed
    table several streams build the index in parallel. Each stream is its own
    transaction; two-phase commit (PREPARE TRANSACTION, then COMMIT PREPARED once
    every stream is prepared) keeps the load atomic: if any stream fails, all
    are rolled back.
    """
    import queue
    import uuid

    # The owner connection holds a session advisory lock for as long as this load lives, so
    # recover_prepared_loads() can tell its prepared transactions from those of a dead load.
    owner = new_connection(using, autocommit=True)
    conns: list[psycopg.Connection] = []
    try:
        limit = int(owner.execute("SHOW max_prepared_transactions").fetchone()[0])
        if limit < workers:
            raise ParallelCopyUnavailable(
                f"{workers} workers need the server's max_prepared_transactions >= {workers} (it is {limit}),"
                " so that their streams commit as one transaction; use --workers 1 or raise the setting"
            )
        decisions = _decision_table()
        if owner.execute("SELECT to_regclass(%s)", [decisions.as_string(owner)]).fetchone()[0] is None:
            raise ParallelCopyUnavailable(
                "--workers needs the vectorstore_loaddecision table on this database: run migrate"
            )
        load_id = uuid.uuid4().hex[:16]
        owner.execute("SELECT pg_advisory_lock(hashtext(%s))", [_owner_key(load_id)])
        gids = [f"{LOAD_GID_PREFIX}{load_id}-{i + 1}-of-{workers}" for i in range(workers)]
        conns.extend(new_connection(using) for _ in range(workers))
        work: queue.Queue = queue.Queue(maxsize=workers * 2)
        done = threading.Event()
        failed = threading.Event()
        errors: list[BaseException] = []
        prepared = [False] * workers
        counts = [0] * workers

        def run(i: int) -> None:
            try:
                with conns[i].cursor() as cursor, cursor.copy(target.copy_sql()) as copy:
                    copy.set_types(list(target.types))
                    while not failed.is_set():
                        try:
                            batch = work.get(timeout=0.05)
                        except queue.Empty:
                            if done.is_set():
                                break
                            continue
                        for row in batch:
                            copy.write_row(row)
                        counts[i] += len(batch)
                if failed.is_set():
                    return
                conns[i].execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gids[i])))
                prepared[i] = True
            except BaseException as exc:
                errors.append(exc)
                failed.set()

        threads = [threading.Thread(target=run, args=(i,), name=f"copy-worker-{i}") for i in range(workers)]
        for t in threads:
            t.start()
        try:
            for batch in batches:
                while not failed.is_set():
                    try:
                        work.put(batch, timeout=0.05)
                        break
                    except queue.Full:
                        continue
                if failed.is_set():
                    break
                if on_batch:
                    on_batch(len(batch))
        except BaseException as exc:
            errors.append(exc)
            failed.set()
        done.set()
        for t in threads:
            t.join()
        if errors:
            for i, conn in enumerate(conns):
                with contextlib.suppress(psycopg.Error):
                    if prepared[i]:
                        conn.autocommit = True
                        conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gids[i])))
                    else:
                        conn.rollback()
            raise errors[0]
        # The decision, durable before the first COMMIT PREPARED: from here on the load is committed
        # even if this process dies before the last one (recover_prepared_loads finishes it).
        try:
            owner.execute(
                sql.SQL(
                    "INSERT INTO {} (load_id, db_table, streams, decided_at) VALUES (%s, %s, %s, now())"
                ).format(decisions),
                [load_id, target.table, workers],
            )
        except psycopg.Error:
            for gid in gids:  # no decision recorded: the load is rolled back (presumed abort)
                with contextlib.suppress(psycopg.Error):
                    owner.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
            raise
        for gid in gids:
            owner.execute(sql.SQL("COMMIT PREPARED {}").format(sql.Literal(gid)))
        owner.execute(sql.SQL("DELETE FROM {} WHERE load_id = %s").format(decisions), [load_id])
        return sum(counts)
    finally:
        for conn in (owner, *conns):
            conn.close()


LOAD_GID_PREFIX = "vectorstore-load-"
_GID = re.compile(rf"^{LOAD_GID_PREFIX}(?P<load>[0-9a-f]+)-\d+-of-\d+$")


def _owner_key(load_id: str) -> str:
    return f"vectorstore-load-owner:{load_id}"


def _decision_table() -> sql.Identifier:
    from vectorstore.models import LoadDecision

    return sql.Identifier(LoadDecision._meta.db_table)


@dataclass
class Recovery:
    """What recover_prepared_loads() did: prepared transactions committed or rolled back, by gid,
    and the loads it left alone because their process is still running."""

    committed: list[str] = field(default_factory=list)
    rolled_back: list[str] = field(default_factory=list)
    running: list[str] = field(default_factory=list)


def recover_prepared_loads(using: str = "default") -> Recovery:
    """Finish the parallel loads whose process died between PREPARE and the last COMMIT PREPARED.

    Their prepared transactions hold locks (and, until resolved, their rows stay invisible)
    forever. A load whose commit decision was recorded is committed; one without is rolled back
    (presumed abort). Loads still running hold their owner lock and are left alone.
    """
    result = Recovery()
    conn = new_connection(using, autocommit=True)
    decisions = _decision_table()
    try:
        groups: dict[str, list[str]] = {}
        for (gid,) in conn.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() AND starts_with(gid, %s)"
            " ORDER BY gid",
            [LOAD_GID_PREFIX],
        ):
            if match := _GID.match(gid):
                groups.setdefault(match["load"], []).append(gid)
        if not groups:  # the common case: nothing to do, and no need for the decision table
            return result
        stale = [  # decisions of loads that died after their last COMMIT PREPARED: only to delete
            row[0]
            for row in conn.execute(sql.SQL("SELECT load_id FROM {} ORDER BY load_id").format(decisions))
            if row[0] not in groups
        ]
        for load_id in [*groups, *stale]:
            key = _owner_key(load_id)
            if not conn.execute("SELECT pg_try_advisory_lock(hashtext(%s))", [key]).fetchone()[0]:
                result.running.extend(groups.get(load_id, []))
                continue
            try:
                decided = conn.execute(
                    sql.SQL("SELECT 1 FROM {} WHERE load_id = %s").format(decisions), [load_id]
                ).fetchone()
                for gid in groups.get(load_id, []):
                    verb = "COMMIT" if decided else "ROLLBACK"
                    conn.execute(sql.SQL(verb + " PREPARED {}").format(sql.Literal(gid)))
                    (result.committed if decided else result.rolled_back).append(gid)
                conn.execute(sql.SQL("DELETE FROM {} WHERE load_id = %s").format(decisions), [load_id])
            finally:
                conn.execute("SELECT pg_advisory_unlock(hashtext(%s))", [key])
        return result
    finally:
        conn.close()


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
    maintenance_work_mem: str = "1GB",
    timeout: str | None = None,
    progress=None,
) -> list[str]:
    """Rebuild the table's (vector) indexes with REINDEX CONCURRENTLY: searches and writes go on meanwhile.

    A failed rebuild leaves an INVALID ``<name>_ccnew`` index behind, which would
    slow every write for nothing: it is dropped before the error is raised, and
    any such leftover from an earlier run is dropped first. Returns the indexes rebuilt.
    """
    conn = new_connection(using, autocommit=True)
    try:
        drop_invalid_indexes(conn, table)
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [maintenance_work_mem])
        names = [
            i.name
            for i in rebuildable_indexes(conn, table)
            if not vector_only or i.method in ("hnsw", "ivfflat")
        ]
        building = [""]

        def report(_relname, phase, blocks_done, blocks_total, tuples_done, tuples_total):
            if progress is not None:
                done, total = (
                    (tuples_done, tuples_total) if tuples_total else (blocks_done or 0, blocks_total or 0)
                )
                progress(building[0], phase, done, total)

        with IndexProgress(using, conn.info.backend_pid, report):
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
        return names
    finally:
        conn.close()
