"""What a search returns: ranked hits that are rows until a model instance is asked for."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from django.db import models

STALE = "vector_stale"  # the hit's column saying its vector is stale


@dataclass
class Hit:
    """One result: rank, score and distance, the stored fields in ``values`` (every concrete field but the
    vector and the tsvector), and ``document``, a model instance built from them on first use."""

    rank: int
    score: float
    distance: float | None
    values: dict[str, Any]
    model: type[models.Model] = field(repr=False)
    using: str = field(default="default", repr=False)
    # Searching a model that keeps passages: the best passage's ordinal, span and text
    # (``{"ordinal", "start", "end", "text"}``); None otherwise.
    passage: dict[str, Any] | None = None

    @property
    def stale(self) -> bool:
        """Whether the hit's vector is stale: its text changed since (or it was written without one), and
        the embedding worker has not embedded it yet (``vectorstore.freshness``)."""
        return bool(self.values.get(STALE))

    @cached_property
    def document(self) -> models.Model:
        """The hit as a model instance (its vector and tsvector deferred), with ``distance`` and ``score``."""
        # By name, in the model's field order (from_db's): a search's own columns (MMR's vector, the stale
        # flag) need not sit where the model's fields do.
        names = [f.attname for f in self.model._meta.concrete_fields if f.attname in self.values]
        document = self.model.from_db(self.using, names, [self.values[n] for n in names])
        document.distance = self.distance
        document.score = self.score
        document.passage = self.passage
        return document


@dataclass
class SearchResult:
    hits: list[Hit]
    took_ms: float
    mode: str
    metric: str
    exact: bool = False  # answered by an exact scan after the index scan came back short
    details: dict[str, Any] = field(default_factory=dict)
    database: str = "default"  # the database alias that answered (a replica, with the replica router)
