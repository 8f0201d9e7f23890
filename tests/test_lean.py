"""The lean read path (vectorstore.api.lean) against Django's own route, against the real PostgreSQL: every
mode, every error and every header answered through both, compared field by field; every other request
left to Django unchanged; the site's WSGI entry point wraps its application with it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from django.core.handlers.wsgi import WSGIHandler
from django.test import RequestFactory

from tests.helpers import TOPICS, unit_vectors
from vectorstore import search
from vectorstore.api.lean import LeanReads
from vectorstore.embedding import ModelStackMissing
from vectorstore.models import Document

pytestmark = pytest.mark.django_db(transaction=True)  # both paths commit and read on their own

TEXTS = TOPICS[:6]


@pytest.fixture
def docs():
    made = [
        Document.objects.create(text=t, external_id=f"e{i}", category="even" if i % 2 == 0 else "odd")
        for i, t in enumerate(TEXTS)
    ]
    vectors = unit_vectors(30, 384, seed=5)
    made += Document.objects.bulk_create(
        Document(text=f"filler passage {i} on tariffs", embedding=v, category="filler", metadata={"n": i})
        for i, v in enumerate(vectors)
    )
    return made


def _call(app, environ: dict) -> tuple[int, dict[str, str], bytes]:
    seen = {}

    def start_response(status, headers, exc_info=None):
        seen["status"], seen["headers"] = status, headers

    chunks = app(dict(environ), start_response)
    body = b"".join(chunks)
    if hasattr(chunks, "close"):
        chunks.close()
    return int(seen["status"].split()[0]), dict(seen["headers"]), body


def _environ(method: str, path: str, body: object = None, content_type: str = "application/json", **extra):
    factory = RequestFactory()
    if method == "POST":
        data = body if isinstance(body, str | bytes) else json.dumps(body)
        request = factory.post(path, data=data, content_type=content_type, **extra)
    else:
        request = factory.get(path, **extra)
    return request.environ


def _both(method: str, path: str, body: object = None, **extra) -> tuple:
    """(lean, django): each (status, headers, parsed body), the body's took_ms left out."""
    answers = []
    for app in (LeanReads(WSGIHandler()), WSGIHandler()):
        status, headers, raw = _call(app, _environ(method, path, body, **extra))
        headers.pop("Content-Length", None)
        parsed = json.loads(raw) if headers.get("Content-Type") == "application/json" else raw
        if isinstance(parsed, dict):
            parsed.pop("took_ms", None)
        answers.append((status, headers, parsed))
    return tuple(answers)


def _same(method: str, path: str, body: object = None, **extra) -> tuple:
    lean, django = _both(method, path, body, **extra)
    assert lean[0] == django[0], (lean, django)
    assert lean[1] == django[1]
    assert lean[2] == django[2]
    return lean


SEARCHES = [
    {"query": "iron and steel duties", "k": 3},
    {"vector": [float(x) for x in unit_vectors(1, 384, seed=9)[0]], "k": 5},
    {"query": "railroads", "k": 4, "filters": {"category": {"$in": ["odd", "even"]}}},
    {"query": "tariff", "mode": "text", "k": 3},
    {"query": "peace treaty with Spain", "mode": "hybrid", "k": 3},
    {"query": "peace treaty", "mode": "hybrid", "k": 3, "hybrid": {"text_weight": 0.4}},
    {"query": "money", "k": 3, "mmr": {"lambda_mult": 0.5, "fetch_k": 8}},
    {"query": "ships", "k": 3, "metric": "l2", "ef_search": 40},
    {"query": "ships", "unknown_field": 1},  # ignored by the route's schema, and here
]


def test_every_search_mode_answers_the_same(docs):
    # One test for all of them: a transactional test's data is made again for each (seconds each).
    for body in SEARCHES:
        status, headers, answer = _same("POST", "/api/search", body)
        assert status == 200 and answer["results"] and headers["X-Vectorstore-Database"] == "default", body


BAD = [
    {"query": "x", "k": 0},
    {"query": "x", "k": "many"},
    {"vector": [1.0, 2.0]},
    {"query": "x", "mode": "sideways"},
    {"query": "x", "filters": {"$bogus": 1}},
    {},
    [1, 2],
]


def test_every_refusal_is_the_routes_own(docs):
    for body in BAD:
        status, _, answer = _same("POST", "/api/search", body)
        assert status in (400, 422), (body, answer)


def test_nan_malformed_json_and_other_content_types_are_the_routes_own(docs):
    nan = '{"vector": [' + ", ".join(["NaN"] * 384) + "]}"
    assert _same("POST", "/api/search", nan)[0] == 422
    assert _same("POST", "/api/search", '{"query": ')[0] == 400
    _same("POST", "/api/search", "query=x", content_type="application/x-www-form-urlencoded")


def test_similar_and_its_errors(docs):
    first = docs[0].pk
    status, _, answer = _same("GET", f"/api/documents/{first}/similar?k=3")
    assert status == 200 and len(answer["results"]) == 3
    assert _same("GET", "/api/documents/999999/similar")[0] == 404
    assert _same("GET", f"/api/documents/{first}/similar?k=x")[0] == 422
    assert _same("GET", f"/api/documents/{first}/similar?k=0")[0] == 422


def test_timeouts_and_a_missing_model_stack_answer_the_same(docs, monkeypatch):
    def timed_out(**kwargs):
        raise search.SearchTimeout(2500)

    monkeypatch.setattr(search, "search", timed_out)
    status, headers, answer = _same("POST", "/api/search", {"query": "x"})
    assert status == 503 and headers["Retry-After"] == "2" and "2500 ms" in answer["detail"]

    def no_stack(**kwargs):
        raise ModelStackMissing("no torch here")

    monkeypatch.setattr(search, "search", no_stack)
    assert _same("POST", "/api/search", {"query": "x"})[0] == 501


def test_every_other_request_is_djangos(docs):
    """Lists, gets, writes, health, docs, the admin and a trailing slash: passed through unchanged."""
    seen = []

    def application(environ, start_response):
        seen.append((environ["REQUEST_METHOD"], environ["PATH_INFO"]))
        return WSGIHandler()(environ, start_response)

    lean = LeanReads(application)
    for method, path in [
        ("GET", "/api/documents"),
        ("GET", f"/api/documents/{docs[0].pk}"),
        ("GET", "/api/health"),
        ("GET", "/api/docs"),
        ("GET", "/admin/login/"),
        ("POST", "/api/search/"),
        ("GET", "/api/search"),
        ("POST", "/api/documents"),
    ]:
        _call(lean, _environ(method, path, {"text": "x"} if method == "POST" else None))
    assert len(seen) == 8
    seen.clear()
    _call(lean, _environ("POST", "/api/search", {"query": "tariff"}))
    assert seen == []  # answered on the lean path


def test_the_site_serves_search_on_the_lean_path_and_can_turn_it_off(docs, settings):
    from project.wsgi import application

    assert isinstance(application, LeanReads)
    vector = [float(x) for x in np.asarray(docs[10].embedding)]
    status, headers, body = _call(application, _environ("POST", "/api/search", {"vector": vector, "k": 1}))
    assert status == 200 and json.loads(body)["results"][0]["id"] == docs[10].pk
    assert headers["X-Vectorstore-Database"] == "default" and headers["X-Content-Type-Options"] == "nosniff"
    settings.VECTORSTORE = {**settings.VECTORSTORE, "LEAN_READS": False}
    assert _call(application, _environ("POST", "/api/search", {"vector": vector, "k": 1}))[0] == 200


def test_search_auth_asks_both_paths_for_a_token(docs, settings):
    """SEARCH_AUTH on: the route answers 401 without a bearer token, 200 with one (and records no use);
    the lean path answers a request with a valid token and hands one without to Django (its 401)."""
    from django.contrib.auth.models import User
    from ninja.testing import TestClient

    from vectorstore.api import build_router
    from vectorstore.models import ApiToken

    user = User.objects.create_user("reader")
    token, key = ApiToken.issue(user, "reads")
    settings.VECTORSTORE = {**settings.VECTORSTORE, "SEARCH_AUTH": True}
    client = TestClient(build_router())
    assert client.post("/search", json={"query": "tariff"}).status_code == 401
    assert client.get(f"/documents/{docs[0].pk}").status_code == 401
    answered = client.post("/search", json={"query": "tariff"}, headers={"Authorization": f"Bearer {key}"})
    assert answered.status_code == 200 and answered.json()["results"]
    token.refresh_from_db()
    assert token.last_used_at is None  # a read is looked up, never written

    handed = []

    def application(environ, start_response):
        handed.append(environ["PATH_INFO"])
        start_response("401 Unauthorized", [("Content-Type", "application/json")])
        return [b'{"detail": "Unauthorized"}']

    lean = LeanReads(application)
    assert _call(lean, _environ("POST", "/api/search", {"query": "tariff"}))[0] == 401 and handed
    handed.clear()
    status, _, body = _call(
        lean, _environ("POST", "/api/search", {"query": "tariff"}, HTTP_AUTHORIZATION=f"Bearer {key}")
    )
    assert status == 200 and handed == [] and json.loads(body)["results"]
    bad = _environ("POST", "/api/search", {"query": "tariff"}, HTTP_AUTHORIZATION="Bearer vs_not-a-token")
    assert _call(lean, bad)[0] == 401 and handed == ["/api/search"]
