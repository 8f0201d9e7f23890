"""Where the site's database lives: ``DATABASE_URL``, else an embedded PostgreSQL (``embedded``), and
the streaming replicas of that server (``replicas``).

    python -m project.db start|stop|status|url
    python -m project.db replica start [NAME]|stop [NAME] [--immediate]|status|url [NAME]|drop NAME
"""

from __future__ import annotations

import sys

from project.db.embedded import (
    BASE_DIR,
    DATABASE_NAME,
    database_config,
    embedded_status,
    embedded_url,
    pgdata_dir,
    start_embedded,
    stop_embedded,
)
from project.db.replicas import (
    ReplicaError,
    drop_replica,
    replica_configs,
    replica_main,
    replica_names,
    replica_status,
    replicas_dir,
    start_replica,
    stop_replica,
)

__all__ = [
    "BASE_DIR",
    "DATABASE_NAME",
    "ReplicaError",
    "database_config",
    "drop_replica",
    "embedded_status",
    "embedded_url",
    "main",
    "pgdata_dir",
    "replica_configs",
    "replica_names",
    "replica_status",
    "replicas_dir",
    "start_embedded",
    "start_replica",
    "stop_embedded",
    "stop_replica",
]


def main(argv: list[str]) -> int:
    command = argv[0] if argv else "status"
    if command == "start":
        socket_dir, port = start_embedded()
        print(f"embedded PostgreSQL running: {pgdata_dir()} (socket {socket_dir}, port {port})")
    elif command == "stop":
        for name in replica_names():
            if stop_replica(name):
                print(f"replica {name} stopped")
        print("embedded PostgreSQL stopped" if stop_embedded() else "embedded PostgreSQL was not running")
    elif command == "status":
        status = embedded_status()
        print(f"running: {status}" if status else f"not running ({pgdata_dir()})")
        return 0 if status else 3
    elif command == "url":
        print(embedded_url())
    elif command == "replica":
        try:
            return replica_main(argv[1:])
        except ReplicaError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0
