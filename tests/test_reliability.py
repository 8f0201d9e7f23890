"""Reliability, against the real server: a killed load leaves nothing; overlapping loads store rows once."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.db import connection

from tests.helpers import ROOT, database_url
from tests.testapp.models import HostDocument

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def write_input(path, n: int, prefix: str, start: int = 0) -> list[tuple[str, str]]:
    """n rows of (id, text, 8-number vector); returns the (id, text) pairs."""
    rng = np.random.default_rng(start)
    ids = [f"{prefix}{i}" for i in range(start, start + n)]
    texts = [f"passage {i} of the load" for i in range(start, start + n)]
    vectors = rng.standard_normal((n, 8)).astype(np.float32)
    table = pa.table(
        {
            "id": ids,
            "text": texts,
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 8).cast(
                pa.list_(pa.float32())
            ),
        }
    )
    pq.write_table(table, path, row_group_size=50_000)
    return list(zip(ids, texts, strict=True))


def bulk_copy_process(path, *extra: str) -> subprocess.Popen:
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "DJANGO_SETTINGS_MODULE": "tests.settings",  # the test-only app's model
        "PATH": "/usr/bin:/bin",
    }
    # --no-tune: these loads are about what survives a crash; tuning after a load has its own tests.
    return subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "bulk_copy",
            str(path),
            "--model",
            "testapp.HostDocument",
            "--no-tune",
            *extra,
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stored_checksum(prefix: str) -> tuple[int, str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*),"
            " md5(coalesce(string_agg(external_id || ':' || text, E'\\n' ORDER BY external_id), ''))"
            " FROM testapp_hostdocument WHERE external_id LIKE %s",
            [prefix + "%"],
        )
        return cursor.fetchone()


def checksum(pairs) -> str:
    return hashlib.md5("\n".join(f"{i}:{t}" for i, t in sorted(pairs)).encode()).hexdigest()


def copy_progress() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT coalesce(max(tuples_processed), 0) FROM pg_stat_progress_copy")
        return cursor.fetchone()[0]


def wait_until_idle(timeout: float = 30) -> None:
    """Until no other backend is in a transaction on this database (the killed load's has rolled back)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND xact_start IS NOT NULL"
            )
            if cursor.fetchone()[0] == 0:
                return
        time.sleep(0.1)
    raise AssertionError("the killed load's transaction is still open")


def test_sigkill_mid_copy_leaves_the_table_as_before_and_a_rerun_completes(tmp_path):
    """bulk_copy of 100,000 rows killed with SIGKILL during its COPY (at 20,000 rows in): nothing stored;
    run again: all, once."""
    HostDocument.objects.create(text="already here", embedding=[0.1] * 8, external_id="old-1")
    before = stored_checksum("")
    pairs = write_input(tmp_path / "big.parquet", 100_000, "big-")
    load = bulk_copy_process(tmp_path / "big.parquet")
    deadline = time.monotonic() + 120
    while copy_progress() < 20_000:
        assert load.poll() is None, load.stderr.read()
        assert time.monotonic() < deadline, "the COPY never got going"
        time.sleep(0.05)
    load.send_signal(signal.SIGKILL)
    load.wait(timeout=10)
    wait_until_idle()
    assert stored_checksum("") == before

    rerun = bulk_copy_process(tmp_path / "big.parquet")
    _, err = rerun.communicate(timeout=600)
    assert rerun.returncode == 0, err
    assert stored_checksum("big-") == (100_000, checksum(pairs))
    assert stored_checksum("")[0] == 100_001


def test_concurrent_overlapping_loads_store_each_row_once(tmp_path):
    """Two bulk_copy --on-conflict skip of overlapping files at once: no duplicate or error; counts add up."""
    a = write_input(tmp_path / "a.parquet", 30_000, "row-", start=0)
    b = write_input(tmp_path / "b.parquet", 30_000, "row-", start=15_000)  # 15,000..29,999 in both
    loads = [bulk_copy_process(tmp_path / f"{n}.parquet", "--on-conflict", "skip", "--json") for n in "ab"]
    results = [p.communicate(timeout=600) for p in loads]
    for process, (_, err) in zip(loads, results, strict=True):
        assert process.returncode == 0, err

    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in results]
    assert sum(s["inserted"] for s in summaries) == 45_000
    assert all(s["inserted"] + s["skipped"] == 30_000 for s in summaries)
    assert stored_checksum("row-") == (45_000, checksum(set(a) | set(b)))


def _search_continuously(stop, counts, vectors):
    """A client searching the table in a loop through its own connection, counting answers and errors."""
    import psycopg
    from pgvector.psycopg import register_vector

    with psycopg.connect(database_url(connection.settings_dict), autocommit=True) as conn:
        register_vector(conn)
        i = 0
        while not stop.is_set():
            try:
                rows = conn.execute(
                    "SELECT id FROM vectorstore_document ORDER BY embedding <=> %s LIMIT 5", [vectors[i % 50]]
                ).fetchall()
                counts["ok" if len(rows) == 5 else "short"] += 1
            except psycopg.Error:
                counts["error"] += 1
            i += 1


def _invalid_indexes() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
        return cursor.fetchone()[0]


def test_reindex_concurrently_under_searches_and_a_failed_one_leaves_nothing(capsys, monkeypatch):
    """Searches keep answering while the HNSW index is rebuilt; a failed rebuild leaves no INVALID index."""
    from collections import Counter

    from django.core.management import call_command
    from django.core.management.base import CommandError

    from tests.helpers import unit_vectors
    from vectorstore.models import Document

    vectors = unit_vectors(3000, 384, seed=21)
    Document.objects.bulk_create(Document(text=str(i), embedding=v) for i, v in enumerate(vectors))
    stop, counts = threading.Event(), Counter()
    clients = [threading.Thread(target=_search_continuously, args=(stop, counts, vectors)) for _ in range(2)]
    for c in clients:
        c.start()
    try:
        call_command("reindex", "--json")
    finally:
        stop.set()
        for c in clients:
            c.join()
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["indexes"] == ["vectorstore_document_hnsw"]
    assert counts["error"] == 0 and counts["short"] == 0 and counts["ok"] > 0

    # A rebuild cut short by its timeout leaves vectorstore_document_hnsw_ccnew INVALID, until cleaned up.
    # A writer's open transaction holds the rebuild after it has created that index (REINDEX CONCURRENTLY
    # waits for every writer before it builds), so the timeout strikes there however busy the machine is;
    # the clean-up's DROP INDEX CONCURRENTLY then waits for the writer too, which is let go once it does.
    from django.db import connections

    from vectorstore.indexing import indexes

    dropped = []
    real_drop = indexes.drop_invalid_indexes

    def spy(conn, table):
        dropped.extend(real_drop(conn, table))
        return dropped

    monkeypatch.setattr(indexes, "drop_invalid_indexes", spy)
    failure: list[str] = []

    def reindex_with_timeout() -> None:
        try:
            call_command("reindex", "--timeout", "2s")
        except CommandError as exc:
            failure.append(str(exc))
        finally:
            connections.close_all()

    import psycopg

    with psycopg.connect(database_url(connection.settings_dict)) as writer:
        writer.execute("UPDATE vectorstore_document SET category = 'held' WHERE text = '0'")
        rebuild = threading.Thread(target=reindex_with_timeout)
        rebuild.start()
        _wait_for(
            "SELECT pid FROM pg_stat_activity WHERE query LIKE 'DROP INDEX CONCURRENTLY%'"
            " AND pid <> pg_backend_pid()",
            timeout=120,
        )
        writer.rollback()
    rebuild.join(timeout=120)
    assert not rebuild.is_alive()
    assert len(failure) == 1 and "no INVALID index was left" in failure[0]
    assert dropped == ["vectorstore_document_hnsw_ccnew"]
    assert _invalid_indexes() == 0
    plan = Document.objects.order_by_distance(vectors[0])[:5].explain()
    assert "vectorstore_document_hnsw" in plan


def test_api_inserts_during_a_bulk_load(tmp_path, capsys):
    """API writes while bulk_copy loads the same table: none fails, and every row of both is stored once."""
    from django.contrib.auth import get_user_model
    from django.core.management import call_command
    from ninja.testing import TestClient

    from tests.helpers import unit_vectors
    from vectorstore.api import router
    from vectorstore.models import Document

    n = 20_000
    vectors = unit_vectors(n, 384, seed=31)
    table = pa.table(
        {
            "id": [f"bulk-{i}" for i in range(n)],
            "text": [f"bulk passage {i}" for i in range(n)],
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384).cast(
                pa.list_(pa.float32())
            ),
        }
    )
    pq.write_table(table, tmp_path / "bulk.parquet")
    get_user_model().objects.create_superuser("loader", password="pw")
    call_command("create_api_token", "loader")
    headers = {"Authorization": f"Bearer {capsys.readouterr().out.strip()}"}
    env = {
        "DATABASE_URL": database_url(connection.settings_dict),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PATH": "/usr/bin:/bin",
    }
    load = subprocess.Popen(
        [sys.executable, "manage.py", "bulk_copy", str(tmp_path / "bulk.parquet"), "--no-tune"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    api = TestClient(router)
    created = []
    deadline = time.monotonic() + 120
    while copy_progress() < 2_000:  # the load is under way
        assert load.poll() is None and time.monotonic() < deadline, load.stderr.read()
        time.sleep(0.05)
    for i in range(10):
        response = api.post(
            "/documents", json={"text": f"api passage {i}", "external_id": f"api-{i}"}, headers=headers
        )
        assert response.status_code == 201, response.json()
        created += response.json()["ids"]
    _, err = load.communicate(timeout=600)
    assert load.returncode == 0, err
    assert Document.objects.filter(external_id__startswith="bulk-").count() == n
    assert Document.objects.filter(pk__in=created).count() == 10
    assert Document.objects.count() == n + 10


@pytest.fixture(scope="module")
def crash_server(tmp_path_factory):
    """A server of the crash tests' own (the suite's stays up), migrated once for the three modes: its
    URL and the environment of a process that uses it."""
    from project.db import start_embedded, stop_embedded

    pgdata = tmp_path_factory.mktemp("crash") / "pg"
    socket_dir, port = start_embedded(pgdata)
    url = f"postgresql://postgres@/vectorstore?host={socket_dir}&port={port}"
    env = {**os.environ, "DATABASE_URL": url, "DJANGO_SETTINGS_MODULE": "project.settings"}
    try:
        migrate = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--noinput"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert migrate.returncode == 0, migrate.stderr
        yield pgdata, url, env
    finally:
        stop_embedded(pgdata)


@pytest.mark.parametrize("mode", ["insert", "copy", "batch"])
def test_stream_survives_a_server_crash_and_restart(crash_server, mode):
    """PostgreSQL stopped (immediate mode) under stream_sim and started again once the writer has seen it
    gone: the writes are retried, and each record is stored once."""
    from project.db import start_embedded, stop_embedded

    pgdata, url, env = crash_server
    start_embedded(pgdata)  # running (a failed test before this one may have left it stopped)
    prefix = f"crash-{mode}-"
    stream = subprocess.Popen(
        [
            sys.executable,
            "manage.py",
            "stream_sim",
            "--count",
            "120",
            "--rate",
            "30",
            "--mode",
            mode,
            "--batch-size",
            "8",
            "--id-prefix",
            prefix,
            "--keep",
            "--json",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Read stderr as it comes: stream_sim says there when a write first finds the server gone.
    warned = threading.Event()
    errors: list[str] = []

    def read_stderr() -> None:
        for line in stream.stderr:
            errors.append(line)
            if "unreachable" in line:
                warned.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    import psycopg

    def stored() -> int:
        with psycopg.connect(url) as conn:
            return conn.execute(
                "SELECT count(*) FROM vectorstore_document WHERE external_id LIKE %s", [prefix + "%"]
            ).fetchone()[0]

    deadline = time.monotonic() + 240  # the model loads first: slow on a busy machine
    while stored() < 5:  # records are flowing
        assert stream.poll() is None, "".join(errors)
        assert time.monotonic() < deadline, "no record was stored"
        time.sleep(0.05)
    assert stop_embedded(pgdata, mode="immediate")
    assert warned.wait(timeout=120), f"stream_sim never saw the outage: {''.join(errors)}"
    time.sleep(2)  # the outage's length, from the writer's first failure on: more than a second
    start_embedded(pgdata)
    out = stream.stdout.read()
    assert stream.wait(timeout=300) == 0, "".join(errors)
    reader.join(timeout=10)
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["retries"] > 0 and summary["outage_seconds"] > 1
    assert "unreachable" in out
    with psycopg.connect(url) as conn:
        total, distinct = conn.execute(
            "SELECT count(*), count(DISTINCT external_id) FROM vectorstore_document"
            " WHERE external_id LIKE %s",
            [prefix + "%"],
        ).fetchone()
    assert (total, distinct) == (120, 120)


def _prepared_loads() -> list[str]:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT gid FROM pg_prepared_xacts WHERE database = current_database()"
            " AND gid LIKE 'vectorstore-load-%%' ORDER BY gid"
        )
        return [r[0] for r in cursor.fetchall()]


def _wait_for(query: str, timeout: float = 60) -> list[tuple]:
    """Poll a query until it returns rows; returns them."""
    deadline = time.monotonic() + timeout
    while True:
        with connection.cursor() as cursor:
            cursor.execute(query)
            rows = cursor.fetchall()
        if rows:
            return rows
        assert time.monotonic() < deadline, f"never true: {query}"
        time.sleep(0.05)


@pytest.fixture
def roll_back_leftovers(transactional_db):
    """Whatever the test leaves prepared is rolled back before the database is flushed (which
    would otherwise wait on its locks forever)."""
    yield
    with connection.cursor() as cursor:
        for gid in _prepared_loads():
            cursor.execute(f"ROLLBACK PREPARED '{gid}'")


@pytest.mark.parametrize("decided", [False, True], ids=["before-the-decision", "after-the-decision"])
def test_parallel_load_killed_mid_commit_is_finished_once(tmp_path, capsys, decided, roll_back_leftovers):
    """bulk_copy --workers 2 dies with both streams prepared: its prepared transactions (invisible rows,
    held locks) are rolled back if it died before recording its commit decision, committed if after;
    loads still running are left alone. Either way each row ends up stored exactly once."""
    import psycopg
    from django.core.management import call_command

    from vectorstore.loading import twophase

    write_input(tmp_path / "base.parquet", 2_000, "base-")
    assert bulk_copy_process(tmp_path / "base.parquet").wait(timeout=300) == 0
    more = write_input(tmp_path / "more.parquet", 1_000, "more-", start=2_000)

    # Hold the decision table: the load prepares both streams, then waits to record its decision.
    blocker = psycopg.connect(database_url(connection.settings_dict))
    load = None
    try:
        # SHARE mode: reads go on, the load's INSERT waits.
        blocker.execute("LOCK TABLE vectorstore_loaddecision IN SHARE MODE")
        load = bulk_copy_process(tmp_path / "more.parquet", "--workers", "2", "--batch-size", "100")
        (owner_pid,) = _wait_for(
            "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND query LIKE 'INSERT INTO \"vectorstore_loaddecision\"%%'"
        )[0]
        assert len(_prepared_loads()) == 2
        alive = twophase.recover_prepared_loads()
        assert (len(alive.running), alive.committed, alive.rolled_back) == (2, [], [])  # its owner lives

        if decided:
            load.send_signal(signal.SIGSTOP)
            blocker.commit()  # the decision goes in; the process, stopped, commits nothing
            _wait_for("SELECT 1 FROM vectorstore_loaddecision")
            load.send_signal(signal.SIGKILL)
        else:
            load.send_signal(signal.SIGKILL)
            with connection.cursor() as cursor:  # as if the machine died: the INSERT never runs
                cursor.execute("SELECT pg_terminate_backend(%s)", [owner_pid])
            blocker.commit()
        load.wait(timeout=10)
        _wait_for(f"SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE pid = {owner_pid})")
    finally:
        blocker.close()
        if load is not None and load.poll() is None:
            load.kill()
            load.wait()
    assert len(_prepared_loads()) == 2
    assert stored_checksum("more-")[0] == 0  # prepared, not committed: invisible

    if decided:
        call_command("recover_loads", "--json")
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert (len(summary["committed"]), summary["rolled_back"]) == (2, [])
    else:
        rerun = bulk_copy_process(tmp_path / "more.parquet", "--workers", "2", "--json")
        out, err = rerun.communicate(timeout=300)
        assert rerun.returncode == 0, err
        summary = json.loads(out.strip().splitlines()[-1])
        assert (summary["recovered_rolled_back"], summary["recovered_committed"]) == (2, 0)
        assert "first finished an interrupted parallel load" in out
    assert _prepared_loads() == []
    _wait_for("SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM vectorstore_loaddecision)", timeout=1)
    assert stored_checksum("more-") == (1_000, checksum(more))
    assert stored_checksum("base-")[0] == 2_000


OPEN_WRITE = (
    "INSERT INTO testapp_hostdocument (text, embedding, category, metadata, created_at)"
    " VALUES ('open writer', '[1,1,1,1,1,1,1,1]', '', '{}', now())"
)


def _run_operation(operation, errors: list, setup_sql: str | None = None) -> None:
    """Apply a migration operation as a non-atomic migration would (in a thread: its own connection)."""
    from django.db import connection as conn
    from django.db.migrations.loader import MigrationLoader

    try:
        state = MigrationLoader(conn).project_state()
        if setup_sql:
            with conn.cursor() as cursor:
                cursor.execute(setup_sql)
        with conn.schema_editor(atomic=False) as editor:
            operation.database_forwards("testapp", editor, state, state)
    except Exception as exc:
        errors.append(exc)
    finally:
        conn.close()


def test_concurrent_ivfflat_build_lets_searches_and_writes_go_on(tmp_path):
    """AddIvfflatIndex(concurrently=True) on a populated table: while the build waits on an open
    writer, a search and an insert from other sessions complete; a failed build leaves no INVALID
    index; inside a transaction it refuses to start."""
    import threading

    import psycopg
    from django.db import NotSupportedError, transaction

    from vectorstore.indexing.operations import AddIvfflatIndex

    rng = np.random.default_rng(3)
    HostDocument.objects.bulk_create(
        HostDocument(text=f"row {i}", embedding=v) for i, v in enumerate(rng.standard_normal((2000, 8)))
    )
    url = database_url(connection.settings_dict)
    writer = psycopg.connect(url)  # a transaction that stays open: the build must wait for it
    writer.execute(OPEN_WRITE)
    errors: list = []
    build = threading.Thread(
        target=_run_operation,
        args=(
            AddIvfflatIndex("hostdocument", "host_cc_ivf", opclass="vector_cosine_ops", concurrently=True),
            errors,
        ),
    )
    build.start()
    try:
        _wait_for("SELECT 1 FROM pg_stat_progress_create_index WHERE command = 'CREATE INDEX CONCURRENTLY'")
        with psycopg.connect(url, autocommit=True) as other:
            other.execute("SET statement_timeout = '10s'")
            nearest = other.execute(
                "SELECT id FROM testapp_hostdocument ORDER BY embedding <=> '[1,0,0,0,0,0,0,0]' LIMIT 5"
            ).fetchall()
            other.execute(
                "INSERT INTO testapp_hostdocument (text, embedding, category, metadata, created_at)"
                " VALUES ('during the build', '[0,1,0,0,0,0,0,0]', '', '{}', now())"
            )
        assert len(nearest) == 5
        # The build's index is INVALID until it finishes: cleaning up leftovers must not take it.
        from vectorstore.indexing import indexes

        with psycopg.connect(url, autocommit=True) as other:
            assert indexes.drop_invalid_indexes(other, "testapp_hostdocument") == []
        # Both finished while the build was still waiting: they never queued behind it.
        _wait_for(
            "SELECT 1 FROM pg_stat_progress_create_index WHERE command = 'CREATE INDEX CONCURRENTLY'",
            timeout=1,
        )
    finally:
        writer.commit()
        writer.close()
        build.join(timeout=120)
    assert errors == []
    assert _invalid_indexes() == 0
    with connection.cursor() as cursor:
        cursor.execute("SELECT indisvalid FROM pg_index WHERE indexrelid = 'host_cc_ivf'::regclass")
        assert cursor.fetchone() == (True,)
    assert HostDocument.objects.filter(text="during the build").exists()

    # A build that fails (its statement timeout, while it waits for an open writer) drops its INVALID
    # leftover before raising: the drop waits for that writer too, and goes through once it ends.
    failing = AddIvfflatIndex("hostdocument", "host_cc_ivf_2", lists=4, concurrently=True)
    writer = psycopg.connect(url)
    writer.execute(OPEN_WRITE)
    errors = []
    build = threading.Thread(target=_run_operation, args=(failing, errors, "SET statement_timeout = '1s'"))
    build.start()
    try:
        _wait_for("SELECT 1 FROM pg_stat_activity WHERE query LIKE 'DROP INDEX CONCURRENTLY%%'")
        assert _invalid_indexes() == 1  # the failed build's leftover, about to go
    finally:
        writer.rollback()
        writer.close()
        build.join(timeout=120)
    assert len(errors) == 1 and "statement timeout" in str(errors[0]), errors
    assert _invalid_indexes() == 0

    with pytest.raises(NotSupportedError, match="atomic = False"), transaction.atomic():
        from django.db.migrations.loader import MigrationLoader

        state = MigrationLoader(connection).project_state()
        with connection.schema_editor() as editor:
            failing.database_forwards("testapp", editor, state, state)


def test_parallel_load_that_cannot_record_its_decision_rolls_back(tmp_path, roll_back_leftovers):
    """If the commit decision cannot be written, nothing is committed and nothing stays prepared."""
    write_input(tmp_path / "base.parquet", 500, "base-")
    assert bulk_copy_process(tmp_path / "base.parquet").wait(timeout=300) == 0
    write_input(tmp_path / "more.parquet", 300, "more-", start=500)
    with connection.cursor() as cursor:
        cursor.execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
            " $$BEGIN RAISE EXCEPTION 'decisions refused for this test'; END$$;"
            " CREATE TRIGGER refuse BEFORE INSERT ON vectorstore_loaddecision"
            " FOR EACH ROW EXECUTE FUNCTION refuse()"
        )
    try:
        load = bulk_copy_process(tmp_path / "more.parquet", "--workers", "2", "--batch-size", "50")
        _, err = load.communicate(timeout=300)
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TRIGGER refuse ON vectorstore_loaddecision; DROP FUNCTION refuse()")
    assert load.returncode != 0 and "decisions refused for this test" in err
    assert "Traceback" not in err
    assert _prepared_loads() == []
    assert stored_checksum("more-")[0] == 0
    assert stored_checksum("base-")[0] == 500
