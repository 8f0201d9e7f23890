"""Passages against the real database: long documents written with their passages (save, the API's COPY),
in the document's transaction, replaced with the text and deleted with the document, and searched as
documents: found by their last paragraph, k distinct documents, spans into the text, filters, hybrid,
MMR, the async form, a host's own model with one option and a migration."""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db import connection
from pgvector.django import CosineDistance

from tests.helpers import ROOT
from tests.testapp.models import LongArticle
from vectorstore import passages
from vectorstore.embedding import Embedder
from vectorstore.loading import ingest
from vectorstore.models import Document
from vectorstore.search import aclose, asearch, embed_query, search

pytestmark = pytest.mark.django_db

ADDRESSES_PER_DOCUMENT = 3  # the fixture's addresses hold 1,000-1,700 words each


def _long_texts(count: int) -> list[tuple[str, str]]:
    """(president, text) of ``count`` documents of 3,000 words or more: consecutive addresses joined."""
    table = pq.read_table(
        ROOT / "fixtures" / "sotu.parquet", columns=["president", "year", "text"]
    ).to_pydict()
    addresses: dict[tuple, list[str]] = {}
    for president, year, text in zip(table["president"], table["year"], table["text"], strict=True):
        addresses.setdefault((president, year), []).append(text)
    keys = list(addresses)
    out = []
    for i in range(count):
        group = keys[i * ADDRESSES_PER_DOCUMENT : (i + 1) * ADDRESSES_PER_DOCUMENT]
        text = "\n\n".join("\n\n".join(addresses[key]) for key in group)
        out.append((group[0][0], text))
    return out


_VECTORS: dict[tuple, np.ndarray] = {}


@pytest.fixture(autouse=True)
def _each_text_embedded_once(monkeypatch):
    """The real model embeds each distinct text (document or passage) once per test process: the tests
    here write the same long documents many times (the split and the write paths still run each time)."""
    real = Embedder.encode

    def encode(self, texts, **kwargs):
        texts = list(texts)
        missing = [t for t in dict.fromkeys(texts) if (self.label, t) not in _VECTORS]
        if missing:
            _VECTORS.update(
                zip([(self.label, t) for t in missing], real(self, missing, **kwargs), strict=True)
            )
        if not texts:
            return real(self, texts, **kwargs)
        return np.stack([_VECTORS[(self.label, t)] for t in texts])

    monkeypatch.setattr(Embedder, "encode", encode)


@pytest.fixture
def with_passages(settings):
    settings.VECTORSTORE = {**settings.VECTORSTORE, "PASSAGES": True}


@pytest.fixture
def articles(with_passages) -> list[Document]:
    """Five real documents of 3,000-4,500 words, saved one by one (embedded on save, with passages)."""
    return [
        Document.objects.create(text=text, category=president, external_id=f"long-{i}")
        for i, (president, text) in enumerate(_long_texts(5))
    ]


def _last_third_sentence(text: str) -> str:
    """A whole sentence from the last third of the text (the query quotes it)."""
    tail = text[2 * len(text) // 3 :]
    sentences = [s.strip() for s in tail.split(". ") if 12 <= len(s.split()) <= 40]
    return sentences[len(sentences) // 2] + "."


def test_every_long_document_is_saved_with_passages_that_cover_its_text(articles):
    """Each document has its passages (a 3,000-word text has many), in order, whose spans cover the text
    from its start to its end, each with a vector."""
    for doc in articles:
        assert len(doc.text.split()) >= 3000
        stored = list(passages.passage_model(Document).objects.filter(document=doc).order_by("ordinal"))
        assert len(stored) >= 3000 / 180
        assert [p.ordinal for p in stored] == list(range(len(stored)))
        assert stored[0].start == 0 and stored[-1].end == len(doc.text)
        assert all(a.end > b.start for a, b in itertools.pairwise(stored))  # they overlap
        assert all(len(p.embedding) == 384 for p in stored)


def test_a_long_document_is_found_by_its_last_third_with_passages_and_not_without(articles, settings):
    """A sentence quoted from the last third of each document finds that document among the first three
    through its passages (first, nearly always), the matched passage holding the sentence; with passages
    off (the document's one vector, read from its beginning) far less often."""
    first_with, top3_with, first_without, top3_without, holds = 0, 0, 0, 0, 0
    for doc in articles:
        query = _last_third_sentence(doc.text)
        ids = [h.values["id"] for h in search(query, k=3).hits]
        hit = search(query, k=3).hits[ids.index(doc.pk)] if doc.pk in ids else None
        first_with += ids[0] == doc.pk
        top3_with += hit is not None
        if hit is not None:
            # The matched passage's span points at its text; mostly it is the one quoting the sentence.
            assert hit.passage["text"] == doc.text[hit.passage["start"] : hit.passage["end"]]
            holds += query[:-1] in hit.passage["text"]
    settings.VECTORSTORE = {**settings.VECTORSTORE, "PASSAGES": False}
    for doc in articles:
        result = search(_last_third_sentence(doc.text), k=3)
        ids = [h.values["id"] for h in result.hits]
        first_without += ids[0] == doc.pk
        top3_without += doc.pk in ids
        assert result.hits[0].passage is None
    print(first_with, top3_with, first_without, top3_without, holds)
    assert top3_with == len(articles) and first_with >= len(articles) - 1 and holds >= len(articles) // 2
    assert first_without <= len(articles) // 2 and top3_without < top3_with


def test_k_distinct_documents_though_one_documents_passages_crowd_the_top(articles):
    """A query that is one of a document's passages: that document's passages (it and its overlapping
    neighbours) crowd the nearest; the answer is still k distinct documents, each once, that one first,
    ranked by their best passage's distance."""
    doc = articles[2]
    model = passages.passage_model(Document)
    middle = model.objects.filter(document=doc).order_by("ordinal")[10]
    query = doc.text[middle.start : middle.end]
    nearest = model.objects.annotate(d=CosineDistance("embedding", embed_query(query))).order_by("d")
    crowd = [p.document_id for p in nearest[:10]]
    assert crowd[0] == doc.pk and crowd.count(doc.pk) >= 2
    result = search(query, k=5)
    ids = [h.values["id"] for h in result.hits]
    assert len(ids) == 5 == len(set(ids))
    assert ids[0] == doc.pk and result.hits[0].passage["ordinal"] == 10
    distances = [h.distance for h in result.hits]
    assert distances == sorted(distances)


def test_filters_hybrid_mmr_and_the_async_form_on_passages(articles):
    """A filter on the documents' fields, hybrid fusion with the full text, MMR and asearch all answer
    from the passages, as documents."""
    doc = articles[4]
    query = _last_third_sentence(doc.text)
    filtered = search(query, k=3, filters={"category": doc.category})
    assert filtered.hits[0].values["id"] == doc.pk
    assert {h.values["category"] for h in filtered.hits} == {doc.category}
    other = search(query, k=3, filters={"category": {"$ne": doc.category}})
    assert doc.pk not in [h.values["id"] for h in other.hits] and other.hits
    hybrid = search(query, k=3, mode="hybrid")
    assert hybrid.hits[0].values["id"] == doc.pk and hybrid.hits[0].passage is not None
    diverse = search(query, k=4, mmr={"lambda_mult": 0.5})
    assert diverse.hits[0].values["id"] == doc.pk and len({h.values["id"] for h in diverse.hits}) == 4


@pytest.mark.django_db(transaction=True)
def test_asearch_answers_passage_searches_as_search_does(settings):
    """The async form reads the same passages and answers the same documents and spans."""
    settings.VECTORSTORE = {**settings.VECTORSTORE, "PASSAGES": True}
    docs = [Document.objects.create(text=text, category=p) for p, text in _long_texts(3)]
    queries = [_last_third_sentence(d.text) for d in docs]
    expected = [[(h.values["id"], h.passage["ordinal"]) for h in search(q, k=3).hits] for q in queries]

    async def run_all():
        try:
            return [
                [(h.values["id"], h.passage["ordinal"]) for h in (await asearch(q, k=3)).hits]
                for q in queries
            ]
        finally:
            await aclose()

    assert asyncio.run(run_all()) == expected
    assert [e[0][0] for e in expected] == [d.pk for d in docs]
    from tests.helpers import close_async_thread_connections

    close_async_thread_connections()


def test_an_edited_text_replaces_its_passages_and_a_deletion_removes_them(with_passages):
    """A new text gets new passages (and none of the old remain); an unchanged save writes none; deleting
    the document deletes its passages."""
    (_, text), (_, other) = _long_texts(2)
    doc = Document.objects.create(text=text)
    model = passages.passage_model(Document)
    before = set(model.objects.filter(document=doc).values_list("pk", flat=True))
    doc.refresh_from_db()
    doc.category = "edited"
    doc.save()  # the text unchanged: the passages stay as they are
    assert set(model.objects.filter(document=doc).values_list("pk", flat=True)) == before
    doc.text = other
    doc.save()
    after = list(model.objects.filter(document=doc).order_by("ordinal"))
    assert not before & {p.pk for p in after}
    assert after[-1].end == len(other)
    short = Document.objects.create(text="A short text is one passage.")
    (only,) = model.objects.filter(document=short)
    assert (only.start, only.end) == (0, len(short.text)) and list(only.embedding) == list(short.embedding)
    doc.delete()
    assert not model.objects.filter(document_id=doc.pk).exists()


def test_a_failed_passage_write_leaves_neither_the_document_nor_its_passages(with_passages, monkeypatch):
    """save() and the API's batch write the document and its passages in one transaction: a failure in
    the passages' write rolls the document back too."""
    from vectorstore.loading.writes import insert_documents

    def broken(*args, **kwargs):
        raise RuntimeError("the passages could not be written")

    (_, text), _ = _long_texts(2)
    monkeypatch.setattr(passages, "replace_passages", broken)
    with pytest.raises(RuntimeError):
        Document.objects.create(text=text, external_id="rolled-back")
    monkeypatch.setattr(passages, "copy_passages", broken)
    with pytest.raises(RuntimeError):
        insert_documents([{"text": text, "external_id": "rolled-back-too"}])
    assert not Document.objects.filter(external_id__startswith="rolled-back").exists()
    assert not passages.passage_model(Document).objects.exists()


def test_the_api_writes_passages_and_answers_with_the_matched_one(with_passages, client, writer_token):
    """POST /api/documents writes each document's passages with it (one COPY each, one transaction);
    POST /api/search names the matched passage: its ordinal, span and text."""
    texts = _long_texts(3)
    body = [{"text": t, "category": p, "external_id": f"api-{i}"} for i, (p, t) in enumerate(texts)]
    response = client.post(
        "/api/documents",
        json.dumps(body),
        content_type="application/json",
        headers={"Authorization": f"Bearer {writer_token}"},
    )
    assert response.status_code == 201, response.content
    ids = response.json()["ids"]
    model = passages.passage_model(Document)
    for pk, (_, text) in zip(ids, texts, strict=True):
        stored = list(model.objects.filter(document_id=pk).order_by("ordinal"))
        assert len(stored) > 10 and stored[-1].end == len(text)
    query = _last_third_sentence(texts[1][1])
    response = client.post(
        "/api/search", json.dumps({"query": query, "k": 2}), content_type="application/json"
    )
    assert response.status_code == 200, response.content
    top = response.json()["results"][0]
    assert top["id"] == ids[1]
    assert top["passage"]["text"] == texts[1][1][top["passage"]["start"] : top["passage"]["end"]]
    assert query[:-1] in top["passage"]["text"]


def test_a_host_model_turns_passages_on_with_one_option_and_a_migration():
    """LongArticle says ``keep_passages = True``: its passage model exists in its app (the migration made its
    table), saving writes passages, and its searches answer from them."""
    model = passages.passage_model(LongArticle)
    assert model is not None and model._meta.app_label == "testapp" and passages.enabled(LongArticle)
    with connection.cursor() as cursor:
        tables = connection.introspection.table_names(cursor)
    assert model._meta.db_table in tables
    texts = _long_texts(3)
    docs = [LongArticle.objects.create(text=t, title=p) for p, t in texts]
    assert all(model.objects.filter(document=d).count() > 10 for d in docs)
    query = _last_third_sentence(docs[0].text)
    hits = LongArticle.objects.nearest(query, k=2)
    assert hits[0].pk == docs[0].pk
    assert query[:-1] in hits[0].passage["text"]  # the ORM's documents carry their passage too
    assert passages.passage_model(Document) is not None and not passages.enabled(Document)  # the setting


def _long_table(texts: list[tuple[str, str]], prefix: str = "bulk-") -> pa.Table:
    return pa.table(
        {"external_id": [f"{prefix}{i}" for i in range(len(texts))], "text": [t for _, t in texts]}
    )


def _passage_counts(model) -> dict[str, tuple[int, int]]:
    """external_id -> (passages, the last one's end) of each stored document."""
    passage = passages.passage_model(model)
    out = {}
    for doc in model.objects.all():
        stored = list(passage.objects.filter(document=doc).order_by("ordinal"))
        out[doc.external_id] = (len(stored), stored[-1].end if stored else 0)
    return out


def test_bulk_copy_writes_passages_with_the_load_and_a_rerun_writes_none():
    """A load of long texts into a model that keeps passages writes every document's passages in the
    load's transaction; its rerun (on_conflict skip) writes none; an update that changes one text
    replaces that document's passages and leaves the others'."""
    texts = _long_texts(3)
    report = ingest.load(_long_table(texts), model="testapp.LongArticle", progress=False)
    counts = _passage_counts(LongArticle)
    assert report.inserted == 3 and report.passages == sum(n for n, _ in counts.values())
    assert all(n > 10 and end == len(texts[int(k.split("-")[1])][1]) for k, (n, end) in counts.items())
    again = ingest.load(_long_table(texts), model="testapp.LongArticle", on_conflict="skip", progress=False)
    assert (again.inserted, again.skipped, again.passages) == (0, 3, 0)
    assert _passage_counts(LongArticle) == counts
    changed = [texts[0], (texts[1][0], texts[1][1][: len(texts[1][1]) // 2]), texts[2]]
    update = ingest.load(
        _long_table(changed), model="testapp.LongArticle", on_conflict="update", progress=False
    )
    after = _passage_counts(LongArticle)
    assert update.updated == 3 and after["bulk-0"] == counts["bulk-0"] and after["bulk-2"] == counts["bulk-2"]
    assert after["bulk-1"][1] == len(changed[1][1]) and after["bulk-1"][0] < counts["bulk-1"][0]
    assert update.passages == after["bulk-1"][0]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_a_bulk_copy_killed_while_writing_passages_leaves_no_document_and_its_rerun_is_exact(tmp_path):
    """bulk_copy into a model that keeps passages, killed (SIGKILL) once its documents are written and it
    is reading them back for their passages: nothing is stored; run again, every document has its
    passages, once."""
    from tests.test_reliability import bulk_copy_process, wait_until_idle

    texts = _long_texts(6)
    pq.write_table(_long_table(texts), tmp_path / "long.parquet")
    load = bulk_copy_process(tmp_path / "long.parquet", "--model", "testapp.LongArticle")
    deadline = time.monotonic() + 180
    while not _reading_for_passages():
        assert load.poll() is None, load.stderr.read()
        assert time.monotonic() < deadline, "the load never reached its passages"
        time.sleep(0.02)
    load.send_signal(signal.SIGKILL)
    load.wait(timeout=10)
    wait_until_idle()
    passage = passages.passage_model(LongArticle)
    assert LongArticle.objects.count() == 0 and passage.objects.count() == 0
    rerun = bulk_copy_process(tmp_path / "long.parquet", "--model", "testapp.LongArticle")
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    counts = _passage_counts(LongArticle)
    assert len(counts) == 6
    assert all(n > 10 and end == len(texts[int(k.split("-")[1])][1]) for k, (n, end) in counts.items())
    assert passage.objects.values("document", "ordinal").distinct().count() == passage.objects.count()


def _reading_for_passages() -> bool:
    """Another backend has the load's cursor over documents without passages open (its documents are
    written; it is embedding their passages)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid()"
            " AND query LIKE %s AND state = 'idle in transaction'",
            ["%vectorstore_missing_passages%"],
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.parametrize("mode", ["insert", "batch"])
def test_stream_sim_writes_each_records_passages_in_its_transaction(mode):
    """stream_sim's writes (one record, or a micro-batch by COPY) carry their passages: every streamed
    long document has them, once, covering its text."""
    from vectorstore.loading import stream

    texts = _long_texts(3)
    records = [stream.Record(f"s-{i}", t, p, {}) for i, (p, t) in enumerate(texts)]
    report = stream.simulate(mode, records, Embedder.for_model(LongArticle), model=LongArticle, batch_size=2)
    assert report.count == 3
    counts = _passage_counts(LongArticle)
    assert sorted(counts) == ["s-0", "s-1", "s-2"]
    assert all(n > 10 and end == len(texts[int(k.split("-")[1])][1]) for k, (n, end) in counts.items())


def test_the_admins_search_shows_the_matched_passage(articles, admin_client):
    """The change list's semantic search of a model that keeps passages shows, for each document, the
    passage that matched (its ordinal and span) and that passage's distance."""
    doc = articles[1]
    query = _last_third_sentence(doc.text)
    best = search(query, k=5).hits[0]
    response = admin_client.get("/admin/vectorstore/document/", {"q": query})
    assert response.status_code == 200
    page = response.content.decode()
    p = best.passage
    assert f"[passage {p['ordinal']}, characters {p['start']}-{p['end']}]" in page
    assert f"{best.distance:.4f}" in page
