"""tune_search against the real index: the queries it measures on (the query log, pseudo-queries from the
documents' text; noise only where benchmarks compare), the estimate and its bound, the rule below
pgvector's default, the stored setting used by every search that sets none, the re-tune of loads and
of --if-stale, and what a load stores where nothing can be measured."""

import json
from datetime import timedelta

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection
from django.utils import timezone

from tests.helpers import unit_vectors
from tests.testapp.models import HostDocument
from vectorstore import search, tuning
from vectorstore.models import Document, QueryLog, SearchTuning
from vectorstore.search import query_log
from vectorstore.tuning import queries as tuning_queries
from vectorstore.tuning import status as tuning_status

pytestmark = pytest.mark.django_db


def _load(vectors, texts=None, model="vectorstore.Document"):
    import pyarrow as pa

    from vectorstore.loading import ingest

    # COPY, then the index built once (ANALYZE after): a row-by-row insert into the HNSW index took 16 s.
    table = pa.table(
        {
            "text": texts or [f"passage {i}" for i in range(len(vectors))],
            "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        }
    )
    ingest.load(table, progress=False, tune=False, model=model)


@pytest.fixture
def random_corpus():
    """4,000 random unit vectors: the hard case for HNSW, where ef_search 40 falls short of 0.95."""
    vectors = unit_vectors(4000, 384, seed=41)
    _load(vectors)
    return vectors


@pytest.fixture(autouse=True)
def _fresh_query_log():
    query_log.forget()
    yield
    query_log.forget()


def _emit(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def _noise(n: int, rows: int) -> tuning.Prepared:
    """Noise queries (benchmarks' comparison model; never chosen by the tuner itself) and their truth."""
    return tuning.prepare(Document, "default", "cosine", 10, n, rows, query_model="noise")


def test_the_walk_stores_the_smallest_setting_whose_bound_reaches_the_target(random_corpus, capsys):
    """On noise queries: the stored ef_search is the first whose estimate's lower bound reached the target,
    the step below it (measured) did not, and nothing below pgvector's default was tried."""
    report = tuning.tune(prepared=_noise(60, 4000))
    assert report.index == "vectorstore_document_hnsw" and report.setting == "hnsw.ef_search"
    assert report.query_model == "noise" and report.queries == 60 and report.reached
    tried = {value: (recall, low) for value, recall, low in report.tried}
    assert min(tried) >= 40  # noise queries never lower a setting
    assert report.value > 40 and tried[40][1] < 0.95  # random vectors: the default falls short
    assert tried[report.value][1] >= 0.95 and report.recall_low == tried[report.value][1]
    below = max(v for v in tuning.EF_SEARCH_STEPS if v < report.value)
    assert tried[below][1] < 0.95 and report.recall >= report.recall_low
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert (stored.ef_search, stored.rows, stored.k, stored.query_model) == (report.value, 4000, 10, "noise")
    assert stored.recall_low == pytest.approx(report.recall_low)
    call_command("tune_search", "--query-model", "pseudo", "--queries", "60", "--json")  # by command
    summary = _emit(capsys)
    assert (summary["query_model"], summary["queries"]) == ("pseudo", 60)
    assert SearchTuning.objects.get().query_model == "pseudo"
    with pytest.raises(CommandError, match="invalid choice: 'noise'"):
        call_command("tune_search", "--query-model", "noise")


def test_a_setting_below_the_default_is_stored_only_on_evidence(settings):
    """Queries the index answers at once (each next to a tight cluster of ten documents): logged ones
    (real queries) take the setting below pgvector's default, each step down checked against the target
    plus the margin; noise queries never lower it."""
    centers = unit_vectors(300, 384, seed=21)
    rng = np.random.default_rng(22)
    members = centers.repeat(10, axis=0) + 0.03 * rng.standard_normal((3000, 384)).astype(np.float32)
    _load(members / np.linalg.norm(members, axis=1, keepdims=True))
    settings.VECTORSTORE = {"TUNE_MIN_LOGGED": 30}
    now = timezone.now()
    QueryLog.objects.bulk_create(
        QueryLog(db_table="vectorstore_document", slot=i, vector=v, created_at=now)
        for i, v in enumerate(centers[:40])
    )
    report = tuning.tune(queries=40)
    assert report.query_model == "log" and report.queries == 40
    assert report.value < 40 and report.recall_low >= 0.95 + tuning.BELOW_DEFAULT_MARGIN
    margin = 0.95 + tuning.BELOW_DEFAULT_MARGIN
    assert all(low >= margin for value, _, low in report.tried if report.value <= value < 40)
    noisy = tuning.tune(prepared=_noise(40, 3000))
    assert noisy.value >= 40 and min(v for v, _, _ in noisy.tried) >= 40


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
    """An empty table, a bad target, or the log asked for while it is too small: a CommandError naming the
    flag, and nothing stored."""
    with pytest.raises(CommandError, match="too few"):
        call_command("tune_search")
    with pytest.raises(CommandError, match=r"--target-recall 1\.5"):
        call_command("tune_search", "--target-recall", "1.5")
    _load(unit_vectors(50, 384, seed=3))
    with pytest.raises(CommandError, match=r"--query-model log: .*fewer than 100 logged"):
        call_command("tune_search", "--query-model", "log")
    assert not SearchTuning.objects.exists()


def test_pseudo_queries_are_spans_of_the_documents_embedded_with_the_tables_model(tmp_path, monkeypatch):
    """A host model with its own 8-dimension embedding model: the pseudo-queries are runs of words of its
    stored texts, embedded with that model (its vectors, not the default's)."""
    from tests.helpers import small_model
    from vectorstore.embedding import Embedder

    path = small_model(tmp_path / "eight", 8)
    monkeypatch.setattr(HostDocument, "embedding_model", path, raising=False)
    texts = [
        "Railroads across the continent carried settlers and grain to the markets of the east.",
        "The tariff on imported iron protected the mills of Pennsylvania. Congress debated it for weeks.",
        "A canal between two oceans shortened every voyage from New York to San Francisco.",
    ] * 10
    _load(unit_vectors(len(texts), 8, seed=1), texts, model="testapp.HostDocument")
    queries = tuning_queries.pseudo_queries(HostDocument, "default", 40, len(texts), seed=3)
    assert queries.model == "pseudo" and queries.vectors.shape == (40, 8)
    words = [" ".join(tuning_queries.WORD.findall(t)) for t in texts]
    for text in queries.texts:
        n = len(text.split())
        assert 2 <= n <= tuning_queries.SENTENCE_WORDS and any(text in w for w in words), text
    assert any(len(t.split()) <= tuning_queries.SPAN_WORDS[1] for t in queries.texts)
    expected = Embedder.for_model(HostDocument).encode(queries.texts)
    assert np.allclose(queries.vectors, expected, atol=1e-5)


def test_the_query_log_samples_within_its_bounds_and_stores_no_text(settings, monkeypatch):
    """Searches' query vectors are sampled into at most QUERY_LOG_SIZE slots a table, written in batches
    (a full one, an old one, or before a read); no text is kept; rows older than QUERY_LOG_DAYS are not
    read and are pruned; similar() is not logged; size 0 is off."""
    vectors = unit_vectors(60, 384, seed=9)
    _load(vectors[:20])
    settings.VECTORSTORE = {"QUERY_LOG_SIZE": 5}
    for v in vectors[20:25]:
        search.search(vector=v, k=3)
    assert QueryLog.objects.count() == 5  # a full batch (here the whole reservoir) is written by itself
    for v in vectors[25:]:
        search.search(vector=v, k=3)
    query_log.flush()
    assert QueryLog.objects.count() == 5
    assert sorted(QueryLog.objects.values_list("slot", flat=True)) == [0, 1, 2, 3, 4]
    logged = np.stack([np.asarray(v) for v in QueryLog.objects.values_list("vector", flat=True)])
    gaps = np.abs(logged[:, None, :] - vectors[None, 20:, :]).max(axis=2).min(axis=1)
    assert (gaps < 1e-6).all()  # each one of the queries (none of the stored vectors)
    columns = {f.column for f in QueryLog._meta.concrete_fields}
    assert columns == {"id", "db_table", "slot", "vector", "created_at"}  # no text anywhere

    query_log.forget()
    settings.VECTORSTORE = {"QUERY_LOG_SIZE": 1000}
    QueryLog.objects.all().delete()
    result = search.search("a secret phrase nobody should keep", k=3)
    assert not QueryLog.objects.exists()  # kept in the process until a batch, an age or a read
    assert query_log.recent(Document).count() == 1
    (row,) = QueryLog.objects.all()
    assert np.allclose(row.vector, search.embed_query("a secret phrase nobody should keep"), atol=1e-6)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM vectorstore_querylog q WHERE row_to_json(q)::text LIKE '%secret%'"
        )
        assert cursor.fetchone()[0] == 0
    search.similar(Document.objects.get(pk=result.hits[0].values["id"]), k=2)
    query_log.flush()
    assert QueryLog.objects.count() == 1  # a stored document's vector is no query
    monkeypatch.setattr(query_log, "FLUSH_SECONDS", 0.0)
    search.search(vector=vectors[1], k=3)
    assert QueryLog.objects.count() == 2  # a sample that has waited long enough is written by itself
    QueryLog.objects.filter(slot=1).delete()

    QueryLog.objects.update(created_at=timezone.now() - timedelta(days=31))
    assert query_log.recent(Document).count() == 0
    assert query_log.prune(Document) == 1 and not QueryLog.objects.exists()

    settings.VECTORSTORE = {"QUERY_LOG_SIZE": 0}
    search.search(vector=vectors[0], k=3)
    query_log.flush()
    assert not QueryLog.objects.exists()


def test_tune_prefers_the_log_once_it_holds_enough(settings):
    """Below TUNE_MIN_LOGGED logged queries, tune measures on pseudo-queries; at it, on the log; it says
    which."""
    vectors = unit_vectors(1500, 384, seed=12)
    _load(vectors, [f"the {i % 7} passage about topic {i % 31}" for i in range(1500)])
    settings.VECTORSTORE = {"TUNE_MIN_LOGGED": 25}
    for v in unit_vectors(24, 384, seed=13):
        search.search(vector=v, k=5)
    first = tuning.tune(queries=30)
    assert first.query_model == "pseudo" and first.queries == 30
    for v in unit_vectors(6, 384, seed=14):
        search.search(vector=v, k=5)
    second = tuning.tune(queries=30)
    assert second.query_model == "log" and second.queries == 30
    assert SearchTuning.objects.get().query_model == "log"


def test_the_exact_kth_distance_agrees_with_an_exact_scan():
    """The truth (each query's exact 10th distance, from one pass over the table) is PostgreSQL's exact
    scan's, for each metric (queries not of unit length, so that l2 and inner product differ)."""
    from psycopg import sql

    vectors = unit_vectors(600, 384, seed=41) * np.linspace(0.5, 2.0, 600, dtype=np.float32)[:, None]
    Document.objects.bulk_create(Document(text=str(i), embedding=v) for i, v in enumerate(vectors))
    queries = unit_vectors(5, 384, seed=99) * 3
    for metric in ("cosine", "l2", "inner_product"):
        got = tuning_queries.kth_distances(
            "default", "vectorstore_document", "embedding", metric, queries, 10
        )
        for query, kth in zip(queries, got, strict=True):
            with connection.cursor() as cursor:
                cursor.execute("SET LOCAL enable_indexscan = off")
                cursor.execute(
                    sql.SQL("SELECT embedding {} %s::vector FROM vectorstore_document ORDER BY 1 LIMIT 10")
                    .format(sql.SQL(tuning.OPERATORS[metric]))
                    .as_string(cursor.connection),
                    [str(query.tolist())],
                )
                assert kth == pytest.approx(cursor.fetchall()[-1][0], rel=1e-5, abs=1e-5), metric


def test_the_stored_estimate_is_shown_with_its_query_model(random_corpus, capsys):
    """vector_index list and /api/health show the stored recall as an estimate beside its query model."""
    from ninja.testing import TestClient

    from vectorstore.api import router

    tuning.tune(queries=30, query_model="pseudo")
    call_command("vector_index", "list", "--json")
    out = capsys.readouterr().out
    assert "tuned: hnsw.ef_search" in out and "30 pseudo queries" in out
    (index,) = json.loads(out.strip().splitlines()[-1])["indexes"]
    assert index["tuning"]["query_model"] == "pseudo" and index["tuning"]["queries"] == 30
    health = TestClient(router).get("/health").json()
    (estimate,) = health["tuning"]
    assert estimate["query_model"] == "pseudo" and estimate["recall_estimate"] >= estimate["recall_low"]
    tuning.store_unmeasured(Document, "the model stack is not installed")
    call_command("vector_index", "list", "--json")
    out = capsys.readouterr().out
    assert f"hnsw.ef_search {tuning.unmeasured_ef_search(4000)}: no recall measured on this table" in out
    (estimate,) = TestClient(router).get("/health").json()["tuning"]
    assert estimate["query_model"] == "none" and estimate["recall_estimate"] is None


def test_if_stale_tunes_only_when_the_table_or_its_queries_changed(random_corpus, capsys):
    """tune_search --if-stale: never tuned, tunes; a setting stored unmeasured (a load without the model
    stack), tunes (pseudo-queries can measure it); then current, does nothing; after 30% more rows, tunes."""
    assert tuning_status.staleness(Document) == "never tuned"
    tuning.store_unmeasured(Document, "the model stack is not installed")
    assert "no recall measured on this table" in tuning_status.staleness(Document)
    call_command("tune_search", "--if-stale", "--queries", "30", "--json")
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["query_model"] == "pseudo"
    assert "no recall measured" in captured.err
    call_command("tune_search", "--if-stale", "--json")
    assert _emit(capsys) == {"tuned": False}
    assert tuning_status.staleness(Document) is None
    Document.objects.bulk_create(
        Document(text=f"more {i}", embedding=v) for i, v in enumerate(unit_vectors(1300, 384, seed=2))
    )
    assert "5,300 rows" in tuning_status.staleness(Document)
    call_command("tune_search", "--if-stale", "--queries", "30", "--json")
    captured = capsys.readouterr()
    assert json.loads(captured.out.strip().splitlines()[-1])["rows"] == 5300
    assert "5,300 rows, 4,000 when tuned" in captured.err


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


@pytest.mark.django_db(transaction=True)  # REINDEX CONCURRENTLY runs outside any transaction
def test_loads_and_rebuilds_tune_again_when_they_change_the_table_substantially(tmp_path, capsys):
    """A first bulk load tunes on its own (its queries and truth made during its index build); a small one
    (under 20% of the tuned rows) does not, nor one with --no-tune; a rebuilt index is tuned again."""
    from vectorstore.tuning import first_load as load_tuning

    made = []
    real = load_tuning.LoadTuning._prepare

    def spy(self):
        made.append(real(self))
        return made[-1]

    vectors = unit_vectors(1600, 384, seed=5)
    load_tuning.LoadTuning._prepare = spy
    try:
        call_command("bulk_copy", _parquet(tmp_path / "a.parquet", vectors[:1200]), "--tune", "now", "--json")
    finally:
        load_tuning.LoadTuning._prepare = real
    first = _emit(capsys)["tuned"]
    assert first and first["setting"] == "hnsw.ef_search" and first["rows"] == 1200 and first["reached"]
    (prepared,) = made  # the load's own preparation, from the input: its truth is the table's
    assert first["query_model"] == prepared.queries.model and first["queries"] == len(
        prepared.queries.vectors
    )
    truth = tuning_queries.kth_distances(
        "default", "vectorstore_document", "embedding", "cosine", prepared.queries.vectors, 10
    )
    assert np.allclose(prepared.kth, truth, rtol=1e-5, atol=1e-6)
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert (stored.ef_search, stored.rows, stored.target_recall) == (first["value"], 1200, 0.95)
    assert first["recall_low"] >= 0.95 and stored.query_model == first["query_model"]

    call_command("bulk_copy", _parquet(tmp_path / "b.parquet", vectors[1200:1400], 1200), "--json")
    assert _emit(capsys)["tuned"] is None  # 200 rows: under 20% of the 1,200 tuned
    call_command("bulk_copy", _parquet(tmp_path / "c.parquet", vectors[1400:], 1400), "--no-tune", "--json")
    assert _emit(capsys)["tuned"] is None
    assert SearchTuning.objects.get().rows == 1200

    call_command("reindex", "--json")
    rebuilt = _emit(capsys)["tuned"]
    assert rebuilt and rebuilt["rows"] == 1600
    assert SearchTuning.objects.get().rows == 1600


@pytest.mark.parametrize("kept", [True, False])
def test_a_first_loads_truth_is_the_written_vectors_kept_or_read_again(monkeypatch, kept):
    """The load's tuning measures against the vectors it wrote: kept as it writes them, or (past
    KEEP_BYTES) read from the input again; either way the table's own exact answers."""
    from vectorstore.loading import ingest
    from vectorstore.tuning import first_load as load_tuning

    if not kept:
        monkeypatch.setattr(load_tuning, "KEEP_BYTES", 1)
    made = []
    real = load_tuning.LoadTuning._prepare
    monkeypatch.setattr(load_tuning.LoadTuning, "_prepare", lambda self: made.append(real(self)) or made[-1])
    import pyarrow as pa

    vectors = unit_vectors(1500, 384, seed=31)
    table = pa.table(
        {
            "text": [f"row {i}" for i in range(1500)],
            "embedding": pa.array(list(vectors), pa.list_(pa.float32())),
        }
    )
    report = ingest.load(table, progress=False, tune="now")
    (prepared,) = made
    assert report.tuned["query_model"] == prepared.queries.model
    truth = tuning_queries.kth_distances(
        "default", "vectorstore_document", "embedding", "cosine", prepared.queries.vectors, 10
    )
    assert np.allclose(prepared.kth, truth, rtol=1e-5, atol=1e-6)


def _notebook_file(tmp_path):
    """The seed's path: texts embedded beforehand (embed_parquet), the file with vectors loaded."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from vectorstore import embedding

    texts = [
        f"{a} {b} report number {i}"
        for i, (a, b) in enumerate(
            (a, b)
            for a in ("tariff", "railroad", "navy", "treasury", "harbor", "canal", "mint", "census")
            for b in ("increase", "debate", "treaty", "budget", "survey", "reform", "loan", "court")
        )
    ] * 20
    vectors = embedding.Embedder().encode(texts[:64])
    vectors = np.concatenate([vectors] * 20) + 0.01 * unit_vectors(1280, 384, seed=8)
    path = tmp_path / "embedded.parquet"
    pq.write_table(
        pa.table({"text": texts, "embedding": pa.array(list(vectors), pa.list_(pa.float32(), 384))}), path
    )
    return path


@pytest.mark.django_db(transaction=True)
def test_the_notebooks_first_load_leaves_measuring_to_the_site_and_says_so(tmp_path, capsys, settings):
    """The seed's path in a process that never embedded anything: the load stores the setting for an
    unmeasured table of its size and says that no recall was measured (loading the model would cost the
    load a third of its speed); the site, once it serves searches, measures it on pseudo-queries by
    itself; --tune now measures during the load instead, and names its queries."""
    from vectorstore import embedding
    from vectorstore.tuning import autotune

    path = _notebook_file(tmp_path)
    embedding._models.clear()  # as in a fresh `manage.py bulk_copy`: no model loaded yet
    call_command("bulk_copy", str(path))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert "search tuned: hnsw.ef_search 100, no recall measured (to be measured on pseudo-queries" in line
    assert not embedding._models  # the load never loaded the model
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert (stored.query_model, stored.recall) == ("none", None)

    settings.VECTORSTORE = {**settings.VECTORSTORE, "AUTO_TUNE": True}
    autotune.forget()
    query_log.forget()
    search.search("the navy budget debate", k=10)  # a site's first search, then its log's flush
    query_log.flush()
    assert autotune.wait(300)
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert stored.query_model == "pseudo" and stored.queries == 200 and stored.recall_low >= 0.95

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE vectorstore_document, vectorstore_searchtuning CASCADE")
    embedding._models.clear()
    call_command("bulk_copy", str(path), "--tune", "now", "--json")
    tuned = _emit(capsys)["tuned"]
    assert tuned["query_model"] == "pseudo" and tuned["queries"] == 200 and tuned["recall_low"] >= 0.95
    assert tuned["prepare_seconds"] >= tuned["model_seconds"] > 0


@pytest.mark.django_db(transaction=True)
def test_without_the_model_stack_a_load_stores_the_measured_default_and_no_estimate(
    tmp_path, capsys, monkeypatch
):
    """Where no query can be made like a real one (no log, no model stack), a first load stores
    the unmeasured setting for its size, prints no recall and says why; tune_search refuses to measure."""
    monkeypatch.setattr(tuning_queries, "model_stack_installed", lambda: False)
    vectors = unit_vectors(1200, 384, seed=9)
    call_command("bulk_copy", _parquet(tmp_path / "a.parquet", vectors))
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"search tuned: hnsw.ef_search {tuning.unmeasured_ef_search(1200)}, no recall measured" in line
    assert "the model stack is not installed" in line and "~" not in line.split("search tuned")[1]
    stored = SearchTuning.objects.get(index_name="vectorstore_document_hnsw")
    assert (stored.ef_search, stored.recall, stored.query_model) == (100, None, "none")
    sizes = (1200, 250_000, 1_999_999, 5_000_000)
    assert [tuning.unmeasured_ef_search(n) for n in sizes] == [100, 200, 200, 400]
    with pytest.raises(CommandError, match="no queries to measure recall with"):
        call_command("tune_search")


@pytest.mark.django_db(transaction=True)
def test_searches_retune_their_table_on_the_log_by_themselves(random_corpus, settings):
    """Once the query log holds TUNE_MIN_LOGGED queries, the process serving searches re-tunes the table
    on it in a thread after a flush (no cron, the search never waits); another process holding the lock
    makes it leave the work; a current tuning is left alone."""
    import psycopg

    from tests.helpers import database_url
    from vectorstore.tuning import autotune

    settings.VECTORSTORE = {**settings.VECTORSTORE, "AUTO_TUNE": True, "TUNE_MIN_LOGGED": 30}
    tuning.tune(queries=30, query_model="pseudo")
    autotune.forget()
    query_log.forget()
    assert tuning_status.serving_staleness(Document) is None  # measured, nothing logged yet
    rng = np.random.default_rng(3)
    for vector in unit_vectors(29, 384, seed=4):
        search.search(vector=vector + 0.1 * rng.standard_normal(384).astype(np.float32), k=10)
    query_log.flush()
    assert autotune.wait(120) and SearchTuning.objects.get().query_model == "pseudo"  # 29 < 30

    autotune.forget()
    with psycopg.connect(database_url(connection.settings_dict), autocommit=True) as other:
        other.execute("SELECT pg_advisory_lock(%s)", [autotune.LOCK_KEY])  # another process tuning
        search.search(vector=unit_vectors(1, 384, seed=5)[0], k=10)
        query_log.flush()
        assert autotune.wait(120)
        assert SearchTuning.objects.get().query_model == "pseudo"  # left to the lock's holder
    assert tuning_status.serving_staleness(Document) == "30 logged queries now, tuned on pseudo queries"

    autotune.forget()
    search.search(vector=unit_vectors(1, 384, seed=6)[0], k=10)
    query_log.flush()
    assert autotune.wait(120)
    stored = SearchTuning.objects.get()
    assert stored.query_model == "log" and stored.queries == 31 and stored.recall_low is not None
    assert tuning_status.serving_staleness(Document) is None
