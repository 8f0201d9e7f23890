"""The query's vector: a text embedded by the model that made the table's vectors (its record,
``vectorstore.reembed.record``; cached by that model), or a vector the caller gave, checked against the
column before any SQL."""

from __future__ import annotations

from collections import OrderedDict
from threading import Lock
from typing import Any

import numpy as np
from django.db import models

from vectorstore import conf
from vectorstore.reembed import record
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


def _key(text: str, recorded: record.Recorded) -> tuple:
    # By the model's fingerprint: after a table moves to another model, its queries are embedded anew.
    return (recorded.fingerprint, recorded.dimensions, text)


def cached_query_vector(
    text: str, model: type[models.Model], recorded: record.Recorded | None = None
) -> tuple[np.ndarray] | None:
    """``(embed_query(text, model),)`` when the text's vector is cached, else None (the model not run)."""
    found = (recorded,) if recorded is not None else record.cached(model)
    if found is None:
        return None
    vector = query_cache.get(_key(text, found[0]))
    return (vector,) if vector is not None else None


def embed_query(
    text: str, model: type[models.Model] | None = None, recorded: record.Recorded | None = None
) -> np.ndarray:
    """The query's vector from the model that made the table's vectors (``record.embedder``: its
    ``recorded`` model, else the table's record as this process has it), cached by (model, size, text)."""
    model = model or conf.document_model()
    recorded = recorded or record.current(model)
    key = _key(text, recorded)
    vector = query_cache.get(key)
    if vector is None:
        vector = record.embedder(model, recorded=recorded).encode([text])[0]
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
