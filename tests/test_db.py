"""Where the database is: the embedded server without DATABASE_URL, the given one with it."""

import pytest
from django.db import connection

from tests.helpers import database_url, run_python

SHOW_DATABASE = """
import os, django
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
django.setup()
from django.db import connection
with connection.cursor() as c:
    c.execute("SELECT current_database(), current_setting('data_directory')")
    print(*c.fetchone())
"""


@pytest.mark.slow
def test_embedded_server_starts_without_database_url(tmp_path, clean_env):
    """A fresh data folder: the first use creates cluster and database, the next reuses it, stop stops it."""
    pgdata = tmp_path / "pgdata"
    env = {**clean_env, "VECTORSTORE_PGDATA": str(pgdata)}
    env.pop("DATABASE_URL", None)
    try:
        first = run_python(SHOW_DATABASE, env)
        assert first.returncode == 0, first.stderr
        assert first.stdout.split() == ["vectorstore", str(pgdata)]
        pid = (pgdata / "postmaster.pid").read_text().split()[0]
        # The server outlived that process; the next one reuses it.
        second = run_python(SHOW_DATABASE, env)
        assert second.stdout.split() == ["vectorstore", str(pgdata)]
        assert (pgdata / "postmaster.pid").read_text().split()[0] == pid
    finally:
        stop = run_python("from project.db import main; main(['stop'])", env)
    assert "stopped" in stop.stdout, stop.stderr
    status = run_python("from project.db import main; raise SystemExit(main(['status']))", env)
    assert status.returncode == 3 and "not running" in status.stdout


@pytest.mark.slow
def test_commands_that_need_no_database_start_none(tmp_path, clean_env):
    """``--help``, ``help`` and embed_parquet start no embedded server (its data folder is not even made);
    the first command that connects starts it."""
    import subprocess
    import sys

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.helpers import ROOT

    pgdata = tmp_path / "pgdata"
    env = {**clean_env, "VECTORSTORE_PGDATA": str(pgdata), "HF_HUB_OFFLINE": "1"}
    env.pop("DATABASE_URL", None)
    source = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": ["a lighthouse on the cape", "railroads across the plains"]}), source)

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *args], env=env, capture_output=True, text=True
        )

    try:
        for args in (["embed_parquet", "--help"], ["help"], ["bulk_copy", "--help"]):
            done = manage(*args)
            assert done.returncode == 0, done.stderr
        done = manage("embed_parquet", str(source), str(tmp_path / "out.parquet"), "--json")
        assert done.returncode == 0, done.stderr
        assert not pgdata.exists()
        done = manage("migrate", "--noinput")
        assert done.returncode == 0, done.stderr
        assert (pgdata / "postmaster.pid").exists()
    finally:
        run_python("from project.db import main; main(['stop'])", env)


@pytest.mark.django_db
def test_database_url_overrides_the_embedded_server(tmp_path, clean_env):
    """With DATABASE_URL set, settings use it and never start the embedded server."""
    unused = tmp_path / "never-created"
    env = {
        **clean_env,
        "DATABASE_URL": database_url(connection.settings_dict),
        "VECTORSTORE_PGDATA": str(unused),
    }
    result = run_python(SHOW_DATABASE, env)
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.split()[0] == connection.settings_dict["NAME"]
    )  # the test database, not "vectorstore"
    assert not unused.exists()


def test_bad_database_url_fails_clearly(clean_env):
    """A DATABASE_URL naming no reachable server fails on connect with PostgreSQL's own message."""
    env = {**clean_env, "DATABASE_URL": "postgres://nobody:x@127.0.0.1:1/none"}
    result = run_python(SHOW_DATABASE, env)
    assert result.returncode != 0
    assert "127.0.0.1" in result.stderr and "port 1" in result.stderr
