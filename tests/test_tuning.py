"""tune_search against the real index: it measures recall, stores the smallest setting that reaches the
target, and every search that sets none uses it (a per-query value still wins)."""

import json

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from tests.helpers import unit_vectors
from vectorstore import search
from vectorstore.models import Document, SearchTuning

pytestmark = pytest.mark.django_db


@pytest.fixture
def random_corpus():
    """4,000 random unit vectors: the hard case for HNSW, where ef_search 40 falls short of 0.95."""
    import pyarrow as pa

    from vectorstore import ingest

    vectors = unit_vectors(4000, 384, seed=41)
    # COPY, then the index built once (ANALYZE after): a row-by-row insert into the HNSW index took 16 s.
    table = pa.table(
        {
            "text": [str(i) for i in range(len(vectors))],
            "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        }
    )
    ingest.load(table, progress=False, tune=False)
    return vectors


def test_tune_search_stores_the_smallest_setting_that_reaches_the_target(random_corpus, capsys):
    """Each step's recall is measured; the stored ef_search is the first that reached target + margin,
    and the step before it did not."""
    call_command("tune_search", "--target-recall", "0.95", "--queries", "40", "--json")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["index"] == "vectorstore_document_hnsw" and summary["setting"] == "hnsw.ef_search"
    assert summary["reached"] and summary["recall"] >= 0.96
    from vectorstore.tuning import EF_SEARCH_STEPS

    tried = dict(summary["tried"])
    assert tried[summary["value"]] == pytest.approx(summary["recall"])
    assert all(recall < 0.96 for value, recall in tried.items() if value < summary["value"])
    # The next smaller setting was measured and fell short (the walk went up to it, or down past it).
    below = max(v for v in EF_SEARCH_STEPS if v < summary["value"])
    assert below >= 10 and tried[below] < 0.96, tried
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert (stored.ef_search, stored.rows, stored.k) == (summary["value"], 4000, 10)


def test_a_stored_setting_is_used_and_a_query_value_wins(random_corpus):
    """With ef_search 1 stored (and iterative scans off), a search returns at most one row: the stored value
    reached the index scan; a query's own ef_search still wins."""
    SearchTuning.objects.create(
        db_table="vectorstore_document",
        index_name="vectorstore_document_hnsw",
        method="hnsw",
        ef_search=1,
        recall=0.1,
        target_recall=0.95,
        k=10,
        queries=1,
        rows=4000,
    )
    search.forget_tuning()
    query = random_corpus[7]
    # ef_search 1 finds one candidate (pgvector may even return none of it): fewer than k, where the
    # default 40 returns all ten.
    assert len(search.search(vector=query, k=10, iterative_scan="off").hits) <= 1
    assert len(search.search(vector=query, k=10, iterative_scan="off", ef_search=40).hits) == 10
    assert (
        search.index_settings(None, None, None, search.tuned_settings("vectorstore_document", "default"))[
            "hnsw.ef_search"
        ]
        == "1"
    )


def test_tune_search_refuses_what_it_cannot_measure():
    """An empty table or a bad target is a CommandError naming the flag, and stores nothing."""
    with pytest.raises(CommandError, match="too few"):
        call_command("tune_search")
    with pytest.raises(CommandError, match=r"--target-recall 1\.5"):
        call_command("tune_search", "--target-recall", "1.5")
    assert not SearchTuning.objects.exists()


def _parquet(path, vectors, start: int = 0):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = [f"doc-{start + i}" for i in range(len(vectors))]
    table = pa.table(
        {
            "id": ids,
            "text": ids,
            "embedding": pa.array(list(vectors), type=pa.list_(pa.float32(), 384)),
        }
    )
    pq.write_table(table, path)
    return str(path)


def _emit(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


@pytest.mark.django_db(transaction=True)  # REINDEX CONCURRENTLY runs outside any transaction
def test_loads_and_rebuilds_tune_again_when_they_change_the_table_substantially(tmp_path, capsys):
    """A first bulk load tunes on its own; a small one (under 20% of the tuned rows) does not, nor one with
    --no-tune; a rebuilt index is tuned again."""
    vectors = unit_vectors(1600, 384, seed=5)
    call_command("bulk_copy", _parquet(tmp_path / "a.parquet", vectors[:1200]), "--json")
    first = _emit(capsys)["tuned"]
    assert first and first["setting"] == "hnsw.ef_search" and first["rows"] == 1200
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert (stored.ef_search, stored.rows, stored.target_recall) == (first["value"], 1200, 0.95)
    assert first["recall"] >= 0.96

    call_command("bulk_copy", _parquet(tmp_path / "b.parquet", vectors[1200:1400], 1200), "--json")
    assert _emit(capsys)["tuned"] is None  # 200 rows: under 20% of the 1,200 tuned
    call_command("bulk_copy", _parquet(tmp_path / "c.parquet", vectors[1400:], 1400), "--no-tune", "--json")
    assert _emit(capsys)["tuned"] is None
    assert SearchTuning.objects.get().rows == 1200

    call_command("reindex", "--json")
    rebuilt = _emit(capsys)["tuned"]
    assert rebuilt and rebuilt["rows"] == 1600
    assert SearchTuning.objects.get().rows == 1600


def test_the_one_pass_exact_ranking_agrees_with_an_exact_scan():
    """tune()'s truth, ranked here from one pass over the table, is what PostgreSQL's exact scan returns,
    for each metric (queries not of unit length, so that l2 and inner product differ from cosine)."""
    from psycopg import sql

    from vectorstore.tuning import OPERATORS, _exact

    vectors = unit_vectors(600, 384, seed=41) * np.linspace(0.5, 2.0, 600, dtype=np.float32)[:, None]
    Document.objects.bulk_create(Document(text=str(i), embedding=v) for i, v in enumerate(vectors))
    queries = unit_vectors(5, 384, seed=99) * 3
    for metric in ("cosine", "l2", "inner_product"):
        got = _exact("default", "vectorstore_document", "id", "embedding", metric, queries, 10)
        for query, ids in zip(queries, got, strict=True):
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL enable_indexscan = off")
                cursor.execute(
                    sql.SQL("SELECT id FROM vectorstore_document ORDER BY embedding {} %s::vector LIMIT 10")
                    .format(sql.SQL(OPERATORS[metric]))
                    .as_string(cursor.connection),
                    [str(query.tolist())],
                )
                assert ids == {r[0] for r in cursor.fetchall()}, metric
