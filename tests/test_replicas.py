"""Read replicas, for real: a primary and a streaming replica of it (``python -m project.db replica``),
both started by this module in a folder of its own, and the site served by gunicorn as `make run`
serves it, with ``DATABASE_REPLICA_URLS`` naming the replica. Every wait is on something observable
(a WAL position, a count, a response), never a sleep."""

from __future__ import annotations

import dataclasses
import http.client
import http.cookiejar
import json
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from benchmarks.harness import serve
from tests.helpers import unit_vectors

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow

ROWS = 2000
MAX_LAG = 3.0  # seconds: the server's VECTORSTORE_REPLICA_MAX_LAG
SKIP_SECONDS = 1.0  # the server's VECTORSTORE_REPLICA_SKIP_SECONDS


@dataclass
class Cluster:
    env: dict[str, str]
    primary_url: str
    replica_url: str
    port: int
    token: str
    vectors: np.ndarray
    server_env: dict[str, str] | None = None  # the site's environment, replica configured

    def db(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, "-m", "project.db", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
        )
        if check:
            assert result.returncode == 0, result.stderr
        return result

    def manage(self, *args: str, extra_env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """A manage.py command against the primary, with the replica configured as the site has it
        (migrations and loads must still go to the primary: a replica refuses writes)."""
        env = {**self.env, "DATABASE_URL": self.primary_url, "DATABASE_REPLICA_URLS": self.replica_url}
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env={**env, **(extra_env or {})},
            capture_output=True,
            text=True,
            timeout=300,
        )

    def call(self, method: str, path: str, body=None, token: str | None = None) -> tuple[int, dict, dict]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=None if body is None else json.dumps(body), headers=headers)
            response = conn.getresponse()
            raw = response.read()
            return response.status, dict(response.getheaders()), json.loads(raw) if raw else {}
        finally:
            conn.close()

    def search(self, vector: np.ndarray, token: str | None = None, **filters: str) -> tuple[int, dict]:
        body = {"vector": vector.tolist(), "k": 5, **({"filters": filters} if filters else {})}
        status, _, payload = self.call("POST", "/api/search", body, token)
        return status, payload

    def sql(self, url: str, query: str, params: tuple = ()) -> list[tuple]:
        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(query, params)
            return cursor.fetchall() if cursor.description else []

    def replay_caught_up(self, timeout: float = 60) -> None:
        """Wait until the replica has replayed everything the primary has written."""
        (target,) = self.sql(self.primary_url, "SELECT pg_current_wal_lsn()")[0]
        deadline = time.monotonic() + timeout
        while True:
            try:
                (done,) = self.sql(
                    self.replica_url, "SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", (str(target),)
                )[0]
            except psycopg.OperationalError:
                done = False
            if done:
                return
            assert time.monotonic() < deadline, "the replica did not replay the primary's WAL"
            time.sleep(0.05)


def _wait(condition, timeout: float = 60, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _input(path: Path, n: int, seed: int, prefix: str) -> Path:
    vectors = unit_vectors(n, 384, seed=seed)
    table = pa.table(
        {
            "external_id": [f"{prefix}-{i}" for i in range(n)],
            "text": [f"{prefix} passage number {i}" for i in range(n)],
            "category": [f"c{i % 5}" for i in range(n)],
            "embedding": list(vectors),
        }
    )
    pq.write_table(table, path)
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    import os

    root = tmp_path_factory.mktemp("replicas")
    env = {k: v for k, v in os.environ.items() if k not in ("DJANGO_SETTINGS_MODULE", "DATABASE_URL")}
    env.update({"VECTORSTORE_PGDATA": str(root / "primary"), "HF_HUB_OFFLINE": "1"})
    probe = Cluster(env, "", "", 0, "", np.zeros(0))
    started = probe.db("replica", "start", "r1")
    replica_url = started.stdout.strip().splitlines()[-1]
    primary_url = probe.db("url").stdout.strip()
    cluster = Cluster(env, primary_url, replica_url, 0, "", unit_vectors(50, 384, seed=7))
    try:
        assert cluster.sql(replica_url, "SELECT pg_is_in_recovery()") == [(True,)]
        assert (root / "primary-replicas" / "r1" / "standby.signal").exists()  # made by pg_basebackup -R
        for args in (
            ("migrate", "--noinput"),
            ("bulk_copy", str(_input(root / "base.parquet", ROWS, 1, "base")), "--no-tune"),
        ):
            result = cluster.manage(*args)
            assert result.returncode == 0, result.stderr
        token = cluster.manage(
            "shell",
            "-c",
            "from django.contrib.auth.models import Permission, User;"
            "from vectorstore.models import ApiToken;"
            "u = User.objects.create_user('writer');"
            "u.user_permissions.add(*Permission.objects.filter(codename__in=['add_document']));"
            "User.objects.create_superuser('editor', password='editor-password-1');"
            "print(ApiToken.issue(u, 'replicas')[1])",
        )
        assert token.returncode == 0, token.stderr
        cluster.token = token.stdout.strip().splitlines()[-1]
        server_env = {
            **env,
            "DATABASE_REPLICA_URLS": replica_url,
            "VECTORSTORE_REPLICA_MAX_LAG": str(MAX_LAG),
            "VECTORSTORE_REPLICA_SKIP_SECONDS": str(SKIP_SECONDS),
        }
        cluster.server_env = server_env
        with serve(primary_url, workers=2, env=server_env) as port:
            cluster.port = port
            yield cluster
    finally:
        probe.db("stop", check=False)  # as `make stop`: the replica, then the primary
        assert "r1: stopped" in probe.db("replica", "status").stdout
        assert "not running" in probe.db("status", check=False).stdout


def _post(cluster: Cluster, external_id: str) -> None:
    status, _, payload = cluster.call(
        "POST", "/api/documents", {"text": f"note {external_id}", "external_id": external_id}, cluster.token
    )
    assert status == 201, payload


def _from_replica(cluster: Cluster, method: str, path: str, body=None) -> dict:
    """The answer to a read once the replica gives it: a process may still skip the replica for a
    moment after the write it has just replayed (REPLICA_SKIP_SECONDS)."""
    answers: list[tuple[int, dict, dict]] = []

    def answered_by_replica() -> bool:
        answers.append(cluster.call(method, path, body))
        return answers[-1][1].get("X-Vectorstore-Database") == "replica1"

    _wait(answered_by_replica, what=f"{method} {path} answered by the replica")
    status, _, payload = answers[-1]
    assert status == 200, payload
    return payload


def test_a_replayed_write_is_found_by_a_search_the_replica_answers(cluster):
    _post(cluster, "first-write")
    cluster.replay_caught_up()
    search = {"vector": cluster.vectors[0].tolist(), "k": 5, "filters": {"external_id": "first-write"}}
    payload = _from_replica(cluster, "POST", "/api/search", search)
    assert payload["database"] == "replica1"
    assert [hit["external_id"] for hit in payload["results"]] == ["first-write"]
    # Search settings are set on the connection that runs the query, the replica's: a graph search
    # kept to one candidate, without iterative scans, finds one document.
    body = {"vector": cluster.vectors[2].tolist(), "k": 10}
    for settings, found in (({}, 10), ({"ef_search": 1, "iterative_scan": "off"}, 1)):
        answer = _from_replica(cluster, "POST", "/api/search", {**body, **settings})
        assert len(answer["results"]) == found, settings
    # The other reads go there too, and say so.
    doc_id = payload["results"][0]["id"]
    assert _from_replica(cluster, "GET", f"/api/documents/{doc_id}")["external_id"] == "first-write"
    listed = _from_replica(cluster, "GET", "/api/documents?external_id=first-write")
    assert [item["id"] for item in listed["items"]] == [doc_id]
    similar = _from_replica(cluster, "GET", f"/api/documents/{doc_id}/similar?k=3")
    assert len(similar["results"]) == 3 and doc_id not in [hit["id"] for hit in similar["results"]]
    # Health lists the replica, reachable, caught up.
    status, _, health = cluster.call("GET", "/api/health")
    assert status == 200
    (replica,) = health["replicas"]
    assert replica["name"] == "replica1" and replica["reachable"] and replica["in_recovery"]
    assert replica["lag_bytes"] >= 0


def test_under_uvicorn_the_async_views_read_the_replica_and_a_writer_its_own_writes(cluster):
    """The site under an ASGI server (search and similar as async views on pooled async connections):
    they are answered by the replica, and while it applies WAL a second late, the writer's searches
    right after each of its writes find the write (the primary answers them)."""
    with serve(cluster.primary_url, workers=1, env=cluster.server_env, server="uvicorn") as port:
        asgi = dataclasses.replace(cluster, port=port)
        _post(asgi, "async-write")
        asgi.replay_caught_up()
        search = {"vector": asgi.vectors[1].tolist(), "k": 5, "filters": {"external_id": "async-write"}}
        payload = _from_replica(asgi, "POST", "/api/search", search)
        assert [hit["external_id"] for hit in payload["results"]] == ["async-write"]
        doc_id = payload["results"][0]["id"]
        similar = _from_replica(asgi, "GET", f"/api/documents/{doc_id}/similar?k=3")
        assert len(similar["results"]) == 3 and doc_id not in [hit["id"] for hit in similar["results"]]
        asgi.sql(asgi.replica_url, "ALTER SYSTEM SET recovery_min_apply_delay = '1s'")
        asgi.sql(asgi.replica_url, "SELECT pg_reload_conf()")
        try:
            for i in range(10):
                _post(asgi, f"async-ryw-{i}")
                status, mine = asgi.search(asgi.vectors[i], token=asgi.token, external_id=f"async-ryw-{i}")
                assert status == 200, mine
                assert [h["external_id"] for h in mine["results"]] == [f"async-ryw-{i}"], (i, mine)
        finally:
            asgi.sql(asgi.replica_url, "ALTER SYSTEM RESET recovery_min_apply_delay")
            asgi.sql(asgi.replica_url, "SELECT pg_reload_conf()")
        asgi.replay_caught_up()


def test_passages_are_written_on_the_primary_and_searched_on_the_replica(cluster):
    """With passages on (``VECTORSTORE_PASSAGES=1``): a long document posted to the primary is written
    with its passages, and a search about its last third, answered by the replica, finds it through the
    replica's passage table, with the matched passage."""
    from tests.test_passages import _long_texts

    ((_, text),) = _long_texts(1)
    with serve(
        cluster.primary_url, workers=1, env={**cluster.server_env, "VECTORSTORE_PASSAGES": "1"}
    ) as port:
        site = dataclasses.replace(cluster, port=port)
        status, _, payload = site.call(
            "POST", "/api/documents", {"text": text, "external_id": "long-on-replica"}, site.token
        )
        assert status == 201, payload
        site.replay_caught_up()
        query = " ".join(text[-1500:].split()[:80])
        (hit,) = _from_replica(site, "POST", "/api/search", {"query": query, "k": 1})["results"]
    assert hit["external_id"] == "long-on-replica" and hit["passage"]["ordinal"] > 3
    assert hit["passage"]["text"] == text[hit["passage"]["start"] : hit["passage"]["end"]]


def test_a_client_reads_its_own_writes_though_the_replica_lags(cluster):
    """The replica applies WAL a second late (recovery_min_apply_delay), within the lag bound: a read
    right after a write finds it on the replica for nobody, but the writer's reads find it every time."""
    cluster.sql(cluster.replica_url, "ALTER SYSTEM SET recovery_min_apply_delay = '1s'")
    cluster.sql(cluster.replica_url, "SELECT pg_reload_conf()")
    try:
        answered_by = Counter()
        stale_elsewhere = 0
        for i in range(100):
            external_id = f"ryw-{i}"
            _post(cluster, external_id)
            status, mine = cluster.search(
                cluster.vectors[i % 50], token=cluster.token, external_id=external_id
            )
            assert status == 200, mine
            assert [h["external_id"] for h in mine["results"]] == [external_id], (i, mine)
            answered_by[mine["database"]] += 1
            status, anyone = cluster.search(cluster.vectors[i % 50], external_id=external_id)
            assert status == 200, anyone
            if anyone["database"] == "replica1" and not anyone["results"]:
                stale_elsewhere += 1
        # The scenario is real: an anonymous read served by the replica missed a fresh write.
        assert stale_elsewhere > 0
    finally:
        cluster.sql(cluster.replica_url, "ALTER SYSTEM RESET recovery_min_apply_delay")
        cluster.sql(cluster.replica_url, "SELECT pg_reload_conf()")
    # Once replayed, the writer's reads go back to the replica.
    cluster.replay_caught_up()
    _wait(
        lambda: (
            cluster.search(cluster.vectors[0], token=cluster.token, external_id="ryw-99")[1]["database"]
            == "replica1"
        ),
        what="the writer's reads on the replica again",
    )


def _logged_in(cluster: Cluster) -> tuple[urllib.request.OpenerDirector, str]:
    """A client with cookies, logged in through the admin's form: (opener, CSRF token)."""
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    base = f"http://127.0.0.1:{cluster.port}"
    opener.open(f"{base}/admin/login/").read()
    csrf = next(c.value for c in jar if c.name == "csrftoken")
    form = {
        "username": "editor",
        "password": "editor-password-1",
        "csrfmiddlewaretoken": csrf,
        "next": "/admin/",
    }
    opener.open(f"{base}/admin/login/", urllib.parse.urlencode(form).encode()).read()
    assert any(c.name == "sessionid" for c in jar)
    return opener, next(c.value for c in jar if c.name == "csrftoken")


def test_a_session_reads_its_own_writes_though_the_replica_lags(cluster):
    """The same through a logged-in session (cookies and CSRF, as the browser sends them)."""
    opener, csrf = _logged_in(cluster)
    base = f"http://127.0.0.1:{cluster.port}/api"
    cluster.sql(cluster.replica_url, "ALTER SYSTEM SET recovery_min_apply_delay = '1s'")
    cluster.sql(cluster.replica_url, "SELECT pg_reload_conf()")
    try:
        for i in range(10):
            external_id = f"session-{i}"
            body = json.dumps({"text": f"edited {i}", "external_id": external_id}).encode()
            created = urllib.request.Request(
                f"{base}/documents", body, {"Content-Type": "application/json", "X-CSRFToken": csrf}
            )
            assert opener.open(created).status == 201
            with opener.open(f"{base}/documents?external_id={external_id}") as response:
                listed = json.loads(response.read())
            assert [item["external_id"] for item in listed["items"]] == [external_id], i
    finally:
        cluster.sql(cluster.replica_url, "ALTER SYSTEM RESET recovery_min_apply_delay")
        cluster.sql(cluster.replica_url, "SELECT pg_reload_conf()")


def _search_clients(
    cluster: Cluster, stop: threading.Event, seen: Counter, errors: list
) -> list[threading.Thread]:
    def client(n: int) -> None:
        while not stop.is_set():
            try:
                status, payload = cluster.search(cluster.vectors[n])
            except Exception as exc:  # a refused or cut connection counts as an error
                errors.append(repr(exc))
                continue
            if status != 200 or len(payload["results"]) != 5:
                errors.append(f"{status} {payload}")
            else:
                seen[payload["database"]] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    return threads


def test_a_replica_stopped_under_searches_costs_no_request_and_catches_up(cluster):
    stop, seen, errors = threading.Event(), Counter(), []
    threads = _search_clients(cluster, stop, seen, errors)
    try:
        _wait(lambda: seen["replica1"] >= 20, what="searches on the replica")
        cluster.db("replica", "stop", "r1", "--immediate")
        stopped = time.monotonic()
        before = dict(seen)
        _wait(lambda: seen["default"] >= before.get("default", 0) + 20, what="searches on the primary")
        _post(cluster, "while-replica-down")
        # Searches go on for several of the server's skip windows (REPLICA_SKIP_SECONDS, 1 s here): each
        # ends with a worker asking the stopped replica again, and failing over again without an error.
        _wait(lambda: time.monotonic() - stopped >= 4 * SKIP_SECONDS, timeout=30)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    # Started again, it replays what it missed from its slot and takes reads again.
    cluster.db("replica", "start", "r1")
    cluster.replay_caught_up()
    assert cluster.sql(
        cluster.replica_url,
        "SELECT count(*) FROM vectorstore_document WHERE external_id = 'while-replica-down'",
    ) == [(1,)]
    _wait(
        lambda: cluster.search(cluster.vectors[0])[1]["database"] == "replica1",
        what="the replica serving again",
    )


def test_searches_on_the_replica_go_on_during_a_bulk_copy_on_the_primary(cluster, tmp_path):
    stop, seen, errors = threading.Event(), Counter(), []
    threads = _search_clients(cluster, stop, seen, errors)
    try:
        _wait(lambda: seen["replica1"] >= 10, what="searches on the replica")
        # Fewer rows than the table holds: the load keeps the indexes (the table stays searchable).
        before = seen["replica1"]
        load = cluster.manage(
            "bulk_copy", str(_input(tmp_path / "more.parquet", 1500, 2, "more")), "--no-tune"
        )
        during = seen["replica1"] - before
        assert load.returncode == 0, load.stderr
    finally:
        stop.set()
        for t in threads:
            t.join()
    # The replica answered while the load ran (a process, its COPY and its commit), and nothing failed.
    assert errors == [] and during > 0
    count = "SELECT count(*) FROM vectorstore_document"
    primary = cluster.sql(cluster.primary_url, count)
    assert primary[0][0] >= ROWS + 1500  # the load's rows are on the primary
    _wait(lambda: cluster.sql(cluster.replica_url, count) == primary, what="the replica's count")


def test_a_lagging_replica_is_skipped_then_used_again(cluster):
    cluster.sql(cluster.replica_url, "SELECT pg_wal_replay_pause()")
    try:
        _post(cluster, "during-pause")  # WAL the paused replica does not replay
        posted = time.monotonic()

        def lagging() -> bool:
            # The worker that answers reports the lag. Each worker's own bound is at least the time since
            # the write the replica lacks, so once that is past the bound by more than
            # REPLICA_CHECK_SECONDS (1), every worker's last look at the replica has seen it behind the
            # bound, and none sends it reads (one worker's report alone can run ahead of another's).
            (replica,) = cluster.call("GET", "/api/health")[2]["replicas"]
            return (
                not replica["serving"]
                and replica["lag_seconds"] > MAX_LAG + 1.0
                and replica["lag_bytes"] > 0
                and time.monotonic() - posted > MAX_LAG + 1.0
            )

        _wait(lagging, what="the health check to report the lag")
        for n in range(10):
            body = {"vector": cluster.vectors[n].tolist(), "k": 5, "filters": {"external_id": "during-pause"}}
            status, headers, payload = cluster.call("POST", "/api/search", body)
            assert status == 200 and payload["database"] == "default"
            assert headers["X-Vectorstore-Read-Reason"].startswith("lag (replica1: ")
            assert [h["external_id"] for h in payload["results"]] == ["during-pause"]
    finally:
        cluster.sql(cluster.replica_url, "SELECT pg_wal_replay_resume()")
    cluster.replay_caught_up()
    _wait(
        lambda: cluster.search(cluster.vectors[1])[1]["database"] == "replica1", what="the replica used again"
    )


ORM_ROUTING = """
from vectorstore.models import Document
from vectorstore.replicas.routers import reading_from_replicas
print("outside", Document.objects.all().db)
with reading_from_replicas():
    document = Document.objects.get(external_id="base-1")
    print("inside", document._state.db)
    document.metadata = {"edited": True}
    document.save(update_fields=["metadata"])  # a replica would refuse the UPDATE
    print("saved", document._state.db)
"""


def test_the_orm_outside_requests_reads_the_primary_unless_asked_and_always_writes_it(cluster):
    cluster.replay_caught_up()
    result = cluster.manage("shell", "-v", "0", "-c", ORM_ROUTING)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["outside", "default", "inside", "replica1", "saved", "default"]
    rows = "SELECT metadata FROM vectorstore_document WHERE external_id = 'base-1'"
    assert cluster.sql(cluster.primary_url, rows) == [({"edited": True},)]


def test_system_checks_pass_with_the_replica_and_refuse_a_primary_given_as_one(cluster):
    deploy_env = {
        "DATABASE_REPLICA_URLS": cluster.replica_url,
        "DJANGO_SECURE": "1",
        "DJANGO_SECRET_KEY": "x" * 60,
    }
    result = cluster.manage("check", "--deploy", extra_env=deploy_env)
    assert result.returncode == 0, result.stderr
    assert "vectorstore." not in result.stdout + result.stderr
    wrong = cluster.manage("check", extra_env={"DATABASE_REPLICA_URLS": cluster.primary_url})
    assert wrong.returncode != 0
    assert "vectorstore.E031" in wrong.stderr and "not in recovery" in wrong.stderr
    # A replica down now is a warning, not a refusal: reads go to the primary until it is back.
    gone = cluster.manage(
        "check",
        extra_env={"DATABASE_REPLICA_URLS": "postgresql://postgres@/vectorstore?host=/nonexistent&port=5432"},
    )
    assert gone.returncode == 0, gone.stderr
    assert "vectorstore.W032" in gone.stderr and "reads go to the primary" in gone.stderr


def test_lag_in_seconds_is_bounded_by_the_samples_and_the_replayed_transaction():
    """The bound without a server: samples of the primary's position at known times."""
    from vectorstore import replicas

    P = replicas.Position
    replicas.forget()
    try:
        for at, lsn, xmax in ((100.0, 1000, 10), (101.0, 2000, 12), (102.0, 3000, 15)):
            replicas._primary_samples.append((at, P(lsn, 9, xmax)))
        assert replicas._lag_seconds(103.0, P(3000, 9, 15), 50.0) == 0.0  # all replayed: no lag, however old
        assert replicas._lag_seconds(103.0, P(2000, 9, 12), 50.0) == 2.0  # lacks what came after 101.0
        assert replicas._lag_seconds(103.0, P(2000, 9, 12), 0.5) == 0.5  # its last replayed commit is younger
        assert replicas._lag_seconds(103.0, P(500, 9, 9), 50.0) == 50.0  # older than every sample
        assert replicas._lag_seconds(103.0, P(500, 9, 9), None) is None  # unknown: not used
        # Short of the newest position by WAL that completed no transaction (hint bits' page images, a
        # record half-written on the primary): its snapshot is the primary's, so it lags by nothing.
        assert replicas._lag_seconds(103.0, P(2990, 9, 15), 50.0) == 0.0
        # Its snapshot as new, but a transaction still open here that completed there: it lags.
        assert replicas._lag_seconds(103.0, P(2990, 8, 15), 50.0) == 2.0
    finally:
        replicas.forget()


def test_replica_commands_refuse_a_bad_name_and_an_external_server(tmp_path, clean_env):
    """Nothing is started or made: a bad name, or DATABASE_URL (whose replicas are the operator's)."""
    env = {**clean_env, "VECTORSTORE_PGDATA": str(tmp_path / "primary")}
    env.pop("DATABASE_URL", None)
    run = [sys.executable, "-m", "project.db", "replica", "start"]
    bad = subprocess.run([*run, "Bad-Name"], cwd=ROOT, env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "replica name 'Bad-Name'" in bad.stderr
    external = {**env, "DATABASE_URL": "postgres://someone@db.example.com/vectors"}
    refused = subprocess.run(run, cwd=ROOT, env=external, capture_output=True, text=True)
    assert refused.returncode == 2 and "DATABASE_REPLICA_URLS" in refused.stderr
    assert not (tmp_path / "primary").exists() and not (tmp_path / "primary-replicas").exists()


def test_a_fresh_server_reads_the_replica_from_its_first_search(cluster):
    """A server started after a load (its rows' hint bits not yet set: the first reads on the primary write
    WAL, full-page images under data checksums) and a quiet spell (the replica's last replayed commit older
    than REPLICA_MAX_LAG) sends its very first searches to the replica, which replays that WAL within
    milliseconds; a read on the primary says why in X-Vectorstore-Read-Reason."""
    age = "SELECT extract(epoch FROM clock_timestamp() - pg_last_xact_replay_timestamp())"
    for attempt in range(2):
        cluster.sql(
            cluster.primary_url,
            "INSERT INTO vectorstore_document (text, embedding, category, metadata, created_at)"
            " SELECT 'fresh ' || i, (SELECT embedding FROM vectorstore_document LIMIT 1), 'c0', '{}', now()"
            " FROM generate_series(1, 20000) i",
        )
        cluster.sql(cluster.primary_url, "CHECKPOINT")
        cluster.replay_caught_up()
        _wait(lambda: cluster.sql(cluster.replica_url, age)[0][0] > MAX_LAG, what="a quiet spell")
        with serve(cluster.primary_url, workers=2, env=cluster.server_env) as port:
            first = Cluster(**{**dataclasses.asdict(cluster), "port": port})
            answers = [
                first.call("POST", "/api/search", {"vector": v.tolist(), "k": 3})
                for v in cluster.vectors[:30]
            ]
        cluster.sql(cluster.primary_url, "DELETE FROM vectorstore_document WHERE text LIKE 'fresh %%'")
        databases = Counter(headers.get("X-Vectorstore-Database") for _, headers, _ in answers)
        reasons = Counter(headers.get("X-Vectorstore-Read-Reason") for _, headers, _ in answers)
        assert all(status == 200 for status, _, _ in answers)
        assert databases == {"replica1": 30}, (attempt, databases, reasons)
