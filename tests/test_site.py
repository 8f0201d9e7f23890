"""The site: health API, admin, the admin login command, and the production server."""

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from django.contrib.auth import get_user_model
from django.db import connection
from ninja.testing import TestClient

from benchmarks.harness import serve
from tests.helpers import ROOT, database_url, unit_vectors
from vectorstore.api import router
from vectorstore.models import Document

pytestmark = pytest.mark.django_db


def _pgvector_version() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        return cursor.fetchone()[0]


def test_health_reports_versions_and_count():
    """/health answers with PostgreSQL's and pgvector's versions and the document count."""
    Document.objects.create(text="one", embedding=unit_vectors(1, 384)[0])
    response = TestClient(router).get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["pgvector"] == _pgvector_version()
    assert body["postgres"].split(".")[0].isdigit()
    assert body["documents"] == 1


def test_health_through_the_site_urls(client):
    """The site mounts the API at /api/, with its OpenAPI schema."""
    assert client.get("/api/health").json()["status"] == "ok"
    schema = client.get("/api/openapi.json").json()
    assert "/api/health" in schema["paths"]


def test_admin_lists_documents_for_staff(admin_client):
    """The admin change list renders documents (without their vectors) for a superuser."""
    Document.objects.create(
        text="Fellow citizens of the Senate", category="none", embedding=unit_vectors(1, 384)[0]
    )
    response = admin_client.get("/admin/vectorstore/document/")
    assert response.status_code == 200
    assert b"Fellow citizens of the Senate" in response.content
    doc = Document.objects.get()
    change = admin_client.get(f"/admin/vectorstore/document/{doc.pk}/change/")
    assert change.status_code == 200
    assert b'name="embedding"' not in change.content


def test_admin_requires_login(client):
    response = client.get("/admin/vectorstore/document/")
    assert response.status_code == 302 and "/admin/login/" in response["Location"]


def test_admin_requires_staff_and_the_model_permission(client):
    """A user who is not staff cannot use the admin even holding every document permission; a staff
    user without the permission is refused the document pages."""
    from django.contrib.auth.models import Permission

    doc = Document.objects.create(text="kept", embedding=unit_vectors(1, 384)[0])
    perms = Permission.objects.filter(content_type__app_label="vectorstore")
    user = get_user_model().objects.create_user("reader", password="pw-for-tests")
    user.user_permissions.add(*perms)
    client.force_login(user)
    for url in ("/admin/", "/admin/vectorstore/document/", f"/admin/vectorstore/document/{doc.pk}/delete/"):
        response = client.get(url)
        assert response.status_code == 302 and "/admin/login/" in response["Location"], url
    response = client.post(f"/admin/vectorstore/document/{doc.pk}/delete/", {"post": "yes"})
    assert response.status_code == 302 and Document.objects.filter(pk=doc.pk).exists()

    staff = get_user_model().objects.create_user("staff", password="pw-for-tests", is_staff=True)
    client.force_login(staff)
    assert client.get("/admin/").status_code == 200
    assert client.get("/admin/vectorstore/document/").status_code == 403
    assert client.post(f"/admin/vectorstore/document/{doc.pk}/delete/", {"post": "yes"}).status_code == 403
    assert Document.objects.filter(pk=doc.pk).exists()


def site_command(env: dict[str, str], *args: str) -> str:
    """A manage.py command of the site (its own settings) against the test database; its output."""
    env = {**env, "DATABASE_URL": database_url(connection.settings_dict)}
    result = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.django_db(transaction=True)  # the command's own process must see and leave committed rows
def test_ensure_admin_creates_once_and_prints_login(clean_env):
    """The first run creates the superuser; later runs print the same login and create nothing."""
    env = {**clean_env, "VECTORSTORE_ADMIN_PASSWORD": "s3cret-for-tests"}
    assert "Created the admin login: admin / s3cret-for-tests" in site_command(env, "ensure_admin")
    assert "Admin login: admin / s3cret-for-tests" in site_command(env, "ensure_admin")
    user = get_user_model().objects.get(username="admin")
    assert user.is_superuser and user.check_password("s3cret-for-tests")


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_production_server_serves_health_admin_and_static(clean_env):
    """gunicorn with the site's production settings (DEBUG off) serves the API, the admin and its CSS."""
    with serve(database_url(connection.settings_dict), workers=1, env=clean_env) as port:
        base = f"http://127.0.0.1:{port}"
        status, body = _get(f"{base}/api/health")
        assert status == 200, body
        assert json.loads(body)["pgvector"] == _pgvector_version()
        status, body = _get(f"{base}/admin/login/")
        assert status == 200 and b"csrfmiddlewaretoken" in body
        status, body = _get(f"{base}/static/admin/css/base.css")
        assert status == 200 and len(body) > 1000
        status, body = _get(f"{base}/api/docs")
        assert status == 200 and b"/static/ninja/swagger-ui-bundle.js" in body  # served here, not from a CDN
        status, body = _get(f"{base}/static/ninja/swagger-ui-bundle.js")
        assert status == 200 and len(body) > 100_000
        # The root (the admin's "view site") leads to the API's documentation, not to a 404.
        with urllib.request.urlopen(f"{base}/") as response:
            assert response.status == 200 and response.url == f"{base}/api/docs"


@pytest.mark.django_db(transaction=True)
def test_load_fixtures_once(clean_env, tmp_path):
    """The first start loads fixtures/ (embedding it); the next finds documents and loads nothing."""
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(ROOT / "fixtures" / "sotu.parquet").slice(0, 12), tmp_path / "f.parquet")
    first = site_command(clean_env, "load_fixtures", str(tmp_path))
    assert "12 inserted" in first
    # Said before the minutes begin: how long embedding takes on this machine, measured.
    assert re.search(r"embedding its 12 texts takes about \d+ seconds here \(\d+ texts/s on cpu", first), (
        first
    )
    out = site_command(clean_env, "load_fixtures", str(tmp_path))
    assert "12 documents stored; fixtures not loaded again" in out
    assert Document.objects.count() == 12
    # The speeches' own dates, not the load's: the fixture's created_at column fills the field.
    assert {d.year for d in Document.objects.values_list("created_at", flat=True)} == {1790}


def test_check_deploy_is_clean_for_production_settings(clean_env):
    """DEBUG off by default; with a key from the environment and DJANGO_SECURE=1, check --deploy is clean."""
    from tests.helpers import run_python

    env = {
        **clean_env,
        "DATABASE_URL": database_url(connection.settings_dict),
        "DJANGO_SECRET_KEY": "x" * 20 + "-a-long-random-production-key-" + "y" * 30,
        "DJANGO_SECURE": "1",
        "DJANGO_ALLOWED_HOSTS": "vectors.example.org",
    }
    code = (
        "import os, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'project.settings'; django.setup();"
        "from django.conf import settings; print(settings.DEBUG, settings.ALLOWED_HOSTS);"
        "from django.core.management import call_command;"
        "call_command('check', deploy=True, fail_level='WARNING')"
    )
    result = run_python(code, env)
    assert result.returncode == 0, result.stderr
    assert "False ['vectors.example.org']" in result.stdout


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_servers_share_no_control_socket(clean_env, tmp_path):
    """gunicorn 25+ opens a control socket at one path per user; the site's servers open none, so instances
    on one machine stay independent, unless GUNICORN_CONTROL_SOCKET gives one a path of its own."""
    home = tmp_path / "home"
    home.mkdir()
    env = {**clean_env, "HOME": str(home), "VECTORSTORE_PRELOAD_MODEL": "0"}
    env.pop("XDG_RUNTIME_DIR", None)
    url = database_url(connection.settings_dict)
    own = tmp_path / "own.ctl"
    with (
        serve(url, workers=1, env=env) as first,
        serve(url, workers=1, env={**env, "GUNICORN_CONTROL_SOCKET": str(own)}) as second,
    ):
        assert _get(f"http://127.0.0.1:{first}/api/health")[0] == 200
        assert _get(f"http://127.0.0.1:{second}/api/health")[0] == 200
        assert list(home.rglob("*.ctl")) == []
        assert own.is_socket()


def test_a_gunicorn_worker_freezes_what_it_loaded_out_of_the_collectors_reach(monkeypatch):
    """post_worker_init ends with gc.freeze(): the objects a worker has loaded (Django, and torch with the
    model when preloaded) are never walked by a full collection (410-500 ms each with the model)."""
    import gc
    import logging

    from project import gunicorn

    monkeypatch.setenv("VECTORSTORE_PRELOAD_MODEL", "0")  # the freeze does not depend on the model
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    try:
        gunicorn.post_worker_init(type("Worker", (), {"log": logging.getLogger("test")})())
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
