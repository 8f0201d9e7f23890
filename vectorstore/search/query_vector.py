"""The query's vector: a text embedded by the document model's own Embedder (cached), or a vector the
caller gave, checked against the column before any SQL."""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Any

import numpy as np
from django.db import models

from vectorstore import conf
from vectorstore.embedding import Embedder
from vectorstore.search.filters import SearchError


class _LRU:
    """A small thread-safe LRU of query vectors: repeated queries skip the model."""

    def __init__(self, size: int = 1024) -> None:
        self.size = size
        self.data: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self.lock = Lock()
        self.hits = self.misses = 0

    def get(self, key: tuple) -> np.ndarray | None:
        with self.lock:
            value = self.data.get(key)
            if value is None:
                self.misses += 1
                return None
            self.data.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key: tuple, value: np.ndarray) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


query_cache = _LRU()


def _key(text: str, model: type[models.Model]) -> tuple:
    name = getattr(model, "embedding_model", None) or conf.model_name()
    return (name, model._meta.get_field("embedding").dimensions, text)


def cached_query_vector(text: str, model: type[models.Model]) -> tuple[np.ndarray] | None:
    """``(embed_query(text, model),)`` when the text's vector is cached, else None (the model not run)."""
    vector = query_cache.get(_key(text, model))
    return (vector,) if vector is not None else None


def embed_query(text: str, model: type[models.Model] | None = None) -> np.ndarray:
    """The query's vector from the document model's Embedder (``Embedder.for_model``), cached by
    (embedding model, dimensions, text)."""
    model = model or conf.document_model()
    key = _key(text, model)
    vector = query_cache.get(key)
    if vector is None:
        vector = Embedder.for_model(model).encode([text])[0]
        vector.setflags(write=False)
        query_cache.put(key, vector)
    return vector


def check_vector(vector: Any, dimensions: int, name: str = "vector") -> np.ndarray:
    """``vector`` as float32 of the column's size, or SearchError naming ``name``."""
    try:
        with np.errstate(over="ignore"):  # beyond float32's range becomes inf, refused below
            array = np.asarray(vector, dtype=np.float32)
    except (TypeError, ValueError, OverflowError) as exc:
        raise SearchError(name, "must be a list of numbers") from exc
    if array.ndim != 1:
        raise SearchError(name, "must be a flat list of numbers")
    if len(array) != dimensions:
        raise SearchError(name, f"has {len(array)} numbers; the vector column holds {dimensions}")
    if not np.isfinite(array).all():
        raise SearchError(name, "holds NaN or infinity, or a number beyond float32's range")
    return array
