"""Vectors that never go stale, whatever writes the table: the database marks a row whose text changed
without its vector (``triggers``), the embedding worker renews it and its passages (``worker``), and
what is left to do is visible (``backlog``, ``stale_flag``)."""

from __future__ import annotations

from typing import Any

from django.db import connections, models

from vectorstore.freshness.triggers import QUEUE


def backlog(model: type[models.Model], using: str = "default") -> dict[str, Any]:
    """The model's stale rows: how many, how many are due now, how many failed for good (after
    MAX_ATTEMPTS), and the oldest mark's age in seconds (None without any)."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(*) FILTER (WHERE next_try <= now()),"
            " count(*) FILTER (WHERE next_try >= '9999-12-31'),"
            " extract(epoch FROM now() - min(marked_at))"
            f" FROM {connections[using].ops.quote_name(QUEUE)} WHERE db_table = %s",
            [model._meta.db_table],
        )
        stale, due, failed, oldest = cursor.fetchone()
    return {"stale": stale, "due": due, "failed": failed, "oldest_seconds": oldest and float(oldest)}


def stale_flag(model: type[models.Model]) -> models.Exists:
    """An expression that is true on the rows of ``model`` whose vector is stale (searches' hits, the
    admin's list): one index probe a row."""
    from django.apps import apps

    queue = apps.get_model("vectorstore", "StaleVector")
    return models.Exists(
        queue.objects.filter(db_table=model._meta.db_table, row_id=models.OuterRef(model._meta.pk.attname))
    )
