"""A long text split into passages the embedding model reads whole (issue 25's split; the passage table,
the write paths and passage search build on it).

The model reads at most ``max_seq_length`` word pieces, two of them its own ([CLS] and [SEP]); every
longer text is embedded from its beginning only. Here the text is tokenized once with the model's own
tokenizer (with character offsets), cut into windows of at most that many word pieces that overlap by
``overlap`` (from the start of the sentence the overlap begins in, where that is not far back), each cut
moved back to the end of a paragraph or sentence where one lies in the window's last quarter; each
passage keeps its character span, so ``text[start:end]`` is its text. A text that
fits is one passage. (Written here: LangChain's and LlamaIndex's splitters count tokens but keep no
span, and work on their own units, not the embedding model's word pieces.)
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from typing import Any

# A paragraph break, or the space after a sentence's end (with closing quotes or brackets).
_BOUNDARY = re.compile(r"\n\s*\n\s*|(?<=[.!?])[\"')\]]*\s+")
# How far back a cut may move to reach a boundary: the window's last quarter.
BACKTRACK = 0.25


@dataclass(frozen=True)
class Passage:
    ordinal: int
    start: int  # character span in the text: text[start:end]
    end: int
    text: str


def boundaries(text: str) -> list[int]:
    """Where a paragraph or sentence starts (character positions after the break), in order."""
    return [m.end() for m in _BOUNDARY.finditer(text) if m.end() < len(text)]


def split(text: str, tokenizer: Any, max_tokens: int, overlap: int = 32) -> list[Passage]:
    """The text's passages: at most ``max_tokens`` word pieces each (the model's own two not counted),
    consecutive ones sharing about ``overlap`` word pieces, cut at a paragraph or sentence end where one
    is near."""
    if max_tokens < 8:
        raise ValueError("max_tokens: at least 8 word pieces")
    if not 0 <= overlap <= max_tokens // 2:
        raise ValueError(f"overlap: from 0 to half of max_tokens ({max_tokens // 2})")
    # verbose=False: the tokenizer would warn that the whole text is longer than the model reads.
    encoded = tokenizer(
        text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
    )
    offsets = [(s, e) for s, e in encoded["offset_mapping"] if e > s]
    if len(offsets) <= max_tokens:
        return [Passage(0, 0, len(text), text)] if text else []
    starts = [s for s, _ in offsets]
    breaks = boundaries(text)
    passages: list[Passage] = []
    first = 0
    while first < len(offsets):
        last = min(first + max_tokens, len(offsets))  # one past the window's last word piece
        if last < len(offsets):
            last = _cut(starts, breaks, first, last, max_tokens)
        start, end = offsets[first][0], offsets[last - 1][1]
        passages.append(Passage(len(passages), start, end, text[start:end]))
        if last >= len(offsets):
            break
        first = _next_start(starts, breaks, first, max(last - overlap, first + 1), last)
    return passages


def _cut(starts: list[int], breaks: list[int], first: int, last: int, max_tokens: int) -> int:
    """The window's end moved back to the last boundary in its last quarter (else left mid-sentence)."""
    earliest = last - int(max_tokens * BACKTRACK)
    # The last boundary at or before the word piece that would start the next window.
    i = bisect.bisect_right(breaks, starts[last]) - 1
    while i >= 0:
        piece = bisect.bisect_left(starts, breaks[i])  # the first word piece of that sentence
        if piece <= earliest:
            break
        if piece <= last:
            return piece
        i -= 1
    return last


def _next_start(starts: list[int], breaks: list[int], previous: int, first: int, last: int) -> int:
    """The next window's first word piece: the start of the sentence its overlap begins in, while the
    step stays at least half the previous window; else a sentence start within the overlap; else the
    overlap's first word piece."""
    i = bisect.bisect_right(breaks, starts[first]) - 1
    if i >= 0:
        piece = bisect.bisect_left(starts, breaks[i])
        if previous + (last - previous) // 2 < piece <= first:
            return piece
    i = bisect.bisect_left(breaks, starts[first])
    if i < len(breaks):
        piece = bisect.bisect_left(starts, breaks[i])
        if first <= piece < last:
            return piece
    return first
