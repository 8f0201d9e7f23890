"""django-ninja schemas of the REST API."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from ninja import Field, Schema
from ninja.orm import register_field
from pydantic import field_validator

from vectorstore.limits import (
    EF_SEARCH_RANGE,
    ITERATIVE_SCANS,
    MAX_DIMENSIONS,
    MAX_K,
    MAX_QUERY_CHARS,
    MAX_TEXT,
    METRICS,
    PROBES_RANGE,
    RERANK_RANGE,
    SEARCH_MODES,
)
from vectorstore.validation import storable_json, storable_text

# pgvector's VectorField reads as a list of floats wherever ninja builds a schema from a model.
register_field("VectorField", list[float])

# Literal[("a", "b")] is Literal["a", "b"]: the vocabularies stay written once, in limits.py.
Mode = Literal[SEARCH_MODES]
Metric = Literal[METRICS]
IterativeScan = Literal[ITERATIVE_SCANS]


class MMRIn(Schema):
    lambda_mult: float = Field(
        0.5, ge=0, le=1, description="1: plain relevance order; towards 0: ever more diverse results"
    )
    fetch_k: int | None = Field(
        None, ge=1, le=MAX_K, description="candidates to pick from (at least k; default max(20, k))"
    )


class HybridIn(Schema):
    text_weight: float | None = Field(
        None,
        ge=0,
        le=10,
        description="weight of a text match holding every word (the vector ranking's is 1); left out, it"
        " adapts to how many documents hold every word",
    )
    partial_weight: float | None = Field(
        None, ge=0, le=10, description="weight of a text match holding only some of the words"
    )
    rrf_k: int | None = Field(None, ge=0, le=10_000, description="reciprocal rank fusion's rank constant")
    vector_k: int | None = Field(None, ge=1, le=MAX_K, description="candidates of the vector side (>= k)")
    text_k: int | None = Field(None, ge=1, le=MAX_K, description="candidates of the text side (>= k)")


# The body the interactive documentation's "Try it out" sends: one of query and vector (an example built
# from the fields alone holds both, which the API refuses with a 422).
SEARCH_EXAMPLE = {"query": "tariffs on imported goods", "k": 5, "mode": "hybrid"}


class SearchIn(Schema):
    model_config = {"json_schema_extra": {"example": SEARCH_EXAMPLE, "examples": [SEARCH_EXAMPLE]}}

    query: str | None = Field(None, max_length=MAX_QUERY_CHARS, description="text to search for")
    # pgvector's limit: a longer vector is refused before it is even checked.
    vector: list[float] | None = Field(None, max_length=MAX_DIMENSIONS, description="or a query vector")
    k: int = Field(10, ge=1, le=MAX_K)
    filters: dict[str, Any] | None = Field(
        None,
        description="category, external_id, created_at, id, or any metadata key; operators "
        "$eq $ne $lt $lte $gt $gte $between $in $nin $exists $like $ilike $contains, and $and $or $not",
        examples=[{"category": "Whig", "year": {"$lt": 1850}}],
    )
    mode: Mode = "vector"
    metric: Metric | None = None
    ef_search: int | None = Field(
        None, ge=EF_SEARCH_RANGE[0], le=EF_SEARCH_RANGE[1], description="hnsw.ef_search for this query"
    )
    probes: int | None = Field(
        None, ge=PROBES_RANGE[0], le=PROBES_RANGE[1], description="ivfflat.probes for this query"
    )
    rerank: int | None = Field(
        None,
        ge=RERANK_RANGE[0],
        le=RERANK_RANGE[1],
        description="through a quantized index: candidates re-ranked by the full vectors, as a multiple of k",
    )
    iterative_scan: IterativeScan | None = None
    hybrid: HybridIn | None = Field(
        None, description="mode hybrid's fusion; each option has a measured default"
    )
    mmr: MMRIn | None = Field(
        None, description="pick the k results by maximal marginal relevance among fetch_k candidates"
    )


class DocumentOut(Schema):
    id: int
    external_id: str | None
    text: str
    category: str
    metadata: dict[str, Any]
    created_at: datetime


class PassageOut(Schema):
    ordinal: int = Field(description="the passage's place in the document, from 0")
    start: int = Field(description="where it starts in the document's text (characters)")
    end: int = Field(description="where it ends: text[start:end] is the passage")
    text: str | None = None


class HitOut(DocumentOut):
    rank: int
    score: float
    distance: float | None
    passage: PassageOut | None = Field(
        None, description="a model that keeps passages: the passage that matched (the document's best)"
    )
    stale: bool = Field(
        False,
        description="its vector is stale: its text changed since (by any path) and the embedding worker has"
        " not embedded it yet",
    )


class SearchOut(Schema):
    results: list[HitOut]
    took_ms: float
    mode: Mode
    metric: Metric
    exact: bool = Field(description="answered by an exact scan after the index came back short")
    database: str = Field(
        "default", description="the database that answered: 'default' (the primary) or a replica's alias"
    )


class DocumentIn(Schema):
    text: str = Field(min_length=1, max_length=MAX_TEXT)
    external_id: str | None = Field(None, min_length=1, max_length=255)
    category: str = Field("", max_length=255)
    metadata: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None

    @field_validator("text", "external_id", "category")
    @classmethod
    def _storable_text(cls, value: str | None) -> str | None:
        return value if value is None else storable_text(value)

    @field_validator("metadata")
    @classmethod
    def _storable_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        return storable_json(value)


class CreatedOut(Schema):
    ids: list[int]
    took_ms: float


class PageOut(Schema):
    items: list[DocumentOut]
    limit: int
    offset: int
    next_offset: int | None


class ErrorOut(Schema):
    detail: str | list[dict[str, Any]]


def _with_fields(model: type, base: type[Schema], suffix: str) -> type[Schema]:
    """``base`` plus the model's own fields (a host model's ``source_url``, say), typed, bounded and
    required or optional as the model declares them (ninja's schema from the model's fields)."""
    from ninja.orm import create_schema

    from vectorstore.loading.writes import extra_fields

    extra = extra_fields(model)
    if not extra:
        return base
    return create_schema(model, name=f"{model.__name__}{suffix}", fields=extra, base_class=base)


def document_in_for(model: type) -> type[DocumentIn]:
    """What ``POST /api/documents`` takes for this model: DocumentIn and the model's own fields."""
    return _with_fields(model, DocumentIn, "In")


def document_out_for(model: type) -> type[DocumentOut]:
    """What the API answers for one of this model's documents: DocumentOut and the model's own fields."""
    return _with_fields(model, DocumentOut, "Out")


def page_out_for(model: type) -> type[PageOut]:
    item = document_out_for(model)
    if item is DocumentOut:
        return PageOut
    return type(f"{model.__name__}PageOut", (PageOut,), {"__annotations__": {"items": list[item]}})


def search_out_for(model: type) -> type[SearchOut]:
    hit = _with_fields(model, HitOut, "HitOut")
    if hit is HitOut:
        return SearchOut
    return type(f"{model.__name__}SearchOut", (SearchOut,), {"__annotations__": {"results": list[hit]}})
