"""The app inside someone else's Django site: a host app whose first migration makemigrations wrote with no
dependency on vectorstore's, migrated on a brand-new database."""

from __future__ import annotations

import json
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
    "django.contrib.sessions",
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
VECTORSTORE = {"DOCUMENT_MODEL": "articles.Article"}
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]
ROOT_URLCONF = "hosturls"
ALLOWED_HOSTS = ["testserver"]
"""

URLS = """
from django.urls import include, path

urlpatterns = [path("api/", include("vectorstore.urls"))]
"""

MODELS = """
from django.db import models
from pgvector.django import VectorField

from vectorstore.models import AbstractDocument


class Article(AbstractDocument):
    embedding = VectorField(dimensions=384)
    source_url = models.URLField(blank=True, default="")
    lang = models.CharField(max_length=8)  # no default: a write must give it

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
    extension before any migration runs. Then, against the host's own model with fields of its own:
    the API writes them (a plain default filled, a required one named in a 422), saving a text embeds
    it, and text and vector searches find the host's documents."""
    app = tmp_path / "articles"
    (app / "migrations").mkdir(parents=True)
    (app / "__init__.py").write_text("")
    (app / "migrations" / "__init__.py").write_text("")
    (app / "models.py").write_text(MODELS)
    (tmp_path / "hostsettings.py").write_text(SETTINGS)
    (tmp_path / "hosturls.py").write_text(URLS)
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
        import json
        import django
        django.setup()
        from django.contrib.auth import get_user_model
        from django.test import Client
        from articles.models import Article
        from vectorstore.models import ApiToken

        _, key = ApiToken.issue(get_user_model().objects.create_superuser("owner"), "import")
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        post = lambda body: client.post("/api/documents", json.dumps(body), content_type="application/json")
        created = post([
            {"text": "Railroads across the continent", "lang": "en", "source_url": "https://example.org/a"},
            {"text": "The tariff on imported iron", "lang": "en"},
        ])
        missing = post({"text": "no language given"})
        saved = Article.objects.create(text="A canal between two oceans", lang="en")
        search = lambda body: client.post("/api/search", json.dumps(body), content_type="application/json")
        query = search({"query": "trains crossing America", "k": 1})
        by_vector = search({"vector": list(map(float, saved.embedding)), "k": 1})
        print(json.dumps({
            "created": created.status_code,
            "urls": sorted(Article.objects.values_list("source_url", flat=True)),
            "missing": [missing.status_code, missing.content.decode()],
            "embedded": saved.embedding is not None and len(saved.embedding) == 384,
            "query": query.json()["results"][0]["text"],
            "vector": by_vector.json()["results"][0]["text"],
        }))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout.strip().splitlines()[-1])
    assert seen["created"] == 201
    assert seen["urls"] == ["", "", "https://example.org/a"]  # the default, and the value given
    assert seen["missing"][0] == 422 and "lang" in seen["missing"][1]
    assert seen["embedded"]
    assert seen["query"] == "Railroads across the continent"
    assert seen["vector"] == "A canal between two oceans"
