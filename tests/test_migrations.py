"""Migrations: complete, applicable to an empty database, reversible."""

import pytest
from django.core.management import call_command
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from tests.helpers import unit_vectors
from tests.testapp.models import HostDocument
from vectorstore.indexing.operations import AddIvfflatIndex, ivfflat_lists


def _tables() -> set[str]:
    with connection.cursor() as cursor:
        return set(connection.introspection.table_names(cursor))


def _extension_version() -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        row = cursor.fetchone()
    return row[0] if row else None


def _indexdef(name: str) -> str | None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = %s", [name])
        row = cursor.fetchone()
    return row[0] if row else None


@pytest.mark.django_db
def test_no_missing_migrations():
    """Every model change has its migration (fails when one is missing)."""
    call_command("makemigrations", "--check", "--dry-run", verbosity=0)


@pytest.mark.django_db(transaction=True)
def test_migrations_reverse_and_reapply():
    """vectorstore migrates to zero (dropping table and extension) and back again."""
    assert {"vectorstore_document", "testapp_hostdocument"} <= _tables()
    version = _extension_version()
    assert version is not None and version.count(".") == 2
    call_command("migrate", "vectorstore", "zero", verbosity=0)
    assert not {"vectorstore_document", "testapp_hostdocument"} & _tables()
    assert _extension_version() is None
    call_command("migrate", verbosity=0)
    assert {"vectorstore_document", "testapp_hostdocument"} <= _tables()
    assert _extension_version() == version
    hnsw = _indexdef("vectorstore_document_hnsw")
    assert "USING hnsw (embedding vector_cosine_ops)" in hnsw
    assert "m='16'" in hnsw and "ef_construction='64'" in hnsw
    assert "USING gin (search_vector)" in _indexdef("vectorstore_document_fts")
    assert "USING gin (metadata)" in _indexdef("vectorstore_document_meta")


def test_ivfflat_lists_follow_pgvector_advice():
    """rows/1000 up to a million rows, sqrt(rows) above, never below one."""
    assert ivfflat_lists(0) == 1
    assert ivfflat_lists(2_500) == 2
    assert ivfflat_lists(1_000_000) == 1000
    assert ivfflat_lists(4_000_000) == 2000


@pytest.mark.django_db
def test_add_ivfflat_index_sizes_lists_from_rows_and_reverses():
    """The operation counts the rows at migrate time, creates the index, and drops it backwards."""
    HostDocument.objects.bulk_create(
        HostDocument(text=str(i), embedding=v) for i, v in enumerate(unit_vectors(2_500, 8))
    )
    state = MigrationLoader(connection).project_state()
    op = AddIvfflatIndex("hostdocument", name="test_ivf_cos", opclass="vector_cosine_ops")
    with connection.schema_editor() as editor:
        op.database_forwards("testapp", editor, state, state)
    indexdef = _indexdef("test_ivf_cos")
    assert "USING ivfflat (embedding vector_cosine_ops) WITH (lists='2')" in indexdef
    with connection.schema_editor() as editor:
        op.database_backwards("testapp", editor, state, state)
    assert _indexdef("test_ivf_cos") is None
    # The operation deconstructs for the migration writer and leaves the model state alone.
    assert op.deconstruct() == (
        "AddIvfflatIndex",
        [],
        {"model_name": "hostdocument", "name": "test_ivf_cos"},
    )
