"""Filters that use indexes and cannot be turned into a denial of service: a bounded size, a statement
timeout that becomes a 503 and frees the worker, and declared metadata keys with B-tree indexes."""

from __future__ import annotations

import json

import numpy as np
import psycopg
import pytest
from django.core.management import call_command
from django.db import connection

from tests.helpers import database_url, unit_vectors, unprocessable
from vectorstore.indexing import metadata_keys
from vectorstore.limits import MAX_FILTER_TERMS
from vectorstore.models import Document
from vectorstore.search import search
from vectorstore.search.filters import build_filter, filter_terms

pytestmark = pytest.mark.django_db


@pytest.fixture
def docs():
    vectors = unit_vectors(500, 384, seed=21)
    Document.objects.bulk_create(
        Document(
            external_id=f"d{i}",
            text=f"document {i}",
            embedding=v,
            category=f"c{i % 5}",
            metadata={"year": 1800 + i if i % 7 else str(1800 + i), "lang": "en" if i % 2 else "fr"},
        )
        for i, v in enumerate(vectors)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE vectorstore_document")
    return vectors


def test_an_oversized_filter_is_a_422_naming_the_limit_before_any_sql(
    client, docs, django_assert_num_queries
):
    """10,000 conditions (a 1 MB body) are refused before a single query is planned; the largest filter
    the limit allows is answered."""
    huge = {"$or": [{f"k{i}": i} for i in range(10_000)]}
    with django_assert_num_queries(0):
        response = client.post(
            "/api/search",
            data=json.dumps({"vector": docs[0].tolist(), "filters": huge}),
            content_type="application/json",
        )
    field, message = unprocessable(response)
    assert field == "filters" and f"at most {MAX_FILTER_TERMS}" in message
    largest = {"$or": [{f"k{i}": i} for i in range((MAX_FILTER_TERMS - 1) // 2)]}  # 1 + 2 terms each
    assert MAX_FILTER_TERMS - 2 <= filter_terms(largest) <= MAX_FILTER_TERMS
    response = client.post(
        "/api/search",
        data=json.dumps({"vector": docs[0].tolist(), "filters": largest}),
        content_type="application/json",
    )
    assert response.status_code == 200 and response.json()["results"] == []


@pytest.mark.django_db(transaction=True)
def test_a_search_held_by_a_lock_past_the_timeout_is_a_503_and_frees_the_worker(client, settings):
    """A search waiting on a lock is stopped by statement_timeout: a 503 with Retry-After for the search,
    the listing and the admin's change list; once the lock is gone the same requests answer 200."""
    settings.VECTORSTORE = {**settings.VECTORSTORE, "SEARCH_TIMEOUT_MS": 300}
    Document.objects.create(text="one", embedding=unit_vectors(1, 384, seed=1)[0])
    from django.contrib.auth import get_user_model

    admin = get_user_model().objects.create_superuser("root", password="pw-for-tests")
    locker = psycopg.connect(database_url(connection.settings_dict), autocommit=False)
    try:
        locker.execute("LOCK TABLE vectorstore_document IN ACCESS EXCLUSIVE MODE")
        body = json.dumps({"vector": unit_vectors(1, 384, seed=2)[0].tolist(), "k": 3})
        response = client.post("/api/search", data=body, content_type="application/json")
        assert response.status_code == 503, response.content
        assert response["Retry-After"] == "1" and "300 ms" in response.json()["detail"]
        assert client.get("/api/documents").status_code == 503
        client.force_login(admin)
        response = client.get("/admin/vectorstore/document/")
        assert response.status_code == 503 and response["Retry-After"] == "1"
    finally:
        locker.rollback()
        locker.close()
    assert client.post("/api/search", data=body, content_type="application/json").status_code == 200
    assert client.get("/api/documents").status_code == 200
    assert client.get("/admin/vectorstore/document/").status_code == 200


@pytest.fixture
def declared(settings, docs):
    settings.VECTORSTORE = {**settings.VECTORSTORE, "METADATA_KEYS": {"year": "int", "lang": "text"}}
    created = metadata_keys.ensure_indexes()
    assert len(created) == 2
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE vectorstore_document")
    return docs


def _plan(filters: dict) -> str:
    queryset = Document.objects.filter(build_filter(filters)).values_list("pk")
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")  # 500 rows: a scan would be cheaper still
    return queryset.explain()


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"year": {"$gte": 2290}}, lambda i, y: isinstance(y, int) and y >= 2290),
        ({"year": {"$lt": 1810.5}}, lambda i, y: isinstance(y, int) and y < 1810.5),
        ({"year": {"$gt": 1850, "$lte": 1860}}, lambda i, y: isinstance(y, int) and 1850 < y <= 1860),
        ({"lang": {"$gt": "en"}}, lambda i, y: i % 2 == 0),  # "fr" > "en"
    ],
)
def test_a_range_on_a_declared_key_uses_its_index_and_keeps_its_meaning(declared, filters, expected):
    """Numbers compare with numbers only (the years stored as strings never match a numeric range), the
    same answer as before the key was declared, and the plan uses the key's B-tree index."""
    got = set(Document.objects.filter(build_filter(filters)).values_list("external_id", flat=True))
    years = {f"d{i}": (1800 + i if i % 7 else str(1800 + i)) for i in range(500)}
    want = {eid for eid, y in years.items() if expected(int(eid[1:]), y)}
    assert got == want and got
    plan = _plan(filters)
    assert "_meta_" in plan and "Index" in plan, plan


def test_a_declared_key_ranged_with_another_type_still_answers(declared):
    """A string range on a numeric key cannot use the key's index; it still compares strings with
    strings: only the years stored as text match."""
    got = set(
        Document.objects.filter(build_filter({"year": {"$gte": "2290"}})).values_list(
            "external_id", flat=True
        )
    )
    assert got == {"d490", "d497"}


def test_a_bad_value_never_blocks_a_write_to_a_declared_key(declared):
    """The index holds NULL for a value of another type: such a document is stored, not refused."""
    Document.objects.create(text="x", embedding=unit_vectors(1, 384, seed=3)[0], metadata={"year": [1, 2]})
    Document.objects.create(text="y", embedding=unit_vectors(1, 384, seed=4)[0], metadata={"year": {"a": 1}})


@pytest.mark.django_db(transaction=True)
def test_index_metadata_builds_the_declared_indexes_on_a_live_table(settings, capsys):
    """manage.py index_metadata creates what is missing, concurrently, and says so; again, nothing."""
    settings.VECTORSTORE = {**settings.VECTORSTORE, "METADATA_KEYS": {"price": "float"}}
    call_command("index_metadata", "--json")
    created = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["created"]
    assert len(created) == 1
    call_command("index_metadata", "--json")
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["created"] == []
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", created)
        definition = cursor.fetchone()[0]
        cursor.execute(f'DROP INDEX "{created[0]}"')
    assert "jsonb_typeof" in definition and "numeric" in definition


def test_search_with_a_declared_range_matches_the_exact_answer(declared):
    """Through search(): the few-rows plan over the declared key's index gives the exact order."""
    query = unit_vectors(1, 384, seed=31)[0]
    filters = {"year": {"$gte": 2200}}
    matching = list(Document.objects.filter(build_filter(filters)))
    truth = sorted(matching, key=lambda d: 1 - float(np.dot(np.asarray(d.embedding), query)))[:10]
    result = search(vector=query, k=10, filters=filters)
    assert result.exact and [h.values["id"] for h in result.hits] == [d.pk for d in truth]
