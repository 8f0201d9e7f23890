"""The app inside someone else's Django site: a host app whose first migration makemigrations wrote with no
dependency on vectorstore's, migrated on a brand-new database."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection

from tests.helpers import ROOT, database_url

SETTINGS = """
import os
from urllib.parse import urlsplit, parse_qs

url = urlsplit(os.environ["DATABASE_URL"])
query = parse_qs(url.query)
SECRET_KEY = "host-site-test"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.postgres",
    "articles",  # sorts before vectorstore, as a host app named so would
    "vectorstore",
]
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": url.path.lstrip("/"),
    "USER": url.username or "",
    "PASSWORD": url.password or "",
    "HOST": url.hostname or query.get("host", [""])[0],
    "PORT": url.port or query.get("port", [""])[0],
}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
VECTORSTORE = {"DIMENSIONS": 8, "DOCUMENT_MODEL": "articles.Article"}
"""

MODELS = """
from django.db import models
from pgvector.django import VectorField

from vectorstore.models import AbstractDocument


class Article(AbstractDocument):
    embedding = VectorField(dimensions=8)
    source_url = models.URLField(blank=True, default="")

    class Meta(AbstractDocument.Meta):
        pass
"""


@pytest.fixture
def fresh_database():
    """A database created for the test, with no extension in it; dropped afterwards."""
    base = database_url(connection.settings_dict)
    name = f"hostsite_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(base)
    yield urlunsplit(parts._replace(path=f"/{name}"))
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.slow
@pytest.mark.django_db
def test_a_host_app_migrates_on_a_fresh_database_without_a_hand_written_dependency(
    tmp_path, fresh_database, clean_env
):
    """makemigrations writes the host's migration with no dependency on vectorstore (which creates the
    extension in its 0001); migrate still works on a fresh database, because vectorstore creates the
    extension before any migration runs; then the host model stores and finds a vector."""
    app = tmp_path / "articles"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(MODELS)
    (tmp_path / "hostsettings.py").write_text(SETTINGS)
    env = {
        **clean_env,
        "DATABASE_URL": fresh_database,
        "DJANGO_SETTINGS_MODULE": "hostsettings",
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
    }

    def manage(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "django", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    made = manage("makemigrations", "articles")
    assert made.returncode == 0, made.stderr
    migration = (app / "migrations" / "0001_initial.py").read_text()
    assert "vectorstore" not in migration  # the dependency a host would otherwise have to add by hand
    migrated = manage("migrate", "--noinput")
    assert migrated.returncode == 0, migrated.stdout + migrated.stderr
    code = textwrap.dedent(
        """
        import django
        django.setup()
        from articles.models import Article
        from vectorstore.search import search
        a = Article.objects.create(text="first", embedding=[1, 0, 0, 0, 0, 0, 0, 0])
        Article.objects.create(text="second", embedding=[0, 1, 0, 0, 0, 0, 0, 0])
        hits = search(vector=[0.9, 0.1, 0, 0, 0, 0, 0, 0], k=1).hits
        print(hits[0].values["text"], a.source_url == "")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["first", "True"]
