"""What the benchmarks share: a fresh database of their own, Django pointed at it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def setup_database(suffix: str) -> str:
    """Create ``<database>_<suffix>`` afresh beside the site's database, migrate it, point Django at it.

    A new database each run: a run stopped half-way must not leave the next one without its indexes,
    and stored data is never touched. Returns its URL (also put in DATABASE_URL for child processes).
    """
    import psycopg

    from project.db import embedded_url

    base = os.environ.get("DATABASE_URL") or embedded_url()
    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/')}_{suffix}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    url = urlunsplit(parts._replace(path=f"/{name}"))
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return url
