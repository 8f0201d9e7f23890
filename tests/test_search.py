"""search.py against the real database: index use, filters, iterative scans, hybrid ranking, ORM helpers."""

import numpy as np
import pyarrow.parquet as pq
import pytest
from django.db import connection

from tests.helpers import ROOT, unit_vectors
from tests.testapp.models import HostDocument
from vectorstore import ingest
from vectorstore.models import Document
from vectorstore.search import SearchError, build_filter, search, vector_queryset

pytestmark = pytest.mark.django_db


def make_corpus(n: int):
    """n documents with random unit vectors; 1% in category 'rare' and with metadata rare: true."""
    vectors = unit_vectors(n, 384, seed=7)
    Document.objects.bulk_create(
        Document(
            external_id=f"d{i}",
            text=f"document {i}",
            embedding=v,
            category="rare" if i % 100 == 0 else "common",
            metadata={
                "n": i,
                "parity": "even" if i % 2 == 0 else "odd",
                "rare": i % 100 == 0,
                **({"flag": True} if i % 10 == 0 else {}),
            },
        )
        for i, v in enumerate(vectors)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE vectorstore_document")
    return vectors


@pytest.fixture
def corpus():
    return make_corpus(3000)


@pytest.fixture
def small_corpus():
    return make_corpus(300)


def test_vector_search_uses_the_hnsw_index(corpus):
    """The service's query is ORDER BY distance LIMIT k, and EXPLAIN shows the HNSW index serving it."""
    plan = vector_queryset(Document.objects.all(), corpus[0], "cosine", 10).explain()
    assert "Index Scan using vectorstore_document_hnsw" in plan, plan
    result = search(vector=corpus[0], k=10)
    assert [h.rank for h in result.hits] == list(range(1, 11))
    assert result.hits[0].document.external_id == "d0" and result.hits[0].distance == pytest.approx(
        0, abs=1e-6
    )
    distances = [h.distance for h in result.hits]
    assert distances == sorted(distances)


def test_selective_filter_returns_k_rows_where_a_plain_hnsw_scan_does_not(corpus):
    """1% filter: plain HNSW (ef_search 40) comes back short; iterative scans return k, nearly exact."""
    query = unit_vectors(1, 384, seed=99)[0]
    rare = Document.objects.filter(build_filter({"rare": True}))
    exact = sorted(rare, key=lambda d: 1 - float(np.dot(np.asarray(d.embedding), query)))[:10]
    with connection.cursor() as cursor:
        # Keep the planner on the vector index (3,000 rows are cheap to scan whole).
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL hnsw.iterative_scan = off")
        cursor.execute("SET LOCAL hnsw.ef_search = 40")
    plain_query = vector_queryset(rare, query, "cosine", 10)
    assert "Index Scan using vectorstore_document_hnsw" in plain_query.explain()
    assert len(list(plain_query)) < 10

    iterative = search(vector=query, k=10, filters={"rare": True}, iterative_scan="relaxed_order")
    assert len(iterative.hits) == 10 and not iterative.exact  # the index scan itself found them
    overlap = {h.document.pk for h in iterative.hits} & {d.pk for d in exact}
    assert len(overlap) >= 9

    # With iterative scans off, the short answer is caught and answered exactly.
    fallback = search(vector=query, k=10, filters={"rare": True}, iterative_scan="off")
    assert fallback.exact and [h.document.pk for h in fallback.hits] == [d.pk for d in exact]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"category": "rare"}, lambda i: i % 100 == 0),
        ({"category": {"$ne": "rare"}}, lambda i: i % 100 != 0),
        ({"parity": "even"}, lambda i: i % 2 == 0),
        ({"parity": {"$eq": "odd"}}, lambda i: i % 2 == 1),
        ({"n": {"$lt": 5}}, lambda i: i < 5),
        ({"n": {"$lte": 5}}, lambda i: i <= 5),
        ({"n": {"$gt": 294}}, lambda i: i > 294),
        ({"n": {"$gte": 294}}, lambda i: i >= 294),
        ({"n": {"$in": [1, 2, 3]}}, lambda i: i in (1, 2, 3)),
        ({"n": {"$nin": [1, 2, 3]}}, lambda i: i not in (1, 2, 3)),
        ({"flag": {"$exists": True}}, lambda i: i % 10 == 0),
        ({"flag": {"$exists": False}}, lambda i: i % 10 != 0),
        ({"$and": [{"parity": "even"}, {"n": {"$lt": 10}}]}, lambda i: i % 2 == 0 and i < 10),
        (
            {"$or": [{"n": 7}, {"category": "rare", "n": {"$lt": 300}}]},
            lambda i: i == 7 or (i % 100 == 0 and i < 300),
        ),
        ({"external_id": {"$in": ["d5", "d6"]}}, lambda i: i in (5, 6)),
        ({"created_at": {"$gte": "2000-01-01T00:00:00Z"}}, lambda i: True),
    ],
)
def test_each_filter_operator(small_corpus, filters, expected):
    got = sorted(Document.objects.filter(build_filter(filters)).values_list("metadata__n", flat=True))
    assert got == [i for i in range(300) if expected(i)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": 1001}, "k"),
        ({"vector": [0.1] * 3}, "vector"),
        ({"vector": [float("nan")] * 384}, "vector"),
        ({"query": ""}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"filters": {"n": {"$regex": "x"}}}, "filters.n.$regex"),
        ({"filters": {"$not": {}}}, "filters.$not"),
        ({"filters": {"n": {"$in": "abc"}}}, "filters.n.$in"),
        ({"filters": {"created_at": {"$gte": "yesterday"}}}, "filters.created_at.$gte"),
        ({"filters": ["category"]}, "filters"),
        ({"mode": "fuzzy", "query": "x"}, "mode"),
        ({"metric": "manhattan", "vector": [0.0] * 384}, "metric"),
    ],
)
def test_bad_requests_name_the_field(kwargs, field):
    kwargs.setdefault("vector", None if "query" in kwargs else [0.1] * 384)
    query = kwargs.pop("query", None)
    with pytest.raises(SearchError) as info:
        search(query, **kwargs)
    assert info.value.field == field


def test_hostile_metadata_keys_are_only_keys(small_corpus):
    """Keys carrying SQL or Django lookup syntax match nothing and change nothing."""
    for key in ("n'); DROP TABLE vectorstore_document; --", "n__gt", "metadata__n", "ключ", "n' || 'x"):
        assert search(vector=small_corpus[1], k=5, filters={key: 1}).hits == []
    with pytest.raises(SearchError, match="NUL"):
        search(vector=small_corpus[1], k=5, filters={"n\x00": 1})
    assert Document.objects.count() == 300


@pytest.fixture
def fixture_docs(tmp_path):
    """200 real passages, embedded with the bundled model and loaded."""
    table = pq.read_table(ROOT / "fixtures" / "sotu.parquet").slice(0, 200)
    ingest.load(table, progress=False)
    return table


def test_semantic_search_on_real_text(fixture_docs):
    """A paraphrase finds its passage; the query vector comes from the cache the second time."""
    from vectorstore.search import query_cache

    target = Document.objects.filter(text__icontains="Indian").first()
    assert target is not None
    result = search(target.text[:200], k=5)
    assert result.hits[0].document.pk == target.pk
    before = query_cache.hits
    search(target.text[:200], k=5)
    assert query_cache.hits == before + 1


def test_hybrid_ranks_an_exact_keyword_match_first(fixture_docs):
    """A rare word found by full text alone is fused to the top by reciprocal rank fusion."""
    text = "Zyzzogeton appropriations for the lighthouse service were approved."
    # A vector unrelated to its text: only the full-text side can find this document.
    doc = Document.objects.create(text=text, embedding=unit_vectors(1, 384, seed=5)[0], external_id="keyword")
    hybrid = search("zyzzogeton", k=5, mode="hybrid")
    assert hybrid.hits[0].document.pk == doc.pk
    text = search("zyzzogeton", k=5, mode="text")
    assert [h.document.pk for h in text.hits] == [doc.pk]
    vector = search("zyzzogeton", k=5)
    assert doc.pk not in [h.document.pk for h in vector.hits[:1]]


def test_orm_helpers_on_a_host_model():
    """nearest() and similar_to() work on a host site's own subclass, with its own dimension."""
    vectors = unit_vectors(50, 8, seed=3)
    docs = HostDocument.objects.bulk_create(
        HostDocument(text=str(i), embedding=v) for i, v in enumerate(vectors)
    )
    near = HostDocument.objects.nearest(vectors[4], k=3)
    assert near[0].pk == docs[4].pk and near[0].distance == pytest.approx(0, abs=1e-6)
    similar = HostDocument.objects.similar_to(docs[4], k=3)
    assert docs[4].pk not in [d.pk for d in similar] and len(similar) == 3
    assert similar[0].pk == near[1].pk
    lazy = HostDocument.objects.order_by_distance(vectors[9])[:1]
    assert lazy[0].pk == docs[9].pk
