"""search() through each kind of vector index (vectorstore.indexing.vector_indexes): the index's own
order picks the candidates (EXPLAIN), the hits are re-ranked by the full-precision distance and report it, and
filters, hybrid and MMR keep working on every kind."""

import numpy as np
import psycopg
import pytest
from django.db import connection

from tests.helpers import unit_vectors
from tests.test_search import make_corpus
from vectorstore.indexing import vector_indexes
from vectorstore.indexing.vector_indexes import VectorIndex
from vectorstore.loading import pgcopy
from vectorstore.models import Document
from vectorstore.search import search, statements

pytestmark = pytest.mark.django_db

KINDS = {
    "half": {"quantization": "half"},
    "binary": {"quantization": "binary"},
    "half-ivfflat": {"quantization": "half", "method": "ivfflat", "lists": 20},
    "binary-ivfflat": {"quantization": "binary", "method": "ivfflat", "lists": 20},
}


@pytest.fixture
def corpus():
    return make_corpus(3000)


def use_kind(name: str) -> str:
    """Replace the table's HNSW index with one of the kind (inside the test's transaction)."""
    index = VectorIndex(name=f"doc_{name.replace('-', '_')}", dimensions=384, **KINDS[name])
    with connection.cursor() as cursor:
        cursor.execute("DROP INDEX vectorstore_document_hnsw")
    with connection.schema_editor() as editor:
        editor.add_index(Document, index)
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE vectorstore_document")
    vector_indexes.forget()
    return index.name


@pytest.fixture
def sent(monkeypatch):
    """The statements each search sent, with the settings they ran under."""
    trips = []
    real_run = statements.run

    def run(using, knobs, statements_, vector):
        trips.append((knobs, statements_, vector))
        return real_run(using, knobs, statements_, vector)

    monkeypatch.setattr(statements, "run", run)
    return trips


def explain(knobs: dict, statement, vector: np.ndarray) -> str:
    conn = pgcopy.django_connection("default")
    with psycopg.Cursor(conn) as cursor:  # server-side binding: the vector goes as a binary vector
        for name, value in knobs.items():
            cursor.execute("SELECT set_config(%s, %s, true)", [name, value])
        cursor.execute("EXPLAIN " + statement.sql, statement.bind(pgcopy.binary_vector(vector)))
        return "\n".join(r[0] for r in cursor.fetchall())


def cosine_distances(vectors: np.ndarray, query: np.ndarray) -> np.ndarray:
    q = query / np.linalg.norm(query)
    return 1.0 - (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)) @ q


def noisy(vector: np.ndarray, seed: int, scale: float = 0.3) -> np.ndarray:
    noise = np.random.default_rng(seed).standard_normal(vector.shape).astype(np.float32)
    return vector + noise * scale * np.linalg.norm(vector) / np.linalg.norm(noise)


@pytest.mark.parametrize("kind", list(KINDS))
def test_search_orders_by_the_index_and_reranks_by_full_distance(corpus, kind, sent):
    name = use_kind(kind)
    quantization = KINDS[kind]["quantization"]
    query = noisy(corpus[42], seed=1)
    exact = np.argsort(cosine_distances(corpus, query))[:10]
    # Enough candidates that the re-rank finds the exact top 10 (random vectors: the neighbours after
    # the first are barely nearer than the rest, the hardest case for sign bits).
    # (IVFFlat: every list probed; random vectors have no clusters for one probe to find.)
    probes = 20 if "ivfflat" in kind else None
    result = search(vector=query, k=10, rerank=100 if quantization == "binary" else None, probes=probes)
    assert result.details["quantization"] == quantization
    ids = [int(h.document.external_id[1:]) for h in result.hits]
    assert ids[0] == 42
    assert len(set(ids) & set(exact.tolist())) >= 9
    full = cosine_distances(corpus[ids], query)
    assert [h.distance for h in result.hits] == pytest.approx(full.tolist(), abs=1e-5)
    assert [h.distance for h in result.hits] == sorted(h.distance for h in result.hits)
    # At the defaults (binary: k x 10 candidates) the index serves it and the source still comes first.
    # (A third of this table as candidates, as above, the planner rightly reads by a scan.)
    assert search(vector=query, k=10, probes=probes).hits[0].document.external_id == "d42"
    knobs, (statement,), _ = sent[-1]
    assert statement.sql.startswith("SELECT * FROM (")
    plan = explain(knobs, statement, query)
    assert name in plan, plan


@pytest.mark.parametrize("kind", ["half", "binary"])
def test_filters_hybrid_and_mmr_on_a_quantized_index(corpus, kind, settings, sent):
    name = use_kind(kind)
    settings.VECTORSTORE = {"EXACT_SEARCH_ROWS": 1000}  # half the corpus matches: the index branch
    query = noisy(corpus[42], seed=2)
    result = search(vector=query, k=10, filters={"parity": "even"})
    assert not result.exact and len(result.hits) == 10
    assert result.hits[0].document.external_id == "d42"
    assert all(h.document.metadata["parity"] == "even" for h in result.hits)
    distances = [h.distance for h in result.hits]
    assert distances == sorted(distances)
    ids = [int(h.document.external_id[1:]) for h in result.hits]
    assert distances == pytest.approx(cosine_distances(corpus[ids], query).tolist(), abs=1e-5)
    knobs, (_probe, _few, broad), _ = sent[-1]
    assert name in explain(knobs, broad, query)
    # A rare filter is answered exactly over its matches, as on a full-precision index.
    rare = search(vector=query, k=5, filters={"category": "rare"})
    assert rare.exact and {h.document.category for h in rare.hits} == {"rare"} and len(rare.hits) == 5
    hybrid = search("document 42", vector=query, mode="hybrid", k=5)
    assert hybrid.hits[0].document.external_id == "d42"
    diverse = search(vector=query, k=5, mmr={"lambda_mult": 0.5, "fetch_k": 20})
    assert len(diverse.hits) == 5 and diverse.hits[0].document.external_id == "d42"


def test_a_full_precision_index_is_searched_as_before(corpus, sent):
    result = search(vector=unit_vectors(1, 384, seed=9)[0], k=10)
    assert result.details == {}
    (_knobs, (statement,), _) = sent[-1]
    assert not statement.sql.startswith("SELECT * FROM (")


def test_rerank_is_checked():
    from vectorstore.search import SearchError

    for bad in (0, 101, 2.5, True):
        with pytest.raises(SearchError, match="rerank"):
            search(vector=[0.1] * 384, rerank=bad)


def test_tune_search_tunes_a_binary_indexs_rerank(corpus):
    """On a binary index the recall to tune is the re-rank's: tune stores a factor and searches use it."""
    from vectorstore.models import SearchTuning
    from vectorstore.tuning import tune

    use_kind("binary")
    report = tune(target_recall=0.9, queries=20)
    assert report.setting == "rerank" and report.index == "doc_binary"
    stored = SearchTuning.objects.get(index_name="doc_binary")
    assert stored.rerank == report.value and stored.ef_search is None
    result = search(vector=noisy(corpus[3], seed=4), k=10)
    assert result.details == {"rerank": report.value, "quantization": "binary"}


def test_rerank_through_the_api(corpus, client):
    """POST /api/search takes rerank; out of range it is a 422 naming it."""
    use_kind("binary")
    body = {"vector": corpus[42].tolist(), "k": 5, "rerank": 20}
    response = client.post("/api/search", body, content_type="application/json")
    assert response.status_code == 200
    assert response.json()["results"][0]["external_id"] == "d42"
    body["rerank"] = 0
    bad = client.post("/api/search", body, content_type="application/json")
    assert bad.status_code == 422 and "rerank" in bad.content.decode()
