"""The search hot path (Django-compiled SQL, the vector bound in binary, one pipelined round trip) gives
exactly what the ORM gives, uses the index, and is never a prepared statement with a generic plan."""

import operator
from functools import reduce

import numpy as np
import psycopg
import pytest
from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import connection, transaction
from django.db.models import BooleanField, ExpressionWrapper, F, Q

from tests.helpers import sotu_passages, unit_vectors
from vectorstore import search
from vectorstore.limits import TEXT_SEARCH_CONFIG
from vectorstore.loading import ingest, pgcopy
from vectorstore.models import Document
from vectorstore.search.filters import build_filter
from vectorstore.search.plan import nearest

pytestmark = pytest.mark.django_db

FILTERS = [
    None,
    {"category": "Federalist"},
    {"year": {"$lt": 1850}},
    {"$or": [{"category": "Whig"}, {"year": {"$gte": 1990}}]},
    {"president": {"$in": ["Abraham Lincoln", "George Washington"]}},
    {"category": {"$in": []}},  # matches nothing: Django sends no query at all
]


@pytest.fixture(scope="module")
def passages(django_db_setup, django_db_blocker):
    """396 real passages from every address, with their metadata, embedded with the bundled model and
    loaded once for the module (the tests only read them)."""
    table = sotu_passages(list(range(0, 3954, 10)))
    with django_db_blocker.unblock():
        ingest.load(table, progress=False)
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE vectorstore_document")
    yield table
    with django_db_blocker.unblock():
        Document.objects.all().delete()


def orm_nearest(vector, k, filters, metric="cosine", settings=None) -> list[tuple[int, float]]:
    """The ORM path, as search() ran before the hot path: SET LOCALs, then ORDER BY distance LIMIT k."""
    with transaction.atomic(), connection.cursor() as cursor:
        for name, value in (settings or search.index_settings(None, None, None)).items():
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
        queryset = Document.objects.filter(build_filter(filters)).defer("embedding", "search_vector")
        docs = list(search.vector_queryset(queryset, vector, metric, k))
    docs.sort(key=lambda d: d.distance)
    return [(d.pk, d.distance) for d in docs]


def orm_text(text: str, k: int, filters, any_word: bool = False) -> list[int]:
    """The ORM's full-text ranking: every word (websearch), or any of them (hybrid's text side, the
    documents holding every word first)."""
    every = SearchQuery(text, search_type="websearch", config=TEXT_SEARCH_CONFIG)
    tsquery = every
    if any_word:
        words = [SearchQuery(w, search_type="plain", config=TEXT_SEARCH_CONFIG) for w in text.lower().split()]
        tsquery = reduce(operator.or_, words)
    ranked = (
        Document.objects.filter(build_filter(filters))
        .filter(search_vector=tsquery)
        .annotate(
            text_rank=SearchRank(F("search_vector"), tsquery, cover_density=True),
            every_word=ExpressionWrapper(Q(search_vector=every), output_field=BooleanField()),
        )
        .order_by(*(["-every_word"] if any_word else []), "-text_rank", "pk")
    )
    return list(ranked.values_list("pk", flat=True)[:k])


def assert_same(hits: list[search.Hit], expected: list[tuple[int, float]]) -> None:
    assert [h.values["id"] for h in hits] == [pk for pk, _ in expected]
    assert [h.distance for h in hits] == pytest.approx([d for _, d in expected], abs=1e-6)


@pytest.mark.parametrize("metric", ["cosine", "l2", "inner_product"])
def test_vector_and_filtered_search_match_the_orm(passages, metric):
    """Same documents, same order, same distances as the ORM path, for every metric and filter shape."""
    texts = ("the public debt and the revenue", "war with Mexico", "the rights of labor")
    for query in [*(search.embed_query(t) for t in texts), *unit_vectors(2, 384, seed=12)]:
        for filters in FILTERS:
            result = search.search(vector=query, k=10, filters=filters, metric=metric)
            expected = orm_nearest(query, 10, filters, metric)
            if result.exact:  # the index came back short: the answer is then exact
                matches = Document.objects.filter(build_filter(filters))
                expected = sorted(
                    ((d.pk, d.distance) for d in search.vector_queryset(matches, query, metric, 1000)),
                    key=lambda pair: pair[1],
                )[:10]
            assert_same(result.hits, expected)


def test_text_and_hybrid_search_match_the_orm(passages):
    """Text search ranks as the ORM does; hybrid fuses the ORM's two rankings by reciprocal rank fusion."""
    for text in (
        "tariff on imported goods",
        "the army and the navy",
        "Indian tribes",
        "gold silver currency",
    ):
        for filters in (None, {"year": {"$lt": 1900}}):
            result = search.search(text, k=10, mode="text", filters=filters)
            assert [h.values["id"] for h in result.hits] == orm_text(text, 10, filters)

            weight, partial, rrf_k, n = 0.5, 0.2, 30, 40
            options = {"text_weight": weight, "partial_weight": partial, "rrf_k": rrf_k}
            options |= {"vector_k": n, "text_k": n}
            hybrid = search.search(text, k=10, mode="hybrid", filters=filters, hybrid=options)
            vector = search.embed_query(text)
            nearest = orm_nearest(vector, n, filters)
            texts = orm_text(text, n, filters, any_word=True)
            every = set(orm_text(text, 100_000, filters))
            fused: dict[int, float] = {pk: 1.0 / (rrf_k + i + 1) for i, (pk, _) in enumerate(nearest)}
            for i, pk in enumerate(texts):
                w = weight if pk in every else partial
                fused[pk] = fused.get(pk, 0.0) + w / (rrf_k + i + 1)
            text_rank = {pk: i for i, pk in enumerate(texts)}
            order = sorted(fused, key=lambda pk: (-fused[pk], text_rank.get(pk, n), pk))[:10]
            assert [h.values["id"] for h in hybrid.hits] == order
            assert [h.score for h in hybrid.hits] == pytest.approx([fused[pk] for pk in order])
            distances = {
                d.pk: d.distance
                for d in Document.objects.filter(pk__in=order).annotate(
                    distance=search.distance_expression("cosine", vector)
                )
            }
            assert [h.distance for h in hybrid.hits] == pytest.approx(
                [distances[pk] for pk in order], abs=1e-6
            )


def test_hits_build_model_instances_only_when_asked(passages):
    """Hit.values holds the row; Hit.document is the same row as a model instance, its vector deferred."""
    result = search.search(vector=unit_vectors(1, 384, seed=4)[0], k=3)
    hit = result.hits[0]
    assert "document" not in hit.__dict__  # not built yet
    document = hit.document
    stored = Document.objects.get(pk=hit.values["id"])
    assert (document.pk, document.text, document.metadata, document.created_at) == (
        stored.pk,
        stored.text,
        stored.metadata,
        stored.created_at,
    )
    assert document.get_deferred_fields() == {"embedding", "search_vector"}
    assert document.distance == hit.distance and document.score == hit.score
    assert np.allclose(np.asarray(document.embedding), np.asarray(stored.embedding))  # loads on use


def test_hot_path_uses_the_index_and_is_never_prepared(passages):
    """EXPLAIN of the very statement search() sends, with the vector bound in binary, shows the HNSW index;
    after many searches the session holds no prepared statement (so no generic plan can lose the index)."""
    fields = [
        f.attname for f in Document._meta.concrete_fields if f.name not in ("embedding", "search_vector")
    ]
    statement = nearest(Document.objects.all(), fields, "cosine", 10, None)
    conn = pgcopy.django_connection()
    vector = pgcopy.binary_vector(unit_vectors(1, 384, seed=8)[0])
    with psycopg.Cursor(conn) as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # 400 rows: keep the planner honest about the index
        cursor.execute("EXPLAIN " + statement.sql, statement.bind(vector))
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index Scan using vectorstore_document_hnsw" in plan, plan
    # As on a site whose OPTIONS turn psycopg's prepared statements on (Django leaves them off).
    conn.prepare_threshold = 0
    try:
        for _ in range(12):
            search.search(vector=unit_vectors(1, 384, seed=9)[0], k=10)
        with connection.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM pg_prepared_statements")
            assert cursor.fetchone()[0] == 0
    finally:
        conn.prepare_threshold = None


@pytest.mark.django_db(transaction=True)  # search() opens and commits its own transaction here
def test_settings_apply_to_the_query_and_end_with_its_transaction():
    """ef_search reaches the index scan (ef_search 1 returns one row, iterative scans off), and the
    search's SET LOCALs end with the transaction it opens: the session keeps its own settings."""
    vectors = unit_vectors(300, 384, seed=21)
    Document.objects.bulk_create(Document(text=str(i), embedding=v) for i, v in enumerate(vectors))
    with connection.cursor() as cursor:
        cursor.execute("SET enable_seqscan = off")  # 300 rows: keep the planner on the index
        cursor.execute("SET hnsw.ef_search = 33")
    try:
        assert len(search.search(vector=vectors[0], k=10, ef_search=1, iterative_scan="off").hits) == 1
        assert len(search.search(vector=vectors[0], k=10).hits) == 10
        with connection.cursor() as cursor:
            cursor.execute("SHOW hnsw.ef_search")
            assert cursor.fetchone()[0] == "33"
    finally:
        with connection.cursor() as cursor:
            cursor.execute("RESET enable_seqscan")
            cursor.execute("RESET hnsw.ef_search")
