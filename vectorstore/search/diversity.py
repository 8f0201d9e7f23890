"""Diverse results: maximal marginal relevance over a search's candidates."""

from __future__ import annotations

from typing import Any

import numpy as np

from vectorstore.limits import MAX_K
from vectorstore.search.filters import SearchError
from vectorstore.search.results import Hit

MMR_LAMBDA = 0.5  # maximal marginal relevance: langchain's defaults
MMR_FETCH_K = 20


def mmr_options(mmr: Any, k: int) -> tuple[float, int]:
    """``lambda_mult`` (0: most diverse .. 1: plain relevance) and ``fetch_k`` (candidates, k or more)."""
    if not isinstance(mmr, dict):
        raise SearchError("mmr", "expected an object with lambda_mult and fetch_k")
    unknown = sorted(set(mmr) - {"lambda_mult", "fetch_k"})
    if unknown:
        raise SearchError(f"mmr.{unknown[0]}", "unknown option; expected lambda_mult or fetch_k")
    lambda_mult = mmr.get("lambda_mult", MMR_LAMBDA)
    if isinstance(lambda_mult, bool) or not isinstance(lambda_mult, int | float) or not 0 <= lambda_mult <= 1:
        raise SearchError("mmr.lambda_mult", "must be a number from 0 to 1")
    fetch_k = mmr.get("fetch_k", max(MMR_FETCH_K, k))
    if isinstance(fetch_k, bool) or not isinstance(fetch_k, int) or not k <= fetch_k <= MAX_K:
        raise SearchError("mmr.fetch_k", f"must be an integer from k ({k}) to {MAX_K}")
    return float(lambda_mult), fetch_k


def mmr_select(relevance: np.ndarray, vectors: np.ndarray, k: int, lambda_mult: float) -> list[int]:
    """Maximal marginal relevance (Carbonell and Goldstein, 1998): repeatedly take the candidate that
    maximizes ``lambda_mult * relevance - (1 - lambda_mult) * (its greatest cosine similarity to those
    taken)``. ``relevance`` is rescaled to [0, 1] over the candidates, so that it and the similarity
    share a scale whatever the metric or mode (hybrid's fused scores are ~0.03); the first pick is the
    most relevant, and lambda_mult 1 keeps the plain order.

    Written here (some 15 lines of numpy) rather than taken from langchain, whose helper would bring its
    whole package for one function and measures relevance by cosine only.
    """
    n = len(relevance)
    if n == 0:
        return []
    spread = relevance.max() - relevance.min()
    rel = (relevance - relevance.min()) / spread if spread > 0 else np.ones(n)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = vectors / np.where(norms > 0, norms, 1.0)
    similarity = unit @ unit.T
    chosen = [int(np.argmax(rel))]
    closest = similarity[chosen[0]].copy()  # each candidate's greatest similarity to those taken
    taken = np.zeros(n, dtype=bool)
    taken[chosen[0]] = True
    while len(chosen) < min(k, n):
        value = lambda_mult * rel - (1.0 - lambda_mult) * closest
        value[taken] = -np.inf
        pick = int(np.argmax(value))  # ties: the earlier (more relevant) candidate
        chosen.append(pick)
        taken[pick] = True
        np.maximum(closest, similarity[pick], out=closest)
    return chosen


def mmr_hits(hits: list[Hit], vector_field: str, lambda_mult: float, k: int) -> list[Hit]:
    """The k of the candidate hits that MMR picks, ranked in picking order (their vectors dropped)."""
    if not hits:
        return hits
    vectors = np.stack([np.asarray(h.values.pop(vector_field), dtype=np.float32) for h in hits])
    relevance = np.array([h.score for h in hits], dtype=np.float64)
    picked = mmr_select(relevance, vectors, k, lambda_mult)
    out = []
    for rank, i in enumerate(picked, start=1):
        hits[i].rank = rank
        out.append(hits[i])
    return out
