"""Tuning by the processes that serve searches, so that neither a load nor a cron job has to.

After a flush of the query log (``query_log.after_flush``), a process looks at each table it flushed at
most every CHECK_SECONDS; where the stored tuning is out of date for a serving process
(``tuning_status.serving_staleness``: no recall measured yet, which a load leaves to the site; the query
log now holds TUNE_MIN_LOGGED queries and the tuning was measured on others, or as many queries were
logged since as it was measured on; the table changed by AUTO_TUNE_CHANGE since), a background thread
tunes it: on the log once it holds enough, else on pseudo-queries with the table's model, which a
serving process has loaded for its text queries. The search that flushed never waits.

Never concurrent with itself: one thread a process, and across processes and machines a PostgreSQL
advisory lock, taken without waiting (a process that finds it held leaves the work to its holder).
Bounded in cost: ``tuning.DEFAULT_QUERIES`` queries, one exact pass over the table and a few rounds of
those queries through the index, at most once a CHECK_SECONDS per table and process.
"""

from __future__ import annotations

import logging
import threading
import time
import zlib

from django.apps import apps
from django.db import connections, models

from vectorstore import conf, tuning
from vectorstore.models import AbstractDocument
from vectorstore.tuning import status as tuning_status

logger = logging.getLogger(__name__)

CHECK_SECONDS = 300.0
LOCK_KEY = zlib.crc32(b"vectorstore.autotune")  # one advisory lock for every table: one tuning at a time

_last_check: dict[str, float] = {}
_busy = threading.Lock()
_thread: threading.Thread | None = None


def _model_for(table: str) -> type[models.Model] | None:
    for model in apps.get_models():
        if issubclass(model, AbstractDocument) and model._meta.db_table == table and not model._meta.proxy:
            return model
    return None


def tune_if_due(model: type[models.Model], using: str = "default") -> tuning.TuneReport | None:
    """Tune the table when ``tuning_status.serving_staleness`` gives a reason and no other process is
    tuning (the advisory lock); None when nothing was done."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_try_advisory_lock(%s)", [LOCK_KEY])
        if not cursor.fetchone()[0]:
            return None
    try:
        reason = tuning_status.serving_staleness(model, using)
        if reason is None:
            return None
        report = tuning.tune(model, using=using)  # the log once it holds enough, else pseudo-queries
        logger.info("re-tuned %s (%s): %s", model._meta.db_table, reason, report.summary())
        return report
    finally:
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_unlock(%s)", [LOCK_KEY])


def after_flush(tables: set[str]) -> None:
    """The query log's hook: start a background re-tune of the flushed tables whose check is due."""
    global _thread
    if not conf.auto_tune():
        return
    now = time.monotonic()
    due = sorted(t for t in tables if now - _last_check.get(t, -CHECK_SECONDS) >= CHECK_SECONDS)
    if not due or not _busy.acquire(blocking=False):
        return
    for table in due:
        _last_check[table] = now
    _thread = threading.Thread(target=_run, args=(due,), name="vectorstore-autotune", daemon=True)
    _thread.start()


def _run(tables: list[str]) -> None:
    try:
        for table in tables:
            model = _model_for(table)
            if model is not None:
                tune_if_due(model)
    except Exception:  # logged: a failed re-tune leaves the stored tuning as it was
        logger.warning("re-tuning on the query log failed", exc_info=True)
    finally:
        connections.close_all()  # this thread's own connections
        _busy.release()


def wait(timeout: float | None = None) -> bool:
    """Wait for this process's re-tune in progress, if any; True when none is left running."""
    thread = _thread
    if thread is not None:
        thread.join(timeout)
        return not thread.is_alive()
    return True


def forget() -> None:
    """Check every table again at the next flush (tests)."""
    wait()
    _last_check.clear()
