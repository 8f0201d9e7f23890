"""The README's "Adding the app to your own site" guide, run word for word in a new `django-admin
startproject` site on a brand-new database: the code blocks are read from the README, so the two cannot
drift apart."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
import uuid
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from django.db import connection

from tests.helpers import ROOT, database_url

# What the test adds to the guide: its own database (from DATABASE_URL) and the host's own app.
TEST_SETTINGS = """
import os
from urllib.parse import parse_qs, urlsplit

_url = urlsplit(os.environ["DATABASE_URL"])
_query = parse_qs(_url.query)
DATABASES = {"default": {
    "ENGINE": "django.db.backends.postgresql",
    "NAME": _url.path.lstrip("/"),
    "USER": _url.username or "",
    "PASSWORD": _url.password or "",
    "HOST": _url.hostname or _query.get("host", [""])[0],
    "PORT": _url.port or _query.get("port", [""])[0],
}}
INSTALLED_APPS += ["articles"]  # the host's own app, before vectorstore's in the list
"""


def guide_blocks() -> dict[str, list[str]]:
    """The README's code blocks marked <!-- guide: FILE -->, by file, in order."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks: dict[str, list[str]] = {}
    for name, code in re.findall(r"<!-- guide: (\S+) -->\n```python\n(.*?)```", readme, flags=re.S):
        blocks.setdefault(name, []).append(code)
    return blocks


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


def test_the_readme_has_the_guide():
    blocks = guide_blocks()
    assert set(blocks) == {"settings.py", "urls.py", "models.py"}, blocks.keys()


@pytest.mark.slow
@pytest.mark.django_db
def test_the_readme_guide_works_in_a_new_site_on_a_fresh_database(tmp_path, fresh_database, clean_env):
    """startproject + startapp, the README's blocks appended, then: makemigrations writes the host's
    migration with no dependency on vectorstore's, and migrate still works on a fresh database (the
    extension is created before any migration); the API writes the host model's own field (a value, and
    the blank default); saving a text embeds it; text and vector searches find the host's documents."""
    env = {**clean_env, "DATABASE_URL": fresh_database, "PYTHONPATH": str(ROOT)}

    def run(*args: str, cwd=tmp_path) -> subprocess.CompletedProcess:
        result = subprocess.run(
            [sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result

    run("-m", "django", "startproject", "mysite")
    site = tmp_path / "mysite"
    run("manage.py", "startapp", "articles", cwd=site)
    blocks = guide_blocks()
    settings = site / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + TEST_SETTINGS + "\n".join(blocks["settings.py"]))
    urls = site / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + "\n" + "\n".join(blocks["urls.py"]))
    (site / "articles" / "models.py").write_text("\n".join(blocks["models.py"]))

    run("manage.py", "makemigrations", "articles", cwd=site)
    migration = (site / "articles" / "migrations" / "0001_initial.py").read_text()
    assert "vectorstore" not in migration  # the dependency a host would otherwise have to add by hand
    run("manage.py", "migrate", "--noinput", cwd=site)
    code = textwrap.dedent(
        """
        import json, os
        os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
        import django
        django.setup()
        from django.test.utils import setup_test_environment
        setup_test_environment()  # what Django's test runner does: the test client's host is allowed
        from django.contrib.auth import get_user_model
        from django.test import Client
        from articles.models import Passage
        from vectorstore.models import ApiToken

        _, key = ApiToken.issue(get_user_model().objects.create_superuser("owner"), "import")
        client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
        post = lambda path, body: client.post(path, json.dumps(body), content_type="application/json")
        created = post("/api/documents", [
            {"text": "Railroads across the continent", "source_url": "https://example.org/a"},
            {"text": "The tariff on imported iron"},
        ])
        bad = post("/api/documents", {"text": "x", "source_url": "u" * 300})
        saved = Passage.objects.create(text="A canal between two oceans")
        query = post("/api/search", {"query": "trains crossing America", "k": 1})
        by_vector = post("/api/search", {"vector": list(map(float, saved.embedding)), "k": 1})
        print(json.dumps({
            "created": [created.status_code, created.content.decode()],
            "urls": sorted(Passage.objects.values_list("source_url", flat=True)),
            "bad": [bad.status_code, bad.content.decode()],
            "query": query.json()["results"][0]["text"],
            "vector": by_vector.json()["results"][0]["text"],
        }))
        """
    )
    seen = json.loads(run("-c", code, cwd=site).stdout.strip().splitlines()[-1])
    assert seen["created"][0] == 201, seen["created"]
    assert seen["urls"] == ["", "", "https://example.org/a"]  # the blank default, and the value given
    assert seen["bad"][0] == 422 and "source_url" in seen["bad"][1]
    assert seen["query"] == "Railroads across the continent"
    assert seen["vector"] == "A canal between two oceans"
