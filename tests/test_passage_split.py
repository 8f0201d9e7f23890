"""The split of a long text into passages, with the bundled model's own tokenizer: every passage fits the
model, spans point at the text they came from, consecutive passages overlap, cuts fall at sentence ends
where one is near, and a text that fits is one passage."""

from __future__ import annotations

import itertools

import pyarrow.parquet as pq
import pytest

from tests.helpers import ROOT
from vectorstore.embedding import Embedder
from vectorstore.models import Document
from vectorstore.passages.split import boundaries, split


@pytest.fixture(scope="module")
def model():
    embedder = Embedder.for_model(Document)
    return embedder.model.tokenizer, embedder.max_tokens - 2  # [CLS] and [SEP] are the model's own


@pytest.fixture(scope="module")
def long_text() -> str:
    """About 3,000 words of one address's real passages, joined as paragraphs."""
    table = pq.read_table(ROOT / "fixtures" / "sotu.parquet", columns=["text"])
    texts, words = [], 0
    for text in table.column("text").to_pylist()[:400]:
        texts.append(text)
        words += len(text.split())
        if words >= 3000:
            break
    return "\n\n".join(texts)


def _pieces(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"])


def test_a_long_text_becomes_passages_that_each_fit_and_point_at_their_text(model, long_text):
    tokenizer, limit = model
    passages = split(long_text, tokenizer, limit, overlap=32)
    assert len(passages) >= 3000 / 180  # the model reads about 180 words
    assert [p.ordinal for p in passages] == list(range(len(passages)))
    for p in passages:
        assert long_text[p.start : p.end] == p.text and p.text.strip() == p.text
        assert _pieces(tokenizer, p.text) <= limit
    assert passages[0].start == 0 and passages[-1].end == len(long_text)
    for a, b in itertools.pairwise(passages):
        assert a.start < b.start < a.end <= b.end  # they overlap, and move forward
        assert b.start - a.start >= (a.end - a.start) // 3  # by a good part of a passage each time
    # Cuts fall where a sentence or paragraph ends, when one is in the window's last quarter (real
    # prose nearly always has one there).
    ends = set(boundaries(long_text))
    at_boundaries = sum(1 for p in passages[:-1] if any(e in ends for e in range(p.end, p.end + 4)))
    assert at_boundaries >= 0.9 * (len(passages) - 1)
    starts_of_sentences = sum(1 for p in passages[1:] if p.start in ends)
    assert starts_of_sentences >= 0.8 * (len(passages) - 1)


def test_a_text_that_fits_is_one_passage_and_an_empty_one_none(model):
    tokenizer, limit = model
    text = "A short text. It fits the model whole."
    assert [(p.start, p.end, p.text) for p in split(text, tokenizer, limit)] == [(0, len(text), text)]
    assert split("", tokenizer, limit) == []


def test_a_text_without_sentence_ends_is_cut_mid_sentence_and_still_fits(model):
    tokenizer, _ = model
    text = " ".join(f"word{i} ünïcödé 🚀" for i in range(800))
    passages = split(text, tokenizer, 64, overlap=8)
    assert len(passages) > 10
    for p in passages:
        assert text[p.start : p.end] == p.text and _pieces(tokenizer, p.text) <= 64
    covered = set()
    for p in passages:
        covered.update(range(p.start, p.end))
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())  # nothing is left out


def test_bad_sizes_are_refused_by_name(model):
    tokenizer, _ = model
    with pytest.raises(ValueError, match="max_tokens"):
        split("text", tokenizer, 4)
    with pytest.raises(ValueError, match="overlap"):
        split("text", tokenizer, 64, overlap=40)
