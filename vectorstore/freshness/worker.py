"""The embedding worker: stale rows (marked by the freshness triggers) embedded again, with their passages,
in batches, by any number of workers on any number of machines sharing one backlog.

One batch (``embed_batch``), the unit a site's own task queue can run too:

1. **take** up to ``batch_size`` due rows of the queue, each under a session-level advisory lock taken
   without waiting (``pg_try_advisory_lock``): another worker skips them, and the locks go with this
   worker's connection, so a worker killed at any moment leaves nothing claimed: the next run takes
   them at once. No row of the document table is locked while the model runs, so the site's writes
   never wait for a worker;
2. **read** their texts (and a hash of each), then **embed** them, and their passages, outside any
   transaction;
3. **write**, in one transaction: each vector ``WHERE`` the text still hashes as it did when read. A
   row whose text changed meanwhile is left alone: the trigger marked it again, and a later batch
   embeds the new text (never the old text's vector on the new one). The write of a new vector clears
   the mark itself (the trigger); an equal vector, or a row deleted meanwhile, has its mark removed
   here, if it was not marked again since. A text that fails to embed is retried after a backoff
   (``RETRY_SECONDS`` doubled each time) and, after ``MAX_ATTEMPTS``, reported and left until its text
   changes: it never blocks the rest.
"""

from __future__ import annotations

import hashlib
import logging
import os
import socket
import time
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg
from django.db import models, transaction
from django.utils import timezone
from psycopg import sql

from vectorstore import conf, passages, pg
from vectorstore.freshness.triggers import CHANNEL, QUEUE
from vectorstore.reembed import record

logger = logging.getLogger(__name__)

LOCK_CLASS = zlib.crc32(b"vectorstore.freshness") & 0x7FFFFFFF  # the advisory locks' first key
MAX_ATTEMPTS = 5
RETRY_SECONDS = 10.0  # after a failure: 10, 20, 40, 80 s, then reported
FAILED_UNTIL = "9999-12-31 00:00:00+00"  # next_try of a text that failed for good: until its text changes


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass
class BatchReport:
    """What one batch did."""

    taken: int = 0
    embedded: int = 0
    changed: int = 0  # texts changed while they were embedded: marked again, left for a later batch
    gone: int = 0  # rows deleted since they were marked
    failed: int = 0
    passages: int = 0
    seconds: float = 0.0
    errors: list[str] = field(default_factory=list)

    def add(self, other: BatchReport) -> None:
        for name in ("taken", "embedded", "changed", "gone", "failed", "passages", "seconds"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.errors += other.errors

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["rows_per_s"] = round(self.embedded / self.seconds, 1) if self.seconds else 0.0
        return out


def _take(conn: Any, table: str, batch_size: int) -> list[tuple[int, int, Any]]:
    """Up to ``batch_size`` due rows of the queue, each locked for this session: (id, row_id, marked_at).
    Twice as many candidates are read, and those locked beyond the batch released at once."""
    rows = conn.execute(
        sql.SQL(
            "SELECT id, row_id, marked_at FROM (SELECT id, row_id, marked_at FROM {q}"
            " WHERE db_table = %s AND next_try <= now() ORDER BY marked_at LIMIT %s) c"
            " WHERE pg_try_advisory_lock(%s, (id %% 2147483647)::int)"
        ).format(q=sql.Identifier(QUEUE)),
        [table, 2 * batch_size, LOCK_CLASS],
    ).fetchall()
    _release(conn, rows[batch_size:])
    return rows[:batch_size]


def _release(conn: Any, taken: list[tuple[int, int, Any]]) -> None:
    """The rows' advisory locks released, in one statement."""
    if taken:
        conn.execute(
            "SELECT pg_advisory_unlock(%s, (id %% 2147483647)::int) FROM unnest(%s::bigint[]) AS id",
            [LOCK_CLASS, [queue_id for queue_id, _, _ in taken]],
        )


def _same_model(conn: Any, model: type[models.Model], using: str, recorded: Any) -> bool:
    """In the write's transaction: the table locked against a swap (ROW EXCLUSIVE, as the writes take it;
    reembed's swap takes ACCESS EXCLUSIVE), then its record still at the version the batch embedded with."""
    conn.execute(sql.SQL("LOCK TABLE {} IN ROW EXCLUSIVE MODE").format(sql.Identifier(model._meta.db_table)))
    try:
        record.hold(model, using, recorded)
    except record.ModelChanged:
        return False
    return True


def text_digest(text: str) -> str:
    return hashlib.md5(text.encode("utf-8")).hexdigest()  # a change detector, as md5() in SQL


def embed_batch(
    model: type[models.Model] | None = None,
    *,
    batch_size: int = 64,
    using: str = "default",
    embedder: Any = None,
    worker: str | None = None,
) -> BatchReport:
    """Embed one batch of the model's stale rows (see the module's docstring); an empty report when none
    is due."""
    started = time.perf_counter()
    model = model or conf.document_model()
    meta = model._meta
    names = {
        "t": sql.Identifier(meta.db_table),
        "pk": sql.Identifier(meta.pk.column),
        "text": sql.Identifier(meta.get_field("text").column),
        "v": sql.Identifier(meta.get_field("embedding").column),
        "q": sql.Identifier(QUEUE),
    }
    report = BatchReport()
    conn = pg.django_connection(using)
    with transaction.atomic(using=using):
        taken = _take(conn, meta.db_table, batch_size)
    if not taken:
        return report
    try:
        report.taken = len(taken)
        read = sql.SQL("SELECT {pk}, {text} FROM {t} WHERE {pk} = ANY(%s)").format(**names)
        found = dict(conn.execute(read, [[row_id for _, row_id, _ in taken]]).fetchall())
        live = [(queue_id, row_id, marked) for queue_id, row_id, marked in taken if found.get(row_id)]
        embedder = embedder or record.embedder(model, using)
        vectors, failed_at = _embed(embedder, [found[row_id] for _, row_id, _ in live])
        failures = {live[i][1]: message for i, message in failed_at.items()}
        parts = _passages(model, embedder, live, vectors, found, failures)
        write = sql.SQL("UPDATE {t} SET {v} = %s WHERE {pk} = %s AND md5({text}) = %s RETURNING 1").format(
            **names
        )
        forget = sql.SQL("DELETE FROM {q} WHERE id = %s AND marked_at = %s").format(**names)
        done = [(q, r, m, v) for (q, r, m), v in zip(live, vectors, strict=True) if r not in failures]
        with transaction.atomic(using=using):
            recorded = getattr(embedder, "recorded", None)  # an embedder of the table's record
            if recorded is not None and not _same_model(conn, model, using, recorded):
                return report  # reembed swapped the table's vectors: the rows stay marked, for its new model
            # One pipelined round trip for the batch's writes (psycopg's own cursor: server-side binding
            # sends each vector in pgvector's binary format, where Django's would quote it as bytea).
            with psycopg.Cursor(conn) as cursor:
                cursor.executemany(
                    write,
                    [(pg.binary_vector(v), r, text_digest(found[r])) for _, r, _, v in done],
                    returning=True,
                )
                written = []
                for _ in done:
                    written.append(cursor.fetchone() is not None)
                    cursor.nextset()
                # A new vector cleared the mark (the trigger), an equal one did not: this does, unless the
                # row was marked again since. A row whose text changed meanwhile keeps its new mark.
                cursor.executemany(
                    forget, [(q, m) for (q, _, m, _), ok in zip(done, written, strict=True) if ok]
                )
            for (_, row_id, _, _), ok in zip(done, written, strict=True):
                if not ok:
                    report.changed += 1  # embedded again later, with its new text
                    continue
                report.embedded += 1
                if row_id in parts:
                    split, part_vectors = parts[row_id]
                    # Its passages are keyed by the primary key alone: no need to read the row.
                    passages.replace_passages(model(pk=row_id), split, part_vectors, using)
                    report.passages += len(split)
            for queue_id, row_id, marked in taken:
                if not found.get(row_id):
                    report.gone += 1
                    conn.execute(forget, [queue_id, marked])
                elif row_id in failures:
                    report.failed += 1
                    report.errors.append(f"{meta.db_table} #{row_id}: {failures[row_id]}")
                    _retry_later(conn, queue_id, marked, failures[row_id])
            _heartbeat(worker or worker_name(), report.embedded, using)
    finally:
        _release(conn, taken)
    report.seconds = time.perf_counter() - started
    return report


def _passages(
    model: type[models.Model], embedder: Any, live: list, vectors: list, found: dict, failures: dict
) -> dict[int, tuple]:
    """For a model that keeps passages: each embedded row's passages and their vectors, by row id (a
    passage that cannot be embedded fails its document)."""
    parts: dict[int, tuple] = {}
    if not passages.enabled(model):
        return parts
    for (_, row_id, _), vector in zip(live, vectors, strict=True):
        if row_id in failures:
            continue
        try:
            (split,) = passages.split_texts([found[row_id]], embedder)
            (part_vectors,) = passages.passage_vectors([split], [vector], embedder)
            parts[row_id] = (split, part_vectors)
        except Exception as exc:
            failures[row_id] = f"{type(exc).__name__}: {exc}"
    return parts


def _embed(embedder: Any, texts: list[str]) -> tuple[list[np.ndarray | None], dict[int, str]]:
    """Each text's vector (None where it failed) and the failures' messages by position: the batch at
    once, else one text at a time to find those at fault."""
    try:
        return list(embedder.encode(texts)), {}
    except Exception:  # one bad text must not fail the others: try each alone
        vectors: list[np.ndarray | None] = []
        failures: dict[int, str] = {}
        for i, text in enumerate(texts):
            try:
                vectors.append(embedder.encode([text])[0])
            except Exception as exc:
                vectors.append(None)
                failures[i] = f"{type(exc).__name__}: {exc}"
        return vectors, failures


def _retry_later(conn: Any, queue_id: int, marked_at: Any, error: str) -> None:
    """A failed text: tried again after RETRY_SECONDS x 2^(attempts - 1), until MAX_ATTEMPTS; then it
    waits (reported by ``backlog`` and the worker's summary) until its text changes."""
    conn.execute(
        sql.SQL(
            "UPDATE {q} SET attempts = attempts + 1, error = %s, next_try = CASE WHEN attempts + 1 >= %s"
            " THEN %s::timestamptz ELSE now() + make_interval(secs => %s * power(2, attempts)) END"
            " WHERE id = %s AND marked_at = %s"
        ).format(q=sql.Identifier(QUEUE)),
        [error[:2000], MAX_ATTEMPTS, FAILED_UNTIL, RETRY_SECONDS, queue_id, marked_at],
    )


def _heartbeat(name: str, rows: int, using: str) -> None:
    from django.apps import apps

    worker = apps.get_model("vectorstore", "EmbedWorker")
    manager = worker._default_manager.using(using)
    updated = manager.filter(name=name).update(last_seen=timezone.now(), rows=models.F("rows") + rows)
    if not updated:
        manager.create(name=name, last_seen=timezone.now(), rows=rows)


def run(
    model: type[models.Model] | None = None,
    *,
    batch_size: int = 64,
    once: bool = False,
    max_seconds: float | None = None,
    idle_seconds: float = 30.0,
    using: str = "default",
    progress: bool | None = None,
) -> BatchReport:
    """Batches until the backlog is empty (``once``) or ``max_seconds`` pass; between them, waits for the
    triggers' NOTIFY (at most ``idle_seconds``, then looks again) on a connection of its own. Progress on
    a terminal: rows embedded, rows/s and, against the backlog, an ETA."""
    from vectorstore.freshness import backlog
    from vectorstore.progress import make_bar

    model = model or conf.document_model()
    total = BatchReport()
    started = time.monotonic()
    name = worker_name()
    listener = None
    bar = make_bar(backlog(model, using)["due"], f"embed {model._meta.db_table}", enabled=progress)
    _heartbeat(name, 0, using)  # seen from its start: the system check counts it
    try:
        while max_seconds is None or time.monotonic() - started < max_seconds:
            batch = embed_batch(model, batch_size=batch_size, using=using, worker=name)
            total.add(batch)
            bar.update(batch.embedded)
            if batch.taken:
                continue
            if once:
                break
            if listener is None:
                listener = pg.new_connection(using, autocommit=True)
                listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            left = (
                idle_seconds if max_seconds is None else max(0.0, max_seconds - (time.monotonic() - started))
            )
            for _ in listener.notifies(timeout=min(idle_seconds, left), stop_after=1):
                pass
            bar.total = bar.n + backlog(model, using)["due"]
    finally:
        bar.close()
        if listener is not None:
            listener.close()
    return total
