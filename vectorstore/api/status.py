"""What the database says about itself: versions and sizes, for the health check."""

from __future__ import annotations

from typing import Any

from django.db import connections

from vectorstore import conf


def server_status(using: str = "default") -> dict[str, Any]:
    """PostgreSQL's and pgvector's versions and the document count (raises if the database is down)."""
    model = conf.document_model()
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT current_setting('server_version'),"
            " (SELECT extversion FROM pg_extension WHERE extname = 'vector')"
        )
        postgres, pgvector = cursor.fetchone()
    return {
        "postgres": postgres,
        "pgvector": pgvector,
        "documents": model.objects.using(using).count(),
    }
