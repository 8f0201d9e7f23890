"""VectorIndex against the real PostgreSQL: each kind's expression and operator class, usable by the
ORDER BY ... LIMIT a search of that kind sends (EXPLAIN), and written by makemigrations as declared."""

import pytest
from django.db import connection
from django.db.migrations.writer import MigrationWriter

from tests.helpers import unit_vectors
from tests.testapp.models import HostDocument
from vectorstore.indexing.vector_indexes import VectorIndex

pytestmark = pytest.mark.django_db

# (kind, the ORDER BY a search of that kind sends) on HostDocument's vector(8).
KINDS = [
    ({}, "embedding <=> %s::vector", "vector_cosine_ops"),
    ({"metric": "l2"}, "embedding <-> %s::vector", "vector_l2_ops"),
    ({"quantization": "half"}, "embedding::halfvec(8) <=> %s::halfvec(8)", "halfvec_cosine_ops"),
    (
        {"quantization": "half", "metric": "inner_product"},
        "embedding::halfvec(8) <#> %s::halfvec(8)",
        "halfvec_ip_ops",
    ),
    (
        {"quantization": "binary"},
        "binary_quantize(embedding)::bit(8) <~> binary_quantize(%s::vector)",
        "bit_hamming_ops",
    ),
    (
        {"quantization": "half", "method": "ivfflat", "lists": 4},
        "embedding::halfvec(8) <=> %s::halfvec(8)",
        "halfvec_cosine_ops",
    ),
]


@pytest.mark.parametrize(("options", "order_by", "ops"), KINDS)
def test_each_kind_is_created_and_serves_its_search(options, order_by, ops):
    HostDocument.objects.bulk_create(
        HostDocument(text=str(i), embedding=v) for i, v in enumerate(unit_vectors(300, 8, seed=2))
    )
    with connection.cursor() as cursor:  # the table's own vector indexes out (the test's transaction)
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'testapp_hostdocument'"
            " AND (indexdef LIKE '%%USING hnsw%%' OR indexdef LIKE '%%USING ivfflat%%')"
        )
        for (name,) in cursor.fetchall():
            cursor.execute(f'DROP INDEX "{name}"')
    index = VectorIndex(name="hostdoc_kind", dimensions=8, **options)
    with connection.schema_editor() as editor:
        editor.add_index(HostDocument, index)
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'hostdoc_kind'")
        (definition,) = cursor.fetchone()
        assert ops in definition and f"USING {options.get('method', 'hnsw')}" in definition
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute(
            f"EXPLAIN SELECT id FROM testapp_hostdocument ORDER BY {order_by} LIMIT 5", [str(list(range(8)))]
        )
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "hostdoc_kind" in plan, plan


def test_makemigrations_writes_it_as_declared():
    """The migration writer's output, imported back, is the same index (Index equality is deconstruct's)."""
    index = VectorIndex(name="p_bin", dimensions=384, quantization="binary", m=24, ef_construction=100)
    code, imports = MigrationWriter.serialize(index)
    assert code.startswith("vectorstore.indexing.vector_indexes.VectorIndex(") and "expressions" not in code
    namespace: dict = {}
    exec("\n".join(sorted(imports)), namespace)
    assert eval(code, namespace) == index
    assert VectorIndex(name="p_full").deconstruct()[2] == {"name": "p_full"}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"method": "diskann"}, "method"),
        ({"quantization": "int8", "dimensions": 8}, "quantization"),
        ({"metric": "manhattan"}, "metric"),
        ({"quantization": "half"}, "dimensions"),
        ({"method": "ivfflat", "m": 16}, "IVFFlat takes lists"),
        ({"lists": 10}, "HNSW takes m"),
    ],
)
def test_bad_options_are_named(options, message):
    with pytest.raises(ValueError, match=message):
        VectorIndex(name="bad", **options)


def test_document_tables_keep_their_vectors_in_the_row():
    """migrate sets every document table's vector column to STORAGE MAIN (pgvector's default, EXTERNAL,
    moves a 384-dimension vector of a row with text out to TOAST); a storage set by hand is kept."""
    from vectorstore.apps import _vector_storage

    def storage(table: str) -> str:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = %s::regclass AND attname = 'embedding'",
                [table],
            )
            return cursor.fetchone()[0]

    assert storage("vectorstore_document") == "m" and storage("testapp_hostdocument") == "m"
    with connection.cursor() as cursor:
        cursor.execute("ALTER TABLE testapp_hostdocument ALTER COLUMN embedding SET STORAGE PLAIN")
        cursor.execute("ALTER TABLE vectorstore_document ALTER COLUMN embedding SET STORAGE EXTERNAL")
    _vector_storage(sender=None)
    assert storage("testapp_hostdocument") == "p" and storage("vectorstore_document") == "m"
