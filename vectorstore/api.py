"""The app's REST API: a django-ninja Router that a site mounts (see vectorstore/urls.py)."""

from __future__ import annotations

from django.db import DatabaseError
from ninja import Router, Schema, Status

from vectorstore.status import server_status

router = Router(tags=["vectorstore"])


class HealthOut(Schema):
    status: str
    postgres: str | None = None
    pgvector: str | None = None
    documents: int | None = None
    error: str | None = None


@router.get("/health", response={200: HealthOut, 503: HealthOut}, summary="Database and pgvector status")
def health(request):
    """Answers 200 with PostgreSQL's and pgvector's versions, or 503 when the database cannot be reached."""
    try:
        return Status(200, {"status": "ok", **server_status()})
    except DatabaseError as exc:
        return Status(503, {"status": "unavailable", "error": str(exc).strip().splitlines()[0]})
