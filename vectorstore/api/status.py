"""The health check: what the database says about itself (versions, sizes), each replica's state and the
stored search tuning, as ``GET /api/health`` answers it."""

from __future__ import annotations

from typing import Any

from django.db import DatabaseError, connections
from ninja import Field, Schema, Status

from vectorstore import conf, replicas
from vectorstore.freshness import backlog
from vectorstore.tuning import status as tuning_status


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


class ReplicaOut(Schema):
    name: str
    reachable: bool
    in_recovery: bool | None = None
    lag_bytes: int | None = Field(None, description="the primary's WAL position less the replica's replay")
    lag_seconds: float | None = Field(None, description="0 when it has replayed all the primary had written")
    serving: bool = Field(description="takes reads now (reachable, a replica, lag within REPLICA_MAX_LAG)")
    error: str | None = None


class TuningOut(Schema):
    index: str
    setting: str = Field(description="hnsw.ef_search, ivfflat.probes or rerank")
    value: int
    k: int
    recall_estimate: float | None = Field(
        description="recall@k measured at the setting: an estimate (null: none was measured on this table)"
    )
    recall_low: float | None = Field(None, description="the estimate's 90% lower bound")
    query_model: str = Field(description="the queries it was measured on: log or pseudo; none: not measured")
    queries: int
    target_recall: float
    rows: int
    tuned_at: str


class FreshnessOut(Schema):
    stale: int = Field(
        description="rows whose vector does not follow their text yet (the worker embeds them)"
    )
    due: int = Field(description="of those, due to be embedded now")
    failed: int = Field(description="failed to embed MAX_ATTEMPTS times: waiting until their text changes")
    oldest_seconds: float | None = Field(None, description="the oldest stale row's age")


class HealthOut(Schema):
    status: str
    postgres: str | None = None
    pgvector: str | None = None
    documents: int | None = None
    error: str | None = None
    replicas: list[ReplicaOut] | None = None
    tuning: list[TuningOut] | None = Field(None, description="what tune_search stored for the document table")
    freshness: FreshnessOut | None = Field(None, description="the embedding worker's backlog")


def health(request):
    """Answers 200 with PostgreSQL's and pgvector's versions (and each replica's state, where there are
    replicas: one down is reported, not an outage), or 503 when the primary cannot be reached."""
    try:
        body = {
            "status": "ok",
            **server_status(),
            "tuning": tuning_status.stored_estimates(conf.document_model()),
            "freshness": backlog(conf.document_model()),
        }
    except DatabaseError as exc:
        return Status(503, {"status": "unavailable", "error": str(exc).strip().splitlines()[0]})
    if replicas.configured():
        body["replicas"] = replicas.report()
    return Status(200, body)
