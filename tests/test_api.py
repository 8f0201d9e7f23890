"""The REST API through ninja's TestClient and Django's client: routes, auth, bad input as 4xx."""

import json

import numpy as np
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core.management import call_command
from django.test import Client
from ninja.testing import TestClient

from tests.helpers import unit_vectors
from vectorstore.api import router
from vectorstore.models import ApiToken, Document

pytestmark = pytest.mark.django_db


@pytest.fixture
def api():
    return TestClient(router)


@pytest.fixture
def docs():
    vectors = unit_vectors(40, 384, seed=11)
    return Document.objects.bulk_create(
        Document(
            external_id=f"e{i}",
            text=f"passage {i} about {'railroads' if i % 2 else 'tariffs'}",
            embedding=v,
            category="even" if i % 2 == 0 else "odd",
            metadata={"n": i},
        )
        for i, v in enumerate(vectors)
    )


@pytest.fixture
def writer():
    user = get_user_model().objects.create_user("writer", password="pw-for-tests")
    user.user_permissions.add(*Permission.objects.filter(codename__in=["add_document", "delete_document"]))
    return user


@pytest.fixture
def token(writer, capsys):
    call_command("create_api_token", "writer", "--name", "tests")
    return capsys.readouterr().out.strip()


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def test_search_by_vector_with_filters(api, docs):
    vector = np.asarray(docs[4].embedding).tolist()
    response = api.post("/search", json={"vector": vector, "k": 3, "filters": {"category": "even"}})
    assert response.status_code == 200
    body = response.json()
    assert body["results"][0]["external_id"] == "e4"
    assert all(r["category"] == "even" for r in body["results"])
    assert {"took_ms", "mode", "metric", "exact"} <= set(body)
    assert body["results"][0]["distance"] == pytest.approx(0, abs=1e-6)
    assert body["results"][0]["score"] == pytest.approx(1, abs=1e-6)


def test_search_by_text_hybrid_and_text_modes(api, docs):
    for mode in ("vector", "hybrid", "text"):
        response = api.post("/search", json={"query": "tariffs", "k": 5, "mode": mode})
        assert response.status_code == 200, response.json()
        results = response.json()["results"]
        assert len(results) == 5
        if mode == "text":
            assert all("tariffs" in r["text"] for r in results)


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"query": "x", "k": 0}, "k"),
        ({"query": "x", "k": 1001}, "k"),
        ({"vector": [0.1, 0.2]}, "vector"),
        ({"query": ""}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"query": "x", "filters": {"n": {"$regex": "a"}}}, "$regex"),
        ({"query": "x", "filters": {"created_at": {"$gt": "not a date"}}}, "created_at"),
        ({"query": "x", "mode": "fuzzy"}, "mode"),
        ({"query": "x", "probes": 0}, "probes"),
        ({"query": "x", "ef_search": 5000}, "ef_search"),
        ({"vector": [0.0] * 100_000}, "vector"),
        ({}, "query"),
    ],
)
def test_bad_search_is_422_naming_the_field(api, payload, field):
    response = api.post("/search", json=payload)
    assert response.status_code == 422, response.json()
    assert field in json.dumps(response.json())


def test_nan_vector_is_refused(client):
    body = '{"vector": [' + ",".join(["NaN"] + ["0.1"] * 383) + "]}"
    response = client.post("/api/search", data=body, content_type="application/json")
    assert response.status_code == 422 and "vector" in response.content.decode()


def test_malformed_json_is_400(client):
    response = client.post("/api/search", data="{not json", content_type="application/json")
    assert response.status_code == 400


def test_list_get_similar_and_404(api, docs):
    page = api.get("/documents?category=odd&limit=5").json()
    assert [d["external_id"] for d in page["items"]] == ["e1", "e3", "e5", "e7", "e9"]
    assert page["next_offset"] == 5
    assert api.get("/documents?limit=101").status_code == 422
    one = api.get(f"/documents/{docs[2].pk}")
    assert one.status_code == 200 and one.json()["external_id"] == "e2"
    assert api.get("/documents/999999999").status_code == 404
    similar = api.get(f"/documents/{docs[2].pk}/similar?k=4").json()["results"]
    assert len(similar) == 4 and docs[2].pk not in [r["id"] for r in similar]
    assert api.get(f"/documents/{docs[2].pk}/similar?k=0").status_code == 422


def test_anonymous_writes_are_refused(api, docs):
    assert api.post("/documents", json={"text": "hello"}).status_code == 401
    assert api.delete(f"/documents/{docs[0].pk}").status_code == 401
    assert Document.objects.count() == 40


def test_an_anonymous_write_through_django_is_a_401_saying_what_is_needed(docs):
    """Through the full stack (sessions and CSRF middleware on): not a 403 'CSRF check failed' but a 401
    that names both ways in."""
    response = Client(enforce_csrf_checks=True).post(
        "/api/documents", {"text": "hello"}, content_type="application/json"
    )
    assert response.status_code == 401
    detail = response.json()["detail"]
    assert "Bearer" in detail and "log in" in detail


def test_token_writes_embed_and_copy(api, token):
    payload = [
        {"text": "The tariff on imported iron", "external_id": "t1", "metadata": {"src": "api"}},
        {"text": "Railroads across the continent", "category": "transport"},
    ]
    response = api.post("/documents", json=payload, headers=bearer(token))
    assert response.status_code == 201, response.json()
    ids = response.json()["ids"]
    stored = Document.objects.in_bulk(ids)
    assert stored[ids[0]].external_id == "t1" and stored[ids[0]].metadata == {"src": "api"}
    assert stored[ids[1]].category == "transport"
    assert np.linalg.norm(np.asarray(stored[ids[0]].embedding)) == pytest.approx(1, abs=1e-5)
    single = api.post("/documents", json={"text": "one more"}, headers=bearer(token))
    assert single.status_code == 201 and len(single.json()["ids"]) == 1
    duplicate = api.post("/documents", json={"text": "again", "external_id": "t1"}, headers=bearer(token))
    assert duplicate.status_code == 409 and "external_id" in duplicate.json()["detail"]
    assert "Key (external_id)=(t1) already exists" in duplicate.json()["detail"]
    assert "CONTEXT" not in duplicate.json()["detail"] and "COPY" not in duplicate.json()["detail"]
    assert api.delete(f"/documents/{ids[1]}", headers=bearer(token)).status_code == 204
    assert api.delete(f"/documents/{ids[1]}", headers=bearer(token)).status_code == 404
    assert Document.objects.count() == 2


def test_token_without_permission_is_403(api, capsys):
    get_user_model().objects.create_user("reader", password="pw")
    call_command("create_api_token", "reader")
    key = capsys.readouterr().out.strip()
    response = api.post("/documents", json={"text": "x"}, headers=bearer(key))
    assert response.status_code == 403 and "vectorstore.add_document" in response.json()["detail"]
    assert api.post("/documents", json={"text": "x"}, headers=bearer("vs_wrong")).status_code == 401


def test_tokens_are_stored_hashed(token):
    stored = ApiToken.objects.get()
    assert token not in (stored.key_hash, stored.hint) and stored.key_hash == ApiToken.digest(token)
    assert len(stored.key_hash) == 64 and token.startswith(stored.hint)


def test_session_writes_need_csrf(writer):
    client = Client(enforce_csrf_checks=True)
    client.force_login(writer)
    body = json.dumps({"text": "from the browser"})
    assert client.post("/api/documents", data=body, content_type="application/json").status_code == 403
    client.get("/admin/login/")  # sets the CSRF cookie
    csrf = client.cookies["csrftoken"].value
    response = client.post(
        "/api/documents", data=body, content_type="application/json", headers={"X-CSRFToken": csrf}
    )
    assert response.status_code == 201, response.content
    assert Document.objects.filter(text="from the browser").exists()


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"text": ""}, "text"),
        ([], "body"),
        ([{"text": "a", "external_id": "x"}] * 2, "external_id"),
        ({"text": "a", "metadata": "nope"}, "metadata"),
    ],
)
def test_bad_documents_are_422(api, token, payload, field):
    response = api.post("/documents", json=payload, headers=bearer(token))
    assert response.status_code == 422, response.json()
    assert field in json.dumps(response.json())
    assert Document.objects.count() == 0


def test_openapi_documents_every_route(client):
    schema = client.get("/api/openapi.json").json()
    assert {
        "/api/search",
        "/api/documents",
        "/api/documents/{doc_id}",
        "/api/documents/{doc_id}/similar",
    } <= set(schema["paths"])
    assert client.get("/api/docs").status_code == 200


def test_oversized_bodies_are_refused_before_parsing(client, settings):
    """A body over DATA_UPLOAD_MAX_MEMORY_SIZE is a 400 at once; a 1 MB query is a 422 naming the field."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    body = '{"query": "' + "x" * (2 * 1024 * 1024) + '"}'
    response = client.post("/api/search", data=body, content_type="application/json")
    assert response.status_code == 400  # refused on its length: parsed, it would be the 422 below
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024
    response = client.post("/api/search", data=body, content_type="application/json")
    assert response.status_code == 422 and "query" in response.content.decode()


def test_the_interactive_documentation_sends_a_body_that_works(client, docs):
    """/api/docs' "Try it out" sends the schema's example: one of query and vector (a 200, not the 422 an
    example of every field gave), and the page has an introduction."""
    schema = client.get("/api/openapi.json").json()
    assert "422" in schema["info"]["description"] and "POST /search" in schema["info"]["description"]
    example = schema["components"]["schemas"]["SearchIn"]["example"]
    assert ("query" in example) != ("vector" in example)
    response = client.post("/api/search", example, content_type="application/json")
    assert response.status_code == 200, response.content


def test_every_422_has_one_shape(client, api, token, docs):
    """A schema's refusal and the API's own checks (filters, limits, batches, duplicate ids) answer alike:
    {"detail": [{"type", "loc", "msg"}]}, loc naming the field in the body or the query string."""
    from tests.helpers import unprocessable

    cases = [
        (client.post("/api/search", {"vector": [1.0], "k": 0}, content_type="application/json"), "k"),
        (
            client.post(
                "/api/search",
                {"query": "x", "filters": {"year": {"$bad": 1}}},
                content_type="application/json",
            ),
            "filters.year",
        ),
        (client.get("/api/documents", {"limit": 0}), "limit"),
        (client.get(f"/api/documents/{docs[0].pk}/similar", {"k": 0}), "k"),
        (
            api.post("/documents", json=[{"text": "a", "external_id": "d"}] * 2, headers=bearer(token)),
            "external_id",
        ),
    ]
    for response, field in cases:
        found, message = unprocessable(response)
        assert found.startswith(field) and message, (field, response.content)
