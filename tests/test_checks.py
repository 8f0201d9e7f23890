"""System checks name the misconfiguration."""

import json

import pytest
from django.core.checks import run_checks
from django.core.management import call_command
from django.core.management.base import SystemCheckError
from django.db import connection
from django.test import override_settings

from tests.testapp.models import HostDocument
from vectorstore.checks import (
    check_embedding_models,
    check_installed_apps,
    check_replicas,
    check_settings,
    check_vector_columns,
)


def _ids(messages) -> set[str]:
    return {m.id for m in messages}


def test_default_configuration_is_clean():
    """The site's own settings raise nothing from vectorstore."""
    assert not [m for m in run_checks() if m.id and m.id.startswith("vectorstore.")]


@override_settings(VECTORSTORE={"DIMENSIONS": 768})
def test_dimension_mismatch_between_settings_and_field():
    """DIMENSIONS 768 against a vector(384) field: an error naming both, and `check` fails."""
    errors = check_settings()
    assert _ids(errors) == {"vectorstore.E010"}
    assert "768" in errors[0].msg and "vector(384)" in errors[0].msg
    with pytest.raises(SystemCheckError, match=r"vectorstore\.E010"):
        call_command("check")


@pytest.mark.django_db
def test_dimension_mismatch_between_field_and_column():
    """A column altered to vector(512) under a vector(384) field is reported by the database check."""
    assert check_vector_columns(databases=["default"]) == []
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE vectorstore_document ALTER COLUMN embedding TYPE vector(512)")
    errors = check_vector_columns(databases=["default"])
    assert _ids(errors) == {"vectorstore.E011"}
    assert "vector(384)" in errors[0].msg and "vector(512)" in errors[0].msg
    with pytest.raises(SystemCheckError, match=r"vectorstore\.E011"):
        call_command("check", databases=["default"])


def test_missing_contrib_postgres():
    """Without django.contrib.postgres, the check says what to add."""
    from django.conf import settings

    apps_without = [a for a in settings.INSTALLED_APPS if a != "django.contrib.postgres"]
    with override_settings(INSTALLED_APPS=apps_without):
        errors = check_installed_apps()
    assert _ids(errors) == {"vectorstore.E001"}
    assert "django.contrib.postgres" in errors[0].hint


@override_settings(
    VECTORSTORE={"DISTANCE": "manhattan", "DEVICE": "tpu", "DIMENSIONS": "384", "DOCUMENT_MODEL": "nope.Doc"}
)
def test_bad_values_are_named():
    """Each bad setting gets an error that names it and its value."""
    text = " ".join(m.msg for m in check_settings())
    assert "'DISTANCE'] is 'manhattan'" in text
    assert "'DEVICE'] is 'tpu'" in text
    assert "'DIMENSIONS'] must be an integer" in text
    assert "'DOCUMENT_MODEL'] is 'nope.Doc'" in text


@override_settings(VECTORSTORE={"DIMENSION": 384, "DEVICE": "cuda:1"})
def test_unknown_key_warns_and_device_index_is_accepted():
    """A misspelt key is a warning; a device naming one GPU is fine."""
    messages = check_settings()
    assert _ids(messages) == {"vectorstore.W001"}
    assert "DIMENSION" in messages[0].msg


def _model_files(path, out_features: int):
    """The files of a sentence-transformers model ending in a Dense layer: what the check reads."""
    (path / "2_Dense").mkdir(parents=True)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"},
        {"idx": 3, "name": "3", "path": "3_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    (path / "modules.json").write_text(json.dumps(modules))
    (path / "2_Dense" / "config.json").write_text(
        json.dumps({"in_features": 384, "out_features": out_features})
    )
    return str(path)


def test_the_models_size_is_read_from_its_files():
    """The bundled model says 384 without torch being loaded; a Dense head says its out_features; a name
    that is not on this disk cannot be told (checked when it loads)."""
    from vectorstore.embedding import declared_dimension

    assert declared_dimension(None) == 384
    assert declared_dimension("sentence-transformers/all-mpnet-base-v2") is None


def test_an_embedding_model_of_another_size_is_an_error(tmp_path, monkeypatch):
    """The MODEL setting against the configured document model, and a class's own embedding_model against
    its field: E014 naming both sizes; a model that names none and is not configured is not checked."""
    from vectorstore.embedding import declared_dimension
    from vectorstore.models import Document

    wide = _model_files(tmp_path / "wide", 768)
    assert declared_dimension(wide) == 768
    with override_settings(VECTORSTORE={"MODEL": wide}):
        errors = check_embedding_models()
    assert _ids(errors) == {"vectorstore.E014"}
    assert "768" in errors[0].msg and "vector(384)" in errors[0].msg and errors[0].obj is Document

    assert check_embedding_models() == []  # HostDocument (vector(8)) names no model: not checked
    monkeypatch.setattr(HostDocument, "embedding_model", wide, raising=False)
    errors = check_embedding_models()
    assert _ids(errors) == {"vectorstore.E014"} and errors[0].obj is HostDocument
    assert "HostDocument.embedding_model" in errors[0].msg and "vector(8)" in errors[0].msg
    monkeypatch.setattr(HostDocument, "embedding_model", _model_files(tmp_path / "small", 8))
    assert check_embedding_models() == []


def test_deferred_embedding_needs_nullable_vectors_and_a_known_mode():
    """EMBED_ON_SAVE 'deferred' is E015 for each document model whose vector is NOT NULL (a text saved
    before the worker embeds it could not be written); an unknown mode is E003."""
    from vectorstore.checks import check_settings

    assert check_embedding_models() == []
    with override_settings(VECTORSTORE={"EMBED_ON_SAVE": "deferred"}):
        errors = [e for e in check_embedding_models() if e.id == "vectorstore.E015"]
    labels = {e.obj._meta.label for e in errors}
    assert "testapp.HostDocument" in labels and "vectorstore.Document" not in labels  # Document: NULL
    assert "null=True" in errors[0].hint
    with override_settings(VECTORSTORE={"EMBED_ON_SAVE": "later"}):
        errors = [e for e in check_settings() if e.id == "vectorstore.E003"]
    assert len(errors) == 1 and "EMBED_ON_SAVE" in errors[0].msg and "deferred" in errors[0].msg


@override_settings(VECTORSTORE={"DIMENSIONS": 384, "REPLICAS": ["default", "missing"]})
def test_replicas_that_are_not_replica_databases_and_a_missing_router_are_named():
    """The primary or an alias DATABASES lacks is an error; no router or middleware, warnings.
    (Real replicas, and a primary given as one: tests/test_replicas.py.)"""
    messages = check_replicas()
    assert _ids(messages) == {"vectorstore.E030", "vectorstore.W030", "vectorstore.W031"}
    named = [m.msg for m in messages if m.id == "vectorstore.E030"]
    assert any("'default'" in msg and "the primary" in msg for msg in named)
    assert any("'missing'" in msg and "not in DATABASES" in msg for msg in named)


def test_a_document_model_of_an_app_not_installed_is_a_check_not_a_traceback(tmp_path, clean_env):
    """DOCUMENT_MODEL naming a model of an app left out of INSTALLED_APPS (the guide's first stumble):
    makemigrations and check answer with vectorstore.E004 saying to add the app, and no traceback."""
    import subprocess
    import sys

    from tests.helpers import ROOT, database_url

    (tmp_path / "forgot_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        "VECTORSTORE = {**VECTORSTORE, 'DOCUMENT_MODEL': 'articles.Article'}\n"
    )
    env = {
        **clean_env,
        "PYTHONPATH": f"{tmp_path}:{ROOT}",
        "DJANGO_SETTINGS_MODULE": "forgot_settings",
        "DATABASE_URL": database_url(connection.settings_dict),
    }
    for command in (["check"], ["makemigrations", "--check", "--dry-run"]):
        result = subprocess.run(
            [sys.executable, str(ROOT / "manage.py"), *command], env=env, capture_output=True, text=True
        )
        output = result.stdout + result.stderr
        assert "Traceback" not in output, output
        assert result.returncode != 0 or command[0] == "makemigrations", output
        if result.returncode:
            assert "vectorstore.E004" in output and "no installed app has the label 'articles'" in output
            assert "INSTALLED_APPS" in output
