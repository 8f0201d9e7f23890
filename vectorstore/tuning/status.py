"""What a table's stored tuning says: whether it is out of date and why (``staleness`` for
``tune_search --if-stale``, ``serving_staleness`` for the tuning a serving process does), and its
recall shown as an estimate beside the queries it was measured on (``vector_index list``,
``/api/health``)."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from django.db import models
from django.utils import timezone

from vectorstore import conf, pg
from vectorstore.models import SearchTuning
from vectorstore.search import query_log
from vectorstore.tuning import AUTO_TUNE_CHANGE, AUTO_TUNE_MIN_ROWS, _vector_index
from vectorstore.tuning import queries as tuning_queries
from vectorstore.validation import InputError

STALE_DAYS = 7.0  # tune_search --if-stale re-tunes a table tuned longer ago than this


def _stored(model: type[models.Model], using: str) -> SearchTuning | bool | None:
    """The stored tuning of the index searches use; False where the table has no vector index."""
    try:
        index, _ = _vector_index(model, using, conf.distance())
    except InputError:
        return False
    return SearchTuning.objects.using(using).filter(index_name=index.name).first()


def _changed(model: type[models.Model], stored: SearchTuning, using: str) -> str | None:
    rows = pg.count_rows(pg.django_connection(using), model._meta.db_table)
    if abs(rows - stored.rows) >= AUTO_TUNE_CHANGE * max(stored.rows, 1):
        return f"the table holds {rows:,} rows, {stored.rows:,} when tuned"
    return None


def _log_reason(model: type[models.Model], stored: SearchTuning, using: str) -> str | None:
    """The query log's reasons, once it holds TUNE_MIN_LOGGED queries: a tuning measured on other
    queries, or as many queries logged since the tuning as it was measured on (a fixed multiple of the
    count would hold forever once the log passed it: it keeps QUERY_LOG_SIZE, a tuning reads
    DEFAULT_QUERIES)."""
    logged = query_log.recent(model, using)
    count = logged.count()
    if count < max(1, conf.tune_min_logged()):
        return None
    if stored.query_model == "none":
        return f"{count} logged queries now, no recall measured when tuned"
    if stored.query_model != "log":
        return f"{count} logged queries now, tuned on {stored.query_model} queries"
    since = logged.filter(created_at__gt=stored.tuned_at).count()
    if since >= stored.queries:
        return f"{since} queries logged since it was tuned on {stored.queries}"
    return None


def serving_staleness(model: type[models.Model], using: str = "default") -> str | None:
    """Why a process serving searches should tune the table now (vectorstore.tuning.autotune), or None: no
    recall measured yet (a load leaves that to the site) and pseudo-queries or the log can; the query
    log's reasons (``_log_reason``); the table changed by AUTO_TUNE_CHANGE since a measured tuning. Not a
    table below AUTO_TUNE_MIN_ROWS, nor one with nothing to measure with."""
    stored = _stored(model, using)
    if stored is False or not tuning_queries.measurable(model, using):
        return None
    if pg.count_rows(pg.django_connection(using), model._meta.db_table) < AUTO_TUNE_MIN_ROWS:
        return None
    if stored is None:
        return "never tuned"
    if stored.query_model in ("none", "noise"):
        return "no recall measured on this table yet"
    return _log_reason(model, stored, using) or _changed(model, stored, using)


def staleness(model: type[models.Model], using: str = "default") -> str | None:
    """Why the table's stored tuning is out of date (never tuned; the table changed by AUTO_TUNE_CHANGE;
    no recall measured and pseudo-queries can; the query log's reasons, ``_log_reason``; older than
    STALE_DAYS), or None when it is current."""
    stored = _stored(model, using)
    if stored is False:
        return None
    if stored is None:
        return "never tuned"
    changed = _changed(model, stored, using)
    if changed:
        return changed
    logged = query_log.recent(model, using).count()
    unmeasured = stored.query_model in ("none", "noise") and logged < conf.tune_min_logged()
    if unmeasured and tuning_queries.model_stack_installed():
        return (
            "no recall measured on this table (tuned on noise queries by an earlier version)"
            if stored.query_model == "noise"
            else "no recall measured on this table; pseudo-queries from the documents can measure it"
        )
    reason = _log_reason(model, stored, using)
    if reason:
        return reason
    if timezone.now() - stored.tuned_at > timedelta(days=STALE_DAYS):
        return f"tuned {stored.tuned_at:%Y-%m-%d}, more than {STALE_DAYS:.0f} days ago"
    return None


def stored_estimates(model: type[models.Model], using: str = "default") -> list[dict[str, Any]]:
    """What tune_search stored for the model's table, each recall an estimate beside its query model (for
    ``vector_index list`` and ``/api/health``)."""
    out = []
    for t in SearchTuning.objects.using(using).filter(db_table=model._meta.db_table).order_by("index_name"):
        setting, value = (
            ("rerank", t.rerank)
            if t.rerank
            else ("hnsw.ef_search", t.ef_search)
            if t.method == "hnsw"
            else ("ivfflat.probes", t.probes)
        )
        out.append(
            {
                "index": t.index_name,
                "setting": setting,
                "value": value,
                "k": t.k,
                "recall_estimate": None if t.recall is None else round(t.recall, 4),
                "recall_low": None if t.recall_low is None else round(t.recall_low, 4),
                "query_model": t.query_model,
                "queries": t.queries,
                "target_recall": t.target_recall,
                "rows": t.rows,
                "tuned_at": t.tuned_at.isoformat(),
            }
        )
    return out


def describe(estimate: dict[str, Any]) -> str:
    """One line for a stored estimate: the setting, the recall estimate and what it was measured on."""
    e = estimate
    if e["recall_estimate"] is None:
        return (
            f"{e['setting']} {e['value']}: no recall measured on this table ({e['rows']:,} rows,"
            f" {e['tuned_at'][:10]})"
        )
    low = f", >= {e['recall_low']:.3f}" if e["recall_low"] is not None else ""
    return (
        f"{e['setting']} {e['value']}: recall@{e['k']} ~{e['recall_estimate']:.3f}"
        f"{low} (an estimate on {e['queries']} {e['query_model']} queries, {e['rows']:,} rows,"
        f" {e['tuned_at'][:10]})"
    )
