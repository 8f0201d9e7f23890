"""The documentation's "Your own site" guide (docs/your-site.md), run word for word in a new `django-admin
startproject` site, in a fresh virtual environment where the app is pip-installed from the checkout, on a
brand-new database: the code blocks are read from the page, so the two cannot drift apart."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pyarrow.parquet as pq
import pytest
from django.db import connection

from benchmarks.harness import free_port
from tests import venvs
from tests.helpers import CHROMIUM, ROOT, admin_login, database_url, small_model

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
"""


def guide_blocks() -> dict[str, list[str]]:
    """The guide's code blocks marked <!-- guide: FILE -->, by file, in order."""
    page = (ROOT / "docs" / "your-site.md").read_text(encoding="utf-8")
    blocks: dict[str, list[str]] = {}
    for name, code in re.findall(r"<!-- guide: (\S+) -->\n```python\n(.*?)```", page, flags=re.S):
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


def test_the_docs_have_the_guide():
    blocks = guide_blocks()
    assert set(blocks) == {"settings.py", "urls.py", "models.py"}, blocks.keys()


# A second host model, beyond the guide's: its own dimension with its own embedding model, and an extra
# field with a plain Django default (not db_default), filled by bulk_copy.
NOTE_MODEL = """

from vectorstore.indexing.vector_indexes import VectorIndex


class Note(AbstractDocument):
    embedding = VectorField(dimensions=8)
    tags = models.CharField(max_length=40, default="untagged")
    embedding_model = {path!r}

    class Meta(AbstractDocument.Meta):
        indexes = [
            *AbstractDocument.Meta.indexes,
            VectorIndex(name="articles_note_half", dimensions=8, quantization="half"),
        ]


class Manual(AbstractDocument):
    keep_passages = True  # long texts: kept as passages too (docs/long-documents.md)
"""

# A host's model with passages on: a long text saved, and found by its end.
MANUALS = """
from articles.models import Manual
from vectorstore.search import search
long, other = Manual.objects.create(text={long!r}), Manual.objects.create(text={other!r})
hit = search({query!r}, k=1, queryset=Manual.objects.all()).hits[0]
print(json.dumps({{
    "passages": [long.passages.count(), other.passages.count()],
    "found": hit.document.pk == long.pk,
    "passage": hit.passage["text"] if hit.passage else None,
}}))
"""

SITE_SCRIPT = """
import json, os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "mysite.settings"
import django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()  # what Django's test runner does: the test client's host is allowed
from django.test import Client
post = lambda c, path, body: c.post(path, json.dumps(body), content_type="application/json")
"""

# Without the [embed] extra: no torch; documents stored with their vectors; the API searches by vector,
# and a text query is a 501 naming the extra.
WITHOUT_EMBED = """
import importlib.util
from articles.models import Passage
vector = [0.0] * 384
vector[7] = 1.0
Passage.objects.create(text="A lighthouse on the northern cape", embedding=vector)
Passage.objects.create(text="Another passage", embedding=[1.0] + [0.0] * 383)
client = Client()
by_vector = post(client, "/api/search", {"vector": vector, "k": 1})
by_text = post(client, "/api/search", {"query": "a lighthouse", "k": 1})
print(json.dumps({
    "torch": importlib.util.find_spec("torch") is not None,
    "vector": [by_vector.status_code, by_vector.json()["results"][0]["text"]],
    "text": [by_text.status_code, by_text.content.decode()],
}))
"""

WITH_EMBED = """
from django.contrib.auth import get_user_model
from articles.models import Note, Passage
from vectorstore.models import ApiToken

owner = get_user_model().objects.create_superuser("owner", password="owner-password")
_, key = ApiToken.issue(owner, "import")
client = Client(HTTP_AUTHORIZATION=f"Bearer {key}")
created = post(client, "/api/documents", [
    {"text": "Railroads across the continent", "source_url": "https://example.org/a"},
    {"text": "The tariff on imported iron"},
])
bad = post(client, "/api/documents", {"text": "x", "source_url": "u" * 300})
saved = Passage.objects.create(text="A canal between two oceans")
note = Note.objects.create(text="A canal between two oceans")
from vectorstore.search import search
note_search = search("A canal between two oceans", k=1, queryset=Note.objects.all())
query = post(client, "/api/search", {"query": "trains crossing America", "k": 1})
text = post(client, "/api/search", {"query": "tariff iron", "mode": "text", "k": 1})
by_vector = post(client, "/api/search", {"vector": list(map(float, saved.embedding)), "k": 1})
listing = client.get("/api/documents", {"limit": 100}).json()["items"]
# Behind save()'s back: the host's own table has the freshness triggers makemigrations wrote.
Passage.objects.filter(pk=saved.pk).update(text="A railway between two oceans")
from vectorstore.freshness import backlog, worker
stale = backlog(Passage)["stale"]
renewed = worker.embed_batch(Passage).embedded
print(json.dumps({
    "fresh": [stale, renewed, backlog(Passage)["stale"]],
    "created": [created.status_code, created.content.decode()],
    "urls": sorted(Passage.objects.values_list("source_url", flat=True)),
    "bad": [bad.status_code, bad.content.decode()],
    "query": [query.json()["results"][0][k] for k in ("text", "source_url")],
    "text": text.json()["results"][0]["text"],
    "vector": by_vector.json()["results"][0]["text"],
    "listed": sorted(item["source_url"] for item in listing),
    "note": len(note.embedding),
    "note_search": [note_search.hits[0].document.pk == note.pk, note_search.details],
    "loaded_notes": sorted(set(Note.objects.exclude(pk=note.pk).values_list("tags", flat=True))),
    "loaded_sizes": [len(v) for v in Note.objects.exclude(pk=note.pk).values_list("embedding", flat=True)],
}))
"""


@pytest.mark.slow
@pytest.mark.django_db
def test_the_readme_guide_works_in_a_new_site_on_a_fresh_database(tmp_path, fresh_database, clean_env):
    """Two fresh venvs with the checkout pip-installed (one without [embed], one with it), startproject +
    startapp, the guide's blocks appended, on a fresh database: makemigrations writes the host's migration
    with no dependency on vectorstore's and migrate still works; without the model stack the API searches
    by vector; with it, bulk_copy loads the host's models (a plain default filled, the 8-dimension model
    embedding with its own model), the API writes and reads the host's own field, saving a text embeds it,
    text and vector searches find the host's documents, and the admin lists and searches them in a
    real browser."""
    built = venvs.ready()  # two fresh venvs, the checkout pip-installed (tests/venvs.py)
    python = str(built.bare / "bin" / "python")
    env = {**clean_env, "DATABASE_URL": fresh_database, "HF_HUB_OFFLINE": "1"}
    env.pop("PYTHONPATH", None)
    env.pop("VIRTUAL_ENV", None)

    def run(*args: str, cwd: Path = tmp_path, timeout: float = 600) -> subprocess.CompletedProcess:
        result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{args}: {result.stdout}{result.stderr}"
        return result

    def site_json(script: str) -> dict:
        out = run(python, "-c", SITE_SCRIPT + script, cwd=site).stdout
        return json.loads(out.strip().splitlines()[-1])

    run(str(built.bare / "bin" / "django-admin"), "startproject", "mysite")
    site = tmp_path / "mysite"
    run(python, "manage.py", "startapp", "articles", cwd=site)
    blocks = guide_blocks()
    settings = site / "mysite" / "settings.py"
    settings.write_text(settings.read_text() + TEST_SETTINGS + "\n".join(blocks["settings.py"]))
    urls = site / "mysite" / "urls.py"
    urls.write_text(urls.read_text() + "\n" + "\n".join(blocks["urls.py"]))
    eight = small_model(tmp_path / "eight-dimensions", 8)
    models_py = "\n".join(blocks["models.py"]) + NOTE_MODEL.format(path=eight)
    (site / "articles" / "models.py").write_text(models_py)

    run(python, "manage.py", "makemigrations", "articles", cwd=site)
    migration = (site / "articles" / "migrations" / "0001_initial.py").read_text()
    # No dependency on the app's migrations, which a host would otherwise have to add by hand.
    assert re.search(r"\(['\"]vectorstore['\"],", migration) is None
    assert "vectorstore.indexing.vector_indexes.VectorIndex(" in migration  # Note's half-precision index
    assert "name='ManualPassage'" in migration or 'name="ManualPassage"' in migration  # keep_passages
    assert "vectorstore.freshness.triggers.FreshVectors(" in migration  # the host's table's triggers
    run(python, "manage.py", "migrate", "--noinput", cwd=site)

    bare = site_json(WITHOUT_EMBED)
    assert bare["torch"] is False
    assert bare["vector"] == [200, "A lighthouse on the northern cape"]
    assert bare["text"][0] == 501 and "vectorstore[embed]" in bare["text"][1]

    python = str(built.embed / "bin" / "python")  # the same site, now with the model stack
    passages = tmp_path / "passages.parquet"
    pq.write_table(pq.read_table(ROOT / "fixtures" / "sotu.parquet").slice(0, 20), passages)
    run(python, "manage.py", "bulk_copy", str(passages), "--model", "articles.Note", "--no-tune", cwd=site)

    seen = site_json(WITH_EMBED)
    assert seen["created"][0] == 201, seen["created"]
    assert seen["urls"].count("") == 2 + 2 and "https://example.org/a" in seen["urls"]
    assert seen["bad"][0] == 422 and "source_url" in seen["bad"][1]
    assert seen["query"] == ["Railroads across the continent", "https://example.org/a"]
    assert seen["text"] == "The tariff on imported iron"
    assert seen["vector"] == "A canal between two oceans"
    assert seen["listed"].count("https://example.org/a") == 1 and len(seen["listed"]) == 5
    assert seen["note"] == 8  # embedded on save with the class's own 8-dimension model
    assert seen["fresh"] == [1, 1, 0]  # update() marked the row, the worker embedded it
    # Search follows the half-precision index Note declares in Meta.indexes (its newest vector index).
    assert seen["note_search"] == [True, {"rerank": 1, "quantization": "half"}]
    assert seen["loaded_notes"] == ["untagged"]  # bulk_copy filled the plain default
    assert seen["loaded_sizes"] == [8] * 20  # and embedded with the class's own 8-dimension model

    texts = pq.read_table(ROOT / "fixtures" / "sotu.parquet", columns=["text"]).column("text").to_pylist()
    long, other = "\n\n".join(texts[:12]), "\n\n".join(texts[40:44])
    query = long[-1200:]  # its end, which the document's own vector (its first 256 word pieces) never read
    manuals = site_json(MANUALS.format(long=long, other=other, query=query))
    assert manuals["passages"][0] >= 4 and manuals["passages"][1] >= 1
    assert manuals["found"] and manuals["passage"] in long

    if shutil.which(CHROMIUM):
        admin_in_a_browser(python, site, env)


def admin_in_a_browser(python: str, site: Path, env: dict[str, str]) -> None:
    """The host's admin, served by runserver: its model's change list and a search by meaning; the app's
    own Document is not registered (the host's model is the configured one), API tokens are."""
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    server = subprocess.Popen(
        [python, "manage.py", "runserver", "--noreload", f"127.0.0.1:{port}"],
        cwd=site,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # until the server answers (or has exited, or the deadline passes)
            try:
                urllib.request.urlopen(f"{base}/api/health", timeout=5)
                break
            except OSError:
                assert server.poll() is None, server.stderr.read()
                assert time.monotonic() < deadline, "runserver did not answer in 60 s"
                time.sleep(0.2)
        # The first text query loads the model into the server (seconds, more on a busy machine):
        # done here, waited for by its own answer, so that the browser's search below does not time out.
        warm = urllib.request.Request(
            f"{base}/api/search",
            data=json.dumps({"query": "warm up", "k": 1}).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert urllib.request.urlopen(warm, timeout=300).status == 200
        with sync_playwright() as p:
            browser, page = admin_login(p, base, "owner", "owner-password")
            expect(page.locator("a[href='/admin/articles/passage/']").first).to_be_visible()
            expect(page.locator("a[href='/admin/vectorstore/apitoken/']").first).to_be_visible()
            expect(page.locator("a[href='/admin/vectorstore/document/']")).to_have_count(0)

            page.goto(f"{base}/admin/articles/passage/")
            expect(page.locator("#result_list tbody tr")).to_have_count(5)
            page.fill("#searchbar", "trains crossing America")
            page.press("#searchbar", "Enter")
            rows = page.locator("#result_list tbody tr")
            expect(rows.first).to_contain_text("Railroads across the continent")
            browser.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
