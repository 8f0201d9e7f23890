"""docker-compose.yml is right by construction (no Docker engine runs here): parse it and check it."""

import re
from pathlib import Path

import dj_database_url
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} with the defaults, and ${VAR:?message} with a stand-in."""
    value = re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)
    return re.sub(r"\$\{\w+:\?[^}]*\}", "set-by-user", value)


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_db_service_runs_pgvector_17_or_later_with_a_health_check(compose):
    db = compose["services"]["db"]
    image, tag = db["image"].split(":")
    assert image == "pgvector/pgvector"
    assert int(re.fullmatch(r"pg(\d+)", tag).group(1)) >= 17
    test = " ".join(db["healthcheck"]["test"])
    assert "pg_isready" in test
    assert f"-U {db['environment']['POSTGRES_USER']}" in test


def test_db_data_lives_in_a_named_volume(compose):
    volume, target = compose["services"]["db"]["volumes"][0].split(":")
    assert volume in compose["volumes"]
    assert target == "/var/lib/postgresql/data"


def test_web_reaches_db_through_database_url(compose):
    db_env = compose["services"]["db"]["environment"]
    web = compose["services"]["web"]
    config = dj_database_url.parse(interpolate(web["environment"]["DATABASE_URL"]))
    assert config["ENGINE"] == "django.db.backends.postgresql"
    assert config["HOST"] == "db" and config["PORT"] == 5432
    assert config["NAME"] == db_env["POSTGRES_DB"]
    assert config["USER"] == db_env["POSTGRES_USER"]
    assert config["PASSWORD"] == interpolate(db_env["POSTGRES_PASSWORD"])
    assert web["depends_on"]["db"]["condition"] == "service_healthy"


def test_web_migrates_then_serves_with_gunicorn(compose):
    web = compose["services"]["web"]
    command = web["command"]
    assert command.index("manage.py migrate") < command.index("gunicorn project.wsgi:application")
    assert "0.0.0.0:8000" in command
    assert "127.0.0.1:8000:8000" in web["ports"]
    assert "DJANGO_SECRET_KEY" in web["environment"]


def test_web_image_installs_the_pinned_cpu_torch_and_requirements(compose):
    assert compose["services"]["web"]["build"] == "."
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "torch==2.13.0" in dockerfile
    assert "pip install -r requirements.txt" in dockerfile
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()


def test_an_embedding_worker_runs_beside_the_web_server(compose):
    """The compose file runs `embed_worker` as a service of its own, on the same database as the site."""
    worker, web = compose["services"]["worker"], compose["services"]["web"]
    assert worker["command"] == "python manage.py embed_worker"
    assert worker["environment"]["DATABASE_URL"] == web["environment"]["DATABASE_URL"]
    assert worker["depends_on"]["db"]["condition"] == "service_healthy"
