"""Hybrid search's fusion: weighted reciprocal rank fusion of the vector ranking (weight 1) and the text
ranking, each side ranking its own number of candidates.

The text side's weight adapts to the query (``adaptive_weight``): a query whose words, all of them,
only a few documents hold names something (a package, a function, a place), and its text matches
deserve to come first; one whose words many documents hold says little by its words, and vector search
should order its results. So the weight of a match holding every word is ``ADAPTIVE_MAX`` while at most
``ADAPTIVE_FEW`` documents hold every word, and falls as ``(ADAPTIVE_FEW / matches) ** ADAPTIVE_POWER``
beyond; no document holding them all, no text side. Chosen with benchmarks/bench_hybrid.py on two of
three corpora and reported on the third, each way round (benchmarks/README.md); a fixed
``text_weight`` (and ``partial_weight`` for matches holding only some of the words) still overrides it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

from vectorstore.filters import SearchError
from vectorstore.limits import MAX_K

RRF_K = 60
HYBRID_TEXT_WEIGHT = None  # adaptive (adaptive_weight); a number fixes it
ADAPTIVE_MAX = 1.5
ADAPTIVE_FEW = 20
ADAPTIVE_POWER = 0.5
HYBRID_PARTIAL_WEIGHT = 0.0
HYBRID_CANDIDATES = 50
HYBRID_OPTIONS = ("text_weight", "partial_weight", "rrf_k", "vector_k", "text_k")


class Fusion(NamedTuple):
    """Mode hybrid's options, checked (``hybrid_options``)."""

    text_weight: float | None  # None: adaptive_weight of the query's all-words matches
    partial_weight: float
    rrf_k: int
    vector_k: int
    text_k: int

    @property
    def partial(self) -> bool:
        """Partial matches weighed at 0 need not be ranked at all: the text side is then the documents
        holding every word (ranking every document holding any word costs more)."""
        return self.partial_weight > 0


def hybrid_options(hybrid: Any, k: int) -> Fusion:
    """Mode hybrid's fusion: ``text_weight`` (the weight of a text match holding every word, against the
    vector ranking's 1; left out, adaptive), ``partial_weight`` (of a text match holding only some of the
    words; both 0 is vector search alone), ``rrf_k`` (the rank constant: smaller favours each list's
    first places), ``vector_k`` and ``text_k`` (candidates each side ranks, k or more)."""
    if hybrid is None:
        hybrid = {}
    if not isinstance(hybrid, dict):
        raise SearchError("hybrid", f"expected an object with {', '.join(HYBRID_OPTIONS)}")
    unknown = sorted(set(hybrid) - set(HYBRID_OPTIONS))
    if unknown:
        raise SearchError(f"hybrid.{unknown[0]}", f"unknown option; expected {', '.join(HYBRID_OPTIONS)}")
    weights = []
    for name, default in (("text_weight", HYBRID_TEXT_WEIGHT), ("partial_weight", HYBRID_PARTIAL_WEIGHT)):
        value = hybrid.get(name, default)
        if value is None and name == "text_weight":
            weights.append(None)
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 10:
            raise SearchError(f"hybrid.{name}", "must be a number from 0 to 10")
        weights.append(float(value))
    rrf_k = hybrid.get("rrf_k", RRF_K)
    if isinstance(rrf_k, bool) or not isinstance(rrf_k, int) or not 0 <= rrf_k <= 10_000:
        raise SearchError("hybrid.rrf_k", "must be an integer from 0 to 10000")
    sides = []
    for name in ("vector_k", "text_k"):
        value = hybrid.get(name, max(k, HYBRID_CANDIDATES))
        if isinstance(value, bool) or not isinstance(value, int) or not k <= value <= MAX_K:
            raise SearchError(f"hybrid.{name}", f"must be an integer from k ({k}) to {MAX_K}")
        sides.append(value)
    return Fusion(weights[0], weights[1], rrf_k, sides[0], sides[1])


def adaptive_weight(matches: int) -> float:
    """The text weight for a query whose words, all of them, ``matches`` documents hold."""
    if matches <= 0:
        return 0.0
    return ADAPTIVE_MAX * min(1.0, (ADAPTIVE_FEW / matches) ** ADAPTIVE_POWER)


def fuse(
    vector_rows: Sequence[tuple],
    text_rows: Sequence[tuple],
    pk: int,
    every_word: int | None,
    fusion: Fusion,
    k: int,
    matches: int = 0,
) -> list[tuple[tuple, float]]:
    """The k best rows by fused score, with their scores. ``pk`` is the column of the key in both
    rankings' rows; ``every_word``, that of a text row's every-word flag (None when every text match
    holds every word); ``matches``, how many documents hold every word (for the adaptive weight)."""
    text_weight = fusion.text_weight if fusion.text_weight is not None else adaptive_weight(matches)
    fused: dict[Any, float] = {}
    by_pk: dict[Any, tuple] = {}
    for i, r in enumerate(vector_rows):
        fused[r[pk]] = 1.0 / (fusion.rrf_k + i + 1)
        by_pk[r[pk]] = r
    # A text match holding every word counts with text_weight; one holding only some of them, a weaker
    # signal on its own, with partial_weight.
    for i, r in enumerate(text_rows):
        holds = every_word is None or r[every_word]
        weight = text_weight if holds else fusion.partial_weight
        fused[r[pk]] = fused.get(r[pk], 0.0) + weight / (fusion.rrf_k + i + 1)
        by_pk.setdefault(r[pk], r)
    # Ties (one document first in each list) go to the full-text match: it holds the words.
    text_rank = {r[pk]: i for i, r in enumerate(text_rows)}
    order = sorted(fused, key=lambda key: (-fused[key], text_rank.get(key, fusion.text_k), key))[:k]
    return [(by_pk[key], fused[key]) for key in order]
