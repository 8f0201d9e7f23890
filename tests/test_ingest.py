"""bulk_copy and the loader against the real PostgreSQL: speed paths, bad input, conflicts, host models."""

import json
import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

from tests.helpers import ROOT, database_url, unit_vectors
from tests.testapp.models import HostDocument
from vectorstore.loading import ingest
from vectorstore.models import Document

pytestmark = pytest.mark.django_db

FIXTURE = ROOT / "fixtures" / "sotu.parquet"


def vector_column(vectors: np.ndarray) -> pa.Array:
    return pa.array(list(vectors), pa.list_(pa.float32()))


def make_table(n: int, dims: int = 384, seed: int = 0, id_prefix: str = "doc-") -> pa.Table:
    """n rows shaped like the seed: text, id, category, a timestamp, a number, vectors."""
    return pa.table(
        {
            "id": [f"{id_prefix}{i}" for i in range(n)],
            "text": [f"passage number {i} about topic {i % 7}" for i in range(n)],
            "category": [f"cat{i % 3}" for i in range(n)],
            "published": pa.array(
                [pd.Timestamp("2024-01-01", tz="UTC") + pd.Timedelta(hours=i) for i in range(n)],
                pa.timestamp("us", tz="UTC"),
            ),
            "score": [i / 2 for i in range(n)],
            "embedding": vector_column(unit_vectors(n, dims, seed)),
        }
    )


def write(tmp_path, table: pa.Table, name: str = "input.parquet"):
    path = tmp_path / name
    pq.write_table(table, path)
    return path


def bulk_copy(*args, **kwargs) -> dict:
    """Run the command with --json and return its summary (the last line)."""
    from io import StringIO

    out = StringIO()
    call_command("bulk_copy", *map(str, args), "--json", stdout=out, **kwargs)
    return json.loads(out.getvalue().strip().splitlines()[-1])


def snapshot() -> list[tuple]:
    return list(Document.objects.order_by("external_id").values_list("external_id", "text", "category"))


def test_copy_loads_texts_vectors_and_metadata(tmp_path):
    """Every column lands: id as external_id, category, the rest as metadata (ISO dates), exact vectors."""
    table = make_table(50)
    summary = bulk_copy(write(tmp_path, table))
    assert summary["rows"] == summary["inserted"] == 50
    assert summary["method"] == "copy" and summary["index_strategy"] == "rebuild"
    doc = Document.objects.get(external_id="doc-7")
    assert doc.text == "passage number 7 about topic 0"
    assert doc.category == "cat1"
    assert doc.metadata == {"published": "2024-01-01T07:00:00+00:00", "score": 3.5}
    expected = np.asarray(table.column("embedding")[7].as_py(), dtype=np.float32)
    assert np.array_equal(np.asarray(doc.embedding, dtype=np.float32), expected)
    # the indexes dropped for the load are back, as declared
    with connection.cursor() as cursor:
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'vectorstore_document_hnsw'")
        assert (
            "USING hnsw (embedding vector_cosine_ops) WITH (m='16', ef_construction='64')"
            in cursor.fetchone()[0]
        )


def test_seed_column_name_embeddings_and_insert_method(tmp_path):
    """The notebook's `embeddings` column is accepted, and --method insert loads the same rows."""
    table = make_table(30).rename_columns(["id", "text", "category", "published", "score", "embeddings"])
    summary = bulk_copy(write(tmp_path, table), "--method", "insert", "--batch-size", "7")
    assert summary["inserted"] == 30 and summary["method"] == "insert"
    assert Document.objects.count() == 30


def test_populated_table_keeps_its_indexes(tmp_path):
    """A load smaller than the table writes into the live indexes instead of rebuilding them."""
    bulk_copy(write(tmp_path, make_table(40, id_prefix="a-"), "a.parquet"))
    summary = bulk_copy(write(tmp_path, make_table(10, id_prefix="b-", seed=1), "b.parquet"))
    assert summary["index_strategy"] == "keep" and summary["inserted"] == 10
    assert Document.objects.count() == 50


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda t: t.set_column(1, "text", pa.array([None if i == 3 else "x" for i in range(t.num_rows)])),
            r"column 'text', row 3: text is null or empty",
        ),
        (
            lambda t: t.set_column(1, "text", pa.array(["  " if i == 4 else "x" for i in range(t.num_rows)])),
            r"column 'text', row 4: text is null or empty",
        ),
        (
            lambda t: t.set_column(
                5,
                "embedding",
                vector_column([v[:383] if i == 2 else v for i, v in enumerate(unit_vectors(10, 384))]),
            ),
            r"column 'embedding', row 2: embedding has 383 numbers, the vector column holds 384",
        ),
        (
            lambda t: t.set_column(
                5,
                "embedding",
                vector_column(
                    [
                        np.where(np.arange(384) == 9, np.nan, v) if i == 5 else v
                        for i, v in enumerate(unit_vectors(10, 384))
                    ]
                ),
            ),
            r"column 'embedding', row 5: embedding holds NaN",
        ),
        (
            lambda t: t.set_column(
                5,
                "embedding",
                vector_column(
                    [np.full(384, np.inf) if i == 6 else v for i, v in enumerate(unit_vectors(10, 384))]
                ),
            ),
            r"column 'embedding', row 6: embedding holds NaN, infinity",
        ),
        (
            lambda t: t.set_column(0, "id", pa.array(["dup" if i in (1, 4) else f"u{i}" for i in range(10)])),
            r"column 'id', row 4: duplicate id 'dup' \(also at row 1\)",
        ),
        (lambda t: t.drop_columns(["text"]), r"no text column 'text'"),
        (
            lambda t: t.set_column(1, "text", pa.array(range(10))),
            r"column 'text' must hold strings, not int64",
        ),
        (
            lambda t: t.set_column(5, "embedding", pa.array(["[1,2]"] * 10)),
            r"column 'embedding' must hold lists of numbers, not string",
        ),
    ],
    ids=[
        "null-text",
        "blank-text",
        "dimension",
        "nan",
        "infinity",
        "duplicate-id",
        "no-text-column",
        "text-not-string",
        "embedding-not-list",
    ],
)
def test_bad_input_aborts_and_leaves_the_table_unchanged(tmp_path, mutate, message):
    """Each bad input names the file, the column and the first bad row; nothing is stored."""
    bulk_copy(write(tmp_path, make_table(5, id_prefix="keep-", seed=3), "before.parquet"))
    before = snapshot()
    path = write(tmp_path, mutate(make_table(10)))
    with pytest.raises(CommandError, match=message) as info:
        bulk_copy(path)
    if "column" in message:
        assert str(path) in str(info.value)
    assert snapshot() == before


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "no such file"), (b"id,text\n1,hello\n", "not a parquet file"), ("empty", "no rows")],
    ids=["missing", "not-parquet", "empty"],
)
def test_unreadable_files_are_named(tmp_path, content, message):
    path = tmp_path / "input.parquet"
    if content == "empty":
        pq.write_table(make_table(0), path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CommandError, match=message) as info:
        bulk_copy(path)
    assert str(path) in str(info.value)


def test_id_already_stored_aborts(tmp_path):
    path = write(tmp_path, make_table(10))
    bulk_copy(path)
    before = snapshot()
    with pytest.raises(
        CommandError,
        match=r"row 0: id 'doc-0' is already stored .*--on-conflict skip or --on-conflict update",
    ):
        bulk_copy(path)
    assert snapshot() == before


def test_rejects_pair_each_reason_with_its_own_record(tmp_path):
    """A duplicate id found in the database (row 3) before a bad text found while checking (row 8): the
    rejects file still pairs each reason with the record of its own row."""
    table = make_table(10)
    texts = table.column("text").to_pylist()
    texts[8] = "   "
    ids = table.column("id").to_pylist()
    ids[3] = ids[1]
    table = table.set_column(1, "text", pa.array(texts)).set_column(0, "id", pa.array(ids))
    summary = bulk_copy(write(tmp_path, table), "--on-error", "skip")
    assert (summary["inserted"], summary["rejected"]) == (8, 2)
    rejects = pq.read_table(tmp_path / "input.rejects.parquet").to_pylist()
    assert [(r["row"], r["column"], r["id"], r["text"]) for r in rejects] == [
        (3, "id", "doc-1", "passage number 3 about topic 3"),
        (8, "text", "doc-8", "   "),
    ]


def test_on_error_skip_writes_rejects_and_counts_add_up(tmp_path):
    """Bad rows go to INPUT.rejects.parquet with a reason each; the rest load; rows = inserted + rejected."""
    vectors = unit_vectors(12, 384)
    vectors[5, 0] = np.nan
    table = make_table(12).set_column(5, "embedding", vector_column(vectors))
    texts = table.column("text").to_pylist()
    texts[2] = None
    ids = table.column("id").to_pylist()
    ids[9] = ids[1]
    table = table.set_column(1, "text", pa.array(texts)).set_column(0, "id", pa.array(ids))
    summary = bulk_copy(write(tmp_path, table), "--on-error", "skip")
    assert (summary["rows"], summary["inserted"], summary["rejected"]) == (12, 9, 3)
    assert summary["rows"] == summary["inserted"] + summary["skipped"] + summary["rejected"]
    rejects = pq.read_table(tmp_path / "input.rejects.parquet").to_pylist()
    assert [(r["row"], r["column"]) for r in rejects] == [(2, "text"), (5, "embedding"), (9, "id")]
    assert "NaN" in rejects[1]["reason"] and "duplicate id 'doc-1'" in rejects[2]["reason"]
    assert (
        rejects[1]["id"] == "doc-5" and rejects[0]["text"] is None
    )  # the original records, to fix and reload
    assert Document.objects.count() == 9


def test_on_conflict_skip_twice_loads_each_row_once(tmp_path):
    path = write(tmp_path, make_table(20))
    first = bulk_copy(path, "--on-conflict", "skip")
    second = bulk_copy(path, "--on-conflict", "skip")
    assert (first["inserted"], first["skipped"]) == (20, 0)
    assert (second["inserted"], second["skipped"]) == (0, 20)
    assert Document.objects.count() == 20


def test_on_conflict_update_changes_text_and_vector(tmp_path):
    bulk_copy(write(tmp_path, make_table(10), "v1.parquet"))
    changed = make_table(12, seed=9)
    changed = changed.set_column(1, "text", pa.array([f"revised {i}" for i in range(12)]))
    summary = bulk_copy(write(tmp_path, changed, "v2.parquet"), "--on-conflict", "update")
    assert (summary["inserted"], summary["updated"]) == (2, 10)
    doc = Document.objects.get(external_id="doc-3")
    assert doc.text == "revised 3"
    assert np.array_equal(np.asarray(doc.embedding, dtype=np.float32), unit_vectors(12, 384, seed=9)[3])
    assert Document.objects.count() == 12


def test_host_model_with_its_own_dimension(tmp_path):
    """--model loads into a host site's own subclass of AbstractDocument (8 dimensions here)."""
    path = write(tmp_path, make_table(25, dims=8))
    summary = bulk_copy(
        path, "--model", "testapp.HostDocument", "--text-field", "text", "--vector-field", "embedding"
    )
    assert summary["table"] == "testapp_hostdocument" and summary["inserted"] == 25
    assert HostDocument.objects.count() == 25 and Document.objects.count() == 0
    with pytest.raises(CommandError, match="embedding has 8 numbers, the vector column holds 384"):
        bulk_copy(path)


def test_load_from_python_on_a_dataframe():
    """The notebook's pg_copy(df) as load(df): a pandas DataFrame with list vectors."""
    df = make_table(15).to_pandas()
    df["embedding"] = df["embedding"].apply(lambda v: np.asarray(v).tolist())
    report = ingest.load(df, on_conflict="skip")
    assert report.inserted == 15 and report.rows == 15
    assert ingest.load(df, on_conflict="skip").skipped == 15


def test_load_without_vectors_embeds_on_the_way(tmp_path):
    """A parquet without vectors is embedded while it loads; the vectors equal the model's own."""
    from vectorstore.embedding import Embedder

    table = pq.read_table(FIXTURE).slice(0, 24)
    summary = bulk_copy(write(tmp_path, table), "--batch-size", "10")
    assert summary["embedded"] == 24 and summary["inserted"] == 24
    texts = table.column("text").to_pylist()
    expected = Embedder().encode(texts)
    stored = {d.external_id: np.asarray(d.embedding, dtype=np.float32) for d in Document.objects.all()}
    got = np.stack([stored[i] for i in table.column("id").to_pylist()])
    assert np.allclose(got, expected, atol=1e-5)
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


@pytest.mark.django_db(transaction=True)  # the child process commits; flush after
def test_precomputed_load_does_not_import_torch(tmp_path, clean_env):
    """Loading vectors that are already computed never pays for importing torch."""
    path = write(tmp_path, make_table(10))
    code = (
        "import os, sys, django; os.environ['DJANGO_SETTINGS_MODULE'] = 'project.settings'; django.setup();"
        "from django.core.management import call_command;"
        f"call_command('bulk_copy', {str(path)!r}, '--on-conflict', 'skip');"
        "print('torch' in sys.modules, 'sentence_transformers' in sys.modules)"
    )
    env = {**clean_env, "DATABASE_URL": database_url(connection.settings_dict)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "False False"


def test_nan_metadata_becomes_null(tmp_path):
    table = make_table(3).set_column(4, "score", pa.array([1.0, math.nan, None]))
    bulk_copy(write(tmp_path, table))
    assert [d.metadata["score"] for d in Document.objects.order_by("external_id")] == [1.0, None, None]


def _prepared_transactions() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_prepared_xacts WHERE gid LIKE 'vectorstore-load-%%'")
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)  # the workers' own connections must see committed rows
def test_workers_load_a_populated_table_all_or_nothing(tmp_path):
    """--workers 2 writes two COPY streams into the indexed table and commits them as one."""
    bulk_copy(write(tmp_path, make_table(60, id_prefix="base-"), "base.parquet"))
    summary = bulk_copy(
        write(tmp_path, make_table(40, seed=4), "more.parquet"), "--workers", "2", "--batch-size", "5"
    )
    assert (summary["workers"], summary["index_strategy"], summary["inserted"]) == (2, "keep", 40)
    assert Document.objects.count() == 100
    # A failure in one stream (an id already stored, late in the file) rolls back both.
    clash = make_table(40, seed=5, id_prefix="new-").set_column(
        0, "id", pa.array([f"new-{i}" if i != 33 else "base-7" for i in range(40)])
    )
    with pytest.raises(CommandError, match="'base-7' is already stored"):
        bulk_copy(write(tmp_path, clash, "clash.parquet"), "--workers", "2", "--batch-size", "5")
    assert Document.objects.count() == 100
    assert _prepared_transactions() == 0


@pytest.mark.django_db(transaction=True)  # the poller's own connection must see the build
def test_index_build_reports_progress_from_postgres():
    """build_indexes polls pg_stat_progress_create_index while the HNSW index builds."""
    from vectorstore.indexing import indexes
    from vectorstore.loading import pgcopy

    Document.objects.bulk_create(
        Document(text=str(i), embedding=v) for i, v in enumerate(unit_vectors(4000, 384))
    )
    conn = pgcopy.django_connection()
    hnsw = [i for i in indexes.rebuildable_indexes(conn, "vectorstore_document") if i.method == "hnsw"]
    seen = []
    with transaction.atomic():
        indexes.drop_indexes(conn, hnsw)
        indexes.build_indexes(conn, hnsw, progress=lambda *a: seen.append(a), progress_interval=0.01)
    assert seen, "no progress was reported"
    assert {name for name, *_ in seen} == {"vectorstore_document_hnsw"}
    assert any(phase.startswith("building index") for _, phase, _, _ in seen)


def test_bare_text_and_vectors_get_the_fields_defaults(tmp_path):
    """A file with only text and vectors loads: category and metadata take their defaults."""
    table = make_table(5).select(["text", "embedding"])
    summary = bulk_copy(write(tmp_path, table))
    assert summary["inserted"] == 5
    assert set(Document.objects.values_list("category", flat=True)) == {""}
    assert list(Document.objects.values_list("metadata", flat=True)) == [{}] * 5
    assert Document.objects.filter(external_id__isnull=True).count() == 5
