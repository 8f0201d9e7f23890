"""Parallel COPY: several streams into one table, committed all or nothing by two-phase commit,
and the recovery of loads whose process died between PREPARE and the last COMMIT PREPARED."""

from __future__ import annotations

import contextlib
import queue
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from vectorstore.loading.pgcopy import Target, new_connection
from vectorstore.models import LoadDecision


class ParallelCopyUnavailable(RuntimeError):
    """The server cannot make several COPY streams one transaction (no prepared transactions)."""


def parallel_copy(
    using: str,
    target: Target,
    batches: Iterable[Sequence[Sequence[Any]]],
    workers: int,
    on_batch: Callable[[int], Any] | None = None,
) -> int:
    """COPY batches into the table over ``workers`` connections at once, committed all or nothing.

    pgvector's HNSW index takes concurrent inserts, so on a populated, indexed
    table several streams build the index in parallel. Each stream is its own
    transaction; two-phase commit (PREPARE TRANSACTION, then COMMIT PREPARED once
    every stream is prepared) keeps the load atomic: if any stream fails, all
    are rolled back.
    """
    # The owner connection holds a session advisory lock for as long as this load lives, so
    # recover_prepared_loads() can tell its prepared transactions from those of a dead load.
    owner = new_connection(using, autocommit=True)
    conns: list[psycopg.Connection] = []
    try:
        limit = int(owner.execute("SHOW max_prepared_transactions").fetchone()[0])
        if limit < workers:
            raise ParallelCopyUnavailable(
                f"{workers} workers need the server's max_prepared_transactions >= {workers} (it is {limit}),"
                " so that their streams commit as one transaction; use workers=1 or raise the setting"
            )
        decisions = _decision_table()
        if owner.execute("SELECT to_regclass(%s)", [decisions.as_string(owner)]).fetchone()[0] is None:
            raise ParallelCopyUnavailable(
                "workers > 1 needs the vectorstore_loaddecision table on this database: run migrate"
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
