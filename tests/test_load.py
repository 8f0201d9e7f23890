"""Bounded API load against the production server: 8 clients mixing searches, reads and inserts for a
fixed time (VECTORSTORE_LOAD_SECONDS, 10 s by default) must see no error, and every insert answered 201
must be stored exactly once. Timings are printed, never asserted: benchmarks/bench_load.py records them.
"""

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection

from benchmarks.harness import MIX, request, run_load, serve
from tests.helpers import ROOT, database_url, unit_vectors
from vectorstore.loading import ingest
from vectorstore.models import ApiToken, Document


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)  # the server's own connections must see the rows
def test_mixed_load_has_no_errors_and_stores_each_insert_once(clean_env):
    passages = pq.read_table(ROOT / "fixtures" / "sotu.parquet").slice(0, 400)
    vectors = unit_vectors(len(passages), 384, seed=5)
    ingest.load(
        passages.append_column("embedding", pa.array(list(vectors), type=pa.list_(pa.float32()))),
        progress=False,
    )
    user = get_user_model().objects.create_user("load-writer")
    user.user_permissions.add(Permission.objects.get(codename="add_document"))
    _, token = ApiToken.issue(user, "load test")
    categories = sorted(set(passages.column("category").to_pylist()))
    ids = list(Document.objects.values_list("pk", flat=True))

    with serve(database_url(connection.settings_dict), workers=2, env=clean_env) as port:
        result = run_load(
            port,
            token=token,
            vectors=np.asarray(vectors),
            texts=passages.column("text").to_pylist(),
            categories=categories,
            ids=ids,
            clients=8,
            seconds=float(os.environ.get("VECTORSTORE_LOAD_SECONDS", "10")),
        )
        assert request(port, "GET", "/api/health")[0] == 200
    print(result.report())

    assert result.error_count == 0, result.errors
    assert all(result.latencies[op] for op in MIX), result.report()  # every kind of request was made
    stored = dict(Document.objects.filter(external_id__startswith="load-").values_list("external_id", "pk"))
    assert stored == result.created
    assert Document.objects.count() == len(ids) + len(result.created)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_under_the_most_expensive_filters_allowed_the_site_still_answers(clean_env):
    """Four clients send, without pause, the largest filter the limits allow, of conditions no index
    serves; meanwhile /api/health and plain searches, sent while those are in flight, answer 200, and
    every hostile request ends as a 200 or a 503 (its statement stopped at the timeout), never a 500."""
    import threading

    from vectorstore.limits import MAX_FILTER_TERMS

    passages = pq.read_table(ROOT / "fixtures" / "sotu.parquet").slice(0, 400)
    vectors = unit_vectors(len(passages), 384, seed=6)
    ingest.load(
        passages.append_column("embedding", pa.array(list(vectors), type=pa.list_(pa.float32()))),
        progress=False,
    )
    from vectorstore.search.filters import filter_terms

    # As many conditions as the limit allows, of kinds no index serves ($ne, $nin).
    conditions: list[dict] = []
    while filter_terms({"$or": [*conditions, {"year": {"$ne": 0}}]}) <= MAX_FILTER_TERMS:
        i = len(conditions)
        conditions.append({f"k{i}": {"$nin": [i]}} if i % 2 else {"year": {"$ne": i}})
    hostile = {"$or": conditions}
    env = {**clean_env, "VECTORSTORE_SEARCH_TIMEOUT_MS": "2000"}
    with serve(database_url(connection.settings_dict), workers=2, env=env) as port:
        stop = threading.Event()
        lock = threading.Lock()
        in_flight = 0
        statuses: list[int] = []

        def attacker(n: int) -> None:
            nonlocal in_flight
            body = {"vector": vectors[n].tolist(), "k": 10, "filters": hostile}
            while not stop.is_set():
                with lock:
                    in_flight += 1
                status, _ = request(port, "POST", "/api/search", body)
                with lock:
                    in_flight -= 1
                    statuses.append(status)

        threads = [threading.Thread(target=attacker, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        try:
            while len(statuses) < 4:  # the attack is under way: answers have come back
                stop.wait(0.05)
            seen_in_flight, answers = [], []
            for i in range(20):
                with lock:
                    seen_in_flight.append(in_flight)
                answers.append(request(port, "GET", "/api/health")[0])
                answers.append(
                    request(port, "POST", "/api/search", {"vector": vectors[i].tolist(), "k": 5})[0]
                )
        finally:
            stop.set()
            for t in threads:
                t.join()
    assert answers == [200] * 40
    assert max(seen_in_flight) >= 1  # the answers came while hostile searches were running
    assert set(statuses) <= {200, 503}, statuses
