"""Distances between the query and a row: pgvector-python's functions by the app's metric names, the
``ORDER BY distance LIMIT k`` shape the vector indexes serve, and a hit's score from its distance."""

from __future__ import annotations

import numpy as np
from django.db import models
from pgvector.django import CosineDistance, L2Distance, MaxInnerProduct

# pgvector-python's distance functions, by the names of limits.METRICS.
METRICS = {"cosine": CosineDistance, "l2": L2Distance, "inner_product": MaxInnerProduct}


def distance_expression(metric: str, vector: np.ndarray, field_name: str = "embedding") -> models.Func:
    return METRICS[metric](field_name, vector)


def vector_queryset(queryset: models.QuerySet, vector: np.ndarray, metric: str, k: int) -> models.QuerySet:
    """``ORDER BY distance LIMIT k``: the shape pgvector's indexes serve."""
    return queryset.annotate(distance=distance_expression(metric, vector)).order_by("distance")[:k]


def score_of(metric: str, distance: float) -> float:
    """Higher is better: cosine similarity, the inner product, or 1 / (1 + L2 distance)."""
    if metric == "cosine":
        return 1.0 - distance
    if metric == "inner_product":
        return -distance  # pgvector's <#> is the negative inner product
    return 1.0 / (1.0 + distance)
