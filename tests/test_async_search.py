"""asearch(), asimilar() and the async queryset helpers against the real database: the same answers as
the sync forms in every mode, one pipelined round trip on a pooled async connection, the statement
timeout and task cancellation; the API's async views under uvicorn answering as the WSGI views do."""

from __future__ import annotations

import asyncio
import json
import time

import psycopg
import pytest
from django.db import connection

from benchmarks.harness import request, request_with_headers, serve
from tests.helpers import close_async_thread_connections, database_url, unit_vectors
from tests.test_search import fixture_docs, make_corpus  # noqa: F401 (a fixture)
from vectorstore.models import Document
from vectorstore.search import (
    SearchTimeout,
    aclose,
    aio,
    asearch,
    asimilar,
    search,
    similar,
)

# The async pool's connections are not the test's: they see committed rows only.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _close_thread_connections():
    """Look-ups the process had not cached ran on asgiref's thread, whose connection nothing closes."""
    yield
    close_async_thread_connections()


def _answer(result) -> tuple:
    hits = [
        (h.values["id"], round(h.score, 5), None if h.distance is None else round(h.distance, 5))
        for h in result.hits
    ]
    return hits, result.mode, result.metric, result.exact, result.details, result.database


def _both(cases: list[dict]) -> tuple[list, list]:
    """Each case searched by search() here, and by asearch() on one event loop (its pool closed after)."""
    expected = [_answer(search(**case)) for case in cases]

    async def run_all() -> list:
        try:
            return [_answer(await asearch(**case)) for case in cases]
        finally:
            await aclose()

    return expected, asyncio.run(run_all())


def test_asearch_answers_as_search_does_in_every_mode(fixture_docs):  # noqa: F811
    """Vector (by text and by vector, three metrics), filtered, text, hybrid (adaptive and weighted), MMR:
    the same hits, scores, distances and details."""
    target = Document.objects.filter(text__icontains="Indian").first()
    other = Document.objects.exclude(pk=target.pk).first()
    query = target.text[:120]
    cases = [
        {"query": query, "k": 5},
        {"vector": other.embedding, "k": 7},
        {"vector": other.embedding, "k": 7, "metric": "l2"},
        {"vector": other.embedding, "k": 7, "metric": "inner_product"},
        {"query": query, "k": 5, "filters": {"category": target.category}},
        {"query": "Indian tribes", "mode": "text", "k": 5},
        {"query": "Indian tribes treaties", "mode": "hybrid", "k": 6},
        {"query": "Indian tribes treaties", "mode": "hybrid", "k": 6, "hybrid": {"text_weight": 2.0}},
        {"query": query, "k": 5, "mmr": {"lambda_mult": 0.5, "fetch_k": 20}},
    ]
    expected, got = _both(cases)
    for case, want, have in zip(cases, expected, got, strict=True):
        assert have == want, case
        assert want[0], case  # each case finds something: the comparison is not of two empty lists


def test_a_filtered_asearch_takes_the_same_plan_as_search(settings):
    """A rare filter is answered by an exact scan of its matches, a broad one through the index's
    iterative scan, a filter matching nothing by nothing: the same rows and the same `exact` both ways."""
    vectors = make_corpus(3000)
    cases = [
        {"vector": vectors[5], "k": 10, "filters": {"category": "rare"}},
        {"vector": vectors[5], "k": 10, "filters": {"category": "common", "parity": "even"}},
        {"vector": vectors[5], "k": 10, "filters": {"category": {"$in": []}}},
        {"vector": vectors[5], "k": 10, "ef_search": 100, "iterative_scan": "strict_order"},
    ]
    expected, got = _both(cases)
    assert got == expected
    assert [e[3] for e in expected[:2]] == [True, False]


def test_the_async_queryset_helpers_return_what_the_sync_ones_do():
    """anearest (by vector, within a queryset) and asimilar_to return the same documents, with distance;
    asimilar leaves the document itself out."""
    vectors = unit_vectors(60, 384, seed=3)
    docs = Document.objects.bulk_create(
        Document(text=f"t{i}", embedding=v, category="a" if i % 2 else "b") for i, v in enumerate(vectors)
    )
    subset = Document.objects.filter(category="a")
    near = subset.nearest(vectors[0], k=5)
    alike = Document.objects.similar_to(docs[1], k=4)
    same = similar(docs[1], k=4)

    async def run_all():
        try:
            return (
                await subset.anearest(vectors[0], k=5),
                await Document.objects.asimilar_to(docs[1], k=4),
                await asimilar(docs[1], k=4),
            )
        finally:
            await aclose()

    anear, aalike, asame = asyncio.run(run_all())
    assert [(d.pk, round(d.distance, 5)) for d in anear] == [(d.pk, round(d.distance, 5)) for d in near]
    assert all(d.category == "a" for d in anear)
    assert [d.pk for d in aalike] == [d.pk for d in alike] and docs[1].pk not in [d.pk for d in aalike]
    assert _answer(asame) == _answer(same)


def test_one_async_search_is_one_round_trip_in_one_transaction(monkeypatch):
    """BEGIN, the settings, the SELECT and COMMIT go in one pipeline on a connection of the pool (named
    'vectorstore async'), which stays open for the next search."""
    vectors = unit_vectors(20, 384, seed=4)
    Document.objects.bulk_create(Document(text=f"t{i}", embedding=v) for i, v in enumerate(vectors))
    sent = []
    real = aio.pipelined

    def spy(settings_, statements, vector, own):
        out = real(settings_, statements, vector, own)
        sent.append([sql.split()[0] for _, sql, _ in out])
        return out

    monkeypatch.setattr(aio, "pipelined", spy)

    async def run_all():
        try:
            first = await asearch(vector=vectors[0], k=3)
            second = await asearch(vector=vectors[1], k=3)
            return first, second, (await aio.pool_for("default")).get_stats()
        finally:
            await aclose()

    first, second, stats = asyncio.run(run_all())
    assert first.hits[0].values["id"] == Document.objects.get(text="t0").pk
    assert second.hits[0].values["id"] == Document.objects.get(text="t1").pk
    assert sent[0] == ["BEGIN", "SELECT", "SELECT", "COMMIT"]
    assert stats["requests_num"] == 2 and stats.get("connections_errors", 0) == 0


def _locked(settings_dict: dict) -> psycopg.Connection:
    locker = psycopg.connect(database_url(settings_dict), autocommit=False)
    locker.execute("LOCK TABLE vectorstore_document IN ACCESS EXCLUSIVE MODE")
    return locker


def _waiting(watcher: psycopg.Connection) -> int:
    """Backends of the async pool waiting on a lock now."""
    return watcher.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'",
        [aio.APPLICATION_NAME],
    ).fetchone()[0]


def test_an_async_search_past_the_timeout_raises_search_timeout(settings):
    """The statement timeout stops an async search waiting on a lock: SearchTimeout, as search() raises;
    the pool's connection then serves the next search."""
    settings.VECTORSTORE = {**settings.VECTORSTORE, "SEARCH_TIMEOUT_MS": 300}
    vector = unit_vectors(1, 384, seed=1)[0]
    Document.objects.create(text="one", embedding=vector)
    locker = _locked(connection.settings_dict)

    async def timed_out() -> BaseException | None:
        try:
            await asearch(vector=vector, k=3)
        except SearchTimeout as exc:
            return exc
        return None

    async def after():
        try:
            return await asearch(vector=vector, k=3)
        finally:
            await aclose()

    loop = asyncio.new_event_loop()
    try:
        exc = loop.run_until_complete(timed_out())
        locker.rollback()
        assert isinstance(exc, SearchTimeout) and exc.timeout_ms == 300
        assert len(loop.run_until_complete(after()).hits) == 1
    finally:
        locker.close()
        loop.close()


def test_cancelling_an_async_search_cancels_its_query_on_the_server():
    """A task cancelled while its search waits on a lock raises CancelledError; its query is no longer
    running on the server, and the pool's connection serves the next search once the lock is gone."""
    vector = unit_vectors(1, 384, seed=2)[0]
    Document.objects.create(text="one", embedding=vector)
    locker = _locked(connection.settings_dict)
    watcher = psycopg.connect(database_url(connection.settings_dict), autocommit=True)

    async def scenario():
        try:
            task = asyncio.create_task(asearch(vector=vector, k=3))
            deadline = time.monotonic() + 20
            while _waiting(watcher) == 0:  # the search has reached the server and waits there
                assert time.monotonic() < deadline, "the search never waited on the lock"
                assert not task.done(), task
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            still = _waiting(watcher)  # psycopg cancelled it before the task ended
            locker.rollback()
            after = await asearch(vector=vector, k=3)
            return still, after, (await aio.pool_for("default")).get_stats()
        finally:
            await aclose()

    try:
        still, after, stats = asyncio.run(scenario())
    finally:
        locker.close()
        watcher.close()
    assert still == 0
    assert len(after.hits) == 1
    assert stats.get("connections_lost", 0) == 0


@pytest.mark.slow
def test_the_async_api_under_uvicorn_answers_as_the_wsgi_api(clean_env, fixture_docs, client):  # noqa: F811
    """`make serve-asgi`'s server (uvicorn, project.asgi): search (vector, filtered, hybrid, MMR),
    similar and their 404 and 422 answers are the WSGI views' answers, sent over the async pool; a
    search held past the timeout is a 503 with Retry-After; the admin's static files are served."""
    some = list(Document.objects.order_by("pk")[:3])
    bodies = [
        {"vector": [float(x) for x in some[0].embedding], "k": 5},
        {"vector": [float(x) for x in some[1].embedding], "k": 5, "filters": {"category": some[1].category}},
        {"query": "Indian tribes treaties", "mode": "hybrid", "k": 5},
        {"query": "the public debt", "k": 5, "mmr": {"lambda_mult": 0.3}},
        {"vector": [0.1] * 3, "k": 5},
        {"vector": [float(x) for x in some[0].embedding], "k": 0},
    ]
    paths = [f"/api/documents/{some[2].pk}/similar?k=4", "/api/documents/999999999/similar"]

    def comparable(status: int, payload: bytes) -> tuple:
        body = json.loads(payload)
        if isinstance(body, dict):
            body.pop("took_ms", None)
        return status, body

    wsgi = [
        comparable(r.status_code, r.content)
        for r in [client.post("/api/search", json.dumps(b), content_type="application/json") for b in bodies]
        + [client.get(p) for p in paths]
    ]
    env = {**clean_env, "VECTORSTORE_SEARCH_TIMEOUT_MS": "500", "VECTORSTORE_PRELOAD_MODEL": "0"}
    watcher = psycopg.connect(database_url(connection.settings_dict), autocommit=True)
    try:
        with serve(database_url(connection.settings_dict), workers=1, env=env, server="uvicorn") as port:
            asgi = [comparable(*request(port, "POST", "/api/search", b)) for b in bodies]
            asgi += [comparable(*request(port, "GET", p)) for p in paths]
            pooled = watcher.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s", [aio.APPLICATION_NAME]
            ).fetchone()[0]
            locker = _locked(connection.settings_dict)
            try:
                status, headers, payload = request_with_headers(port, "POST", "/api/search", bodies[0])
            finally:
                locker.rollback()
                locker.close()
            assert request(port, "POST", "/api/search", bodies[0])[0] == 200
            # Static files come from the ASGI entry point (no WhiteNoise middleware under ASGI).
            static_status, static_body = request(port, "GET", "/static/admin/css/base.css")
    finally:
        watcher.close()
    assert [a[0] for a in wsgi] == [200, 200, 200, 200, 422, 422, 200, 404]
    assert asgi == wsgi
    assert pooled >= 1  # the server's searches went over the async pool
    assert status == 503 and headers["Retry-After"] == "1" and "500 ms" in json.loads(payload)["detail"]
    assert static_status == 200 and len(static_body) > 1000
