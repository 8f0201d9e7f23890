"""tune_search against the real index: it measures recall, stores the smallest setting that reaches the
target, and every search that sets none uses it (a per-query value still wins)."""

import json

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
    vectors = unit_vectors(4000, 384, seed=41)
    Document.objects.bulk_create(Document(text=str(i), embedding=v) for i, v in enumerate(vectors))
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE vectorstore_document")
    return vectors


def test_tune_search_stores_the_smallest_setting_that_reaches_the_target(random_corpus, capsys):
    """Each step's recall is measured; the stored ef_search is the first that reached target + margin,
    and the step before it did not."""
    call_command("tune_search", "--target-recall", "0.95", "--queries", "40", "--json")
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["index"] == "vectorstore_document_hnsw" and summary["setting"] == "hnsw.ef_search"
    assert summary["reached"] and summary["recall"] >= 0.96
    tried = summary["tried"]
    assert tried[-1] == [summary["value"], pytest.approx(summary["recall"])]
    assert all(recall < 0.96 for _, recall in tried[:-1])
    assert len(tried) >= 2, "ef_search 10 reached 0.96 on random vectors: the test would prove nothing"
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert (stored.ef_search, stored.rows, stored.k) == (summary["value"], 4000, 10)


def test_a_stored_setting_is_used_and_a_query_value_wins(random_corpus):
    """With ef_search 1 stored (and iterative scans off), a search returns one row: the stored value reached
    the index scan; a query's own ef_search still wins."""
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
    assert len(search.search(vector=query, k=10, iterative_scan="off").hits) == 1
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
