"""Hybrid search's fusion: weighted reciprocal rank fusion of the vector ranking (weight 1) and the text
ranking, each side ranking its own number of candidates.

The text side's weight adapts to the query (``adaptive_weight``): a query whose words, all of them,
only a few documents hold names something (a package, a function, a place), and its text matches
deserve to come first; one whose words many documents hold says little by its words, and vector search
should order its results. So the weight of a match holding every word is ``ADAPTIVE_MAX`` while at most
``ADAPTIVE_FEW`` documents hold every word, and falls as ``(ADAPTIVE_FEW / matches) ** ADAPTIVE_POWER``
beyond; no document holding them all, no text side.

How many documents hold every word does not tell a name from a described need ("chess game" held by
7 documents, "Zanzibar" by 1), and for a described need a text match far from the query's meaning is a
coincidence of words. So for a query of two words or more (``described``) that more than one document
holds whole, a match counts only where its vector lies about as near the query as vector search's own
k-th result (``GATE_MARGIN`` past it); a one-word query (a name, a term) keeps every match, and so does
one that a single document holds (an identifier, whatever its length). Chosen with
benchmarks/bench_hybrid.py on two of three corpora and reported on the third, each way round
(benchmarks/README.md); a fixed ``text_weight`` (and ``partial_weight`` for matches holding only some of
the words) still overrides both.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

from vectorstore.limits import MAX_K
from vectorstore.search.filters import SearchError

RRF_K = 60
HYBRID_TEXT_WEIGHT = None  # adaptive (adaptive_weight); a number fixes it
ADAPTIVE_MAX = 2.0
ADAPTIVE_FEW = 20
ADAPTIVE_POWER = 0.5
HYBRID_PARTIAL_WEIGHT = 0.0
HYBRID_CANDIDATES = 50
# A described need's text match counts while its cosine distance is at most the vector side's k-th plus
# this; with ADAPTIVE_MAX 2.0 (bench_hybrid: the margin chosen in each of the three rotations, the weight
# in two of them; the adaptive rule without the gate, chosen on sotu and debian, lost on pydocs' needs).
GATE_MARGIN = 0.05
# PostgreSQL's english stop words (to_tsvector drops them): "the railroads" is one word to the text side.
_STOP = """a about above after again against all am an and any are as at be because been before being below
between both but by can did do does doing don down during each few for from further had has have having
he her here hers herself him himself his how i if in into is it its itself just me more most my myself no
nor not now of off on once only or other our ours ourselves out over own s same she should so some such t
than that the their theirs them themselves then there these they this those through to too under until up
very was we were what when where which while who whom why will with you your yours yourself yourselves"""
STOP_WORDS = frozenset(_STOP.split())
_WORD = re.compile(r"\w+")
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


def described(query: str | None) -> bool:
    """A query of two words or more that are not stop words: a need described, not a name looked up."""
    return sum(1 for w in _WORD.findall((query or "").lower()) if w not in STOP_WORDS) >= 2


def _cosine(metric: str, distance: float) -> float:
    """A distance as the cosine distance it is for unit vectors (the margin is in those units)."""
    if metric == "l2":
        return distance * distance / 2
    if metric == "inner_product":
        return 1.0 + distance
    return distance


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
    query: str | None = None,
    metric: str = "cosine",
) -> list[tuple[tuple, float]]:
    """The k best rows by fused score, with their scores. ``pk`` is the column of the key in both
    rankings' rows, whose last column is their distance; ``every_word``, that of a text row's every-word
    flag (None when every text match holds every word); ``matches``, how many documents hold every word
    (for the adaptive weight); ``query`` and ``metric``, for the gate on a described need's matches."""
    adaptive = fusion.text_weight is None
    text_weight = fusion.text_weight if not adaptive else adaptive_weight(matches)
    edge = None
    if adaptive and vector_rows and matches > 1 and described(query):
        edge = _cosine(metric, vector_rows[min(k, len(vector_rows)) - 1][-1]) + GATE_MARGIN
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
        if edge is not None and (r[-1] is None or _cosine(metric, r[-1]) > edge):
            weight = 0.0  # a coincidence of words: far from what the query means
        fused[r[pk]] = fused.get(r[pk], 0.0) + weight / (fusion.rrf_k + i + 1)
        by_pk.setdefault(r[pk], r)
    # Ties (one document first in each list) go to the full-text match: it holds the words.
    text_rank = {r[pk]: i for i, r in enumerate(text_rows)}
    order = sorted(fused, key=lambda key: (-fused[key], text_rank.get(key, fusion.text_k), key))[:k]
    return [(by_pk[key], fused[key]) for key in order]
