"""search.py against the real database: index use, filters, iterative scans, hybrid ranking, ORM helpers."""

import numpy as np
import pytest
from django.db import connection

from tests.helpers import sotu_passages, unit_vectors, unprocessable
from tests.testapp.models import HostDocument
from vectorstore.loading import ingest
from vectorstore.models import Document
from vectorstore.search import SearchError, build_filter, embed_query, search, vector_queryset

pytestmark = pytest.mark.django_db


def make_corpus(n: int):
    """n documents with random unit vectors; 1% in category 'rare' and with metadata rare: true. Written by
    binary COPY (the ORM's bulk_create took most of the set-up), the HNSW index built once after them."""
    from django.utils import timezone

    from vectorstore.loading import pgcopy

    vectors = unit_vectors(n, 384, seed=7)
    conn = pgcopy.django_connection()
    with connection.cursor() as cursor:  # built once after the rows, not row by row (seconds, not tens)
        cursor.execute("SELECT indexdef FROM pg_indexes WHERE indexname = 'vectorstore_document_hnsw'")
        (hnsw,) = cursor.fetchone()
        cursor.execute("DROP INDEX vectorstore_document_hnsw")
    columns = ("external_id", "text", "embedding", "category", "metadata", "created_at")
    target = pgcopy.Target.introspect(conn, Document._meta.db_table, columns)
    now = timezone.now()
    rows = (
        (
            f"d{i}",
            f"document {i}",
            encoded,
            "rare" if i % 100 == 0 else "common",
            pgcopy.jsonb(
                {
                    "n": i,
                    "parity": "even" if i % 2 == 0 else "odd",
                    "rare": i % 100 == 0,
                    "label": f"Doc_{i}",
                    "0": "zero" if i % 3 == 0 else 0,
                    "tags": ["even" if i % 2 == 0 else "odd", *(["ten"] if i % 10 == 0 else [])],
                    **({"flag": True} if i % 10 == 0 else {}),
                }
            ),
            now,
        )
        for i, encoded in enumerate(pgcopy.encode_vectors(vectors))
    )
    pgcopy.copy_rows(conn, target, rows)
    with connection.cursor() as cursor:
        cursor.execute(hnsw)
        cursor.execute("ANALYZE vectorstore_document")
    return vectors


@pytest.fixture
def corpus():
    return make_corpus(3000)


@pytest.fixture
def small_corpus():
    return make_corpus(300)


def test_vector_search_uses_the_hnsw_index(corpus):
    """The service's query is ORDER BY distance LIMIT k, and EXPLAIN shows the HNSW index serving it."""
    plan = vector_queryset(Document.objects.all(), corpus[0], "cosine", 10).explain()
    assert "Index Scan using vectorstore_document_hnsw" in plan, plan
    result = search(vector=corpus[0], k=10)
    assert [h.rank for h in result.hits] == list(range(1, 11))
    assert result.hits[0].document.external_id == "d0" and result.hits[0].distance == pytest.approx(
        0, abs=1e-6
    )
    distances = [h.distance for h in result.hits]
    assert distances == sorted(distances)


def test_selective_filter_returns_k_rows_where_a_plain_hnsw_scan_does_not(corpus, settings):
    """1% filter on the vector index's path: plain HNSW (ef_search 40) comes back short; iterative scans
    return k, nearly exact; with those off, the short answer is caught and answered exactly."""
    settings.VECTORSTORE = {"EXACT_SEARCH_ROWS": 0}  # always the vector index's path
    query = unit_vectors(1, 384, seed=99)[0]
    rare = Document.objects.filter(build_filter({"rare": True}))
    exact = sorted(rare, key=lambda d: 1 - float(np.dot(np.asarray(d.embedding), query)))[:10]
    with connection.cursor() as cursor:
        # Keep the planner on the vector index (3,000 rows are cheap to scan whole, and the GIN index
        # on metadata would find the 30 rare rows).
        cursor.execute("SET LOCAL enable_seqscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        cursor.execute("SET LOCAL hnsw.iterative_scan = off")
        cursor.execute("SET LOCAL hnsw.ef_search = 40")
    plain_query = vector_queryset(rare, query, "cosine", 10)
    assert "Index Scan using vectorstore_document_hnsw" in plain_query.explain()
    assert len(list(plain_query)) < 10

    iterative = search(vector=query, k=10, filters={"rare": True}, iterative_scan="relaxed_order")
    assert len(iterative.hits) == 10 and not iterative.exact  # the index scan itself found them
    overlap = {h.document.pk for h in iterative.hits} & {d.pk for d in exact}
    assert len(overlap) >= 9

    fallback = search(vector=query, k=10, filters={"rare": True}, iterative_scan="off")
    assert fallback.exact and [h.document.pk for h in fallback.hits] == [d.pk for d in exact]


@pytest.mark.parametrize(
    ("filters", "index"),
    [
        ({"rare": True}, "vectorstore_document_meta"),  # metadata equality: containment, the GIN index
        ({"n": {"$in": [5, 7, 2900]}}, "vectorstore_document_meta"),
        ({"category": "rare"}, "vectorstore_document_cat"),
        ({"zzz": 1}, "vectorstore_document_meta"),  # a key no document has
    ],
)
def test_a_selective_filter_is_searched_exactly_through_its_own_index(corpus, filters, index):
    """A filter matching few rows is answered exactly over its matches, found by the filter's index (no
    scan of the table, no walk of the graph): the exact answer, in order, and `exact` says so."""
    import psycopg

    from vectorstore.loading import pgcopy
    from vectorstore.search.plan import planned

    query = unit_vectors(1, 384, seed=7)[0]
    matching = Document.objects.filter(build_filter(filters))
    truth = sorted(matching, key=lambda d: 1 - float(np.dot(np.asarray(d.embedding), query)))[:10]
    result = search(vector=query, k=10, filters=filters)
    assert result.exact and [h.values["id"] for h in result.hits] == [d.pk for d in truth]

    _, few, broad = planned(matching, ["id", "external_id"], "cosine", 10, 3000)

    def explain(statement) -> str:
        with psycopg.Cursor(pgcopy.django_connection()) as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")  # 3,000 rows: keep the planner honest
            cursor.execute("EXPLAIN " + statement.sql, statement.bind(pgcopy.binary_vector(query)))
            return "\n".join(row[0] for row in cursor.fetchall())

    plan = explain(few)
    assert index in plan and "Seq Scan" not in plan and "hnsw" not in plan, plan
    assert "One-Time Filter" in plan, plan  # gated by the count: when too many match, no row is read
    assert "One-Time Filter" in explain(broad)  # the vector index's branch, gated the other way


def test_a_broad_filter_takes_the_vector_index(corpus, settings, monkeypatch):
    """A filter matching more rows than EXACT_SEARCH_ROWS goes through the HNSW index's iterative scan, in
    the same round trip as the count; the exact branch, gated off, returned nothing."""
    from vectorstore.search import statements

    settings.VECTORSTORE = {"EXACT_SEARCH_ROWS": 1000}  # half the corpus matches: 1,500 rows
    trips = []
    real_run = statements.run

    def run(using, knobs, sent, vector):
        rows = real_run(using, knobs, sent, vector)
        trips.append(rows)
        return rows

    monkeypatch.setattr(statements, "run", run)
    result = search(vector=unit_vectors(1, 384, seed=8)[0], k=10, filters={"parity": "even"})
    assert len(result.hits) == 10 and not result.exact
    assert all(h.document.metadata["parity"] == "even" for h in result.hits)
    ((probe, few, nearest),) = trips  # one round trip: the count, the exact branch, the index branch
    assert probe == [("off",)] and few == [] and len(nearest) == 10


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"category": "rare"}, lambda i: i % 100 == 0),
        ({"category": {"$ne": "rare"}}, lambda i: i % 100 != 0),
        ({"parity": "even"}, lambda i: i % 2 == 0),
        ({"parity": {"$eq": "odd"}}, lambda i: i % 2 == 1),
        ({"n": {"$lt": 5}}, lambda i: i < 5),
        ({"n": {"$lte": 5}}, lambda i: i <= 5),
        ({"n": {"$gt": 294}}, lambda i: i > 294),
        ({"n": {"$gte": 294}}, lambda i: i >= 294),
        ({"n": {"$in": [1, 2, 3]}}, lambda i: i in (1, 2, 3)),
        ({"n": {"$nin": [1, 2, 3]}}, lambda i: i not in (1, 2, 3)),
        ({"flag": {"$exists": True}}, lambda i: i % 10 == 0),
        ({"flag": {"$exists": False}}, lambda i: i % 10 != 0),
        ({"$and": [{"parity": "even"}, {"n": {"$lt": 10}}]}, lambda i: i % 2 == 0 and i < 10),
        (
            {"$or": [{"n": 7}, {"category": "rare", "n": {"$lt": 300}}]},
            lambda i: i == 7 or (i % 100 == 0 and i < 300),
        ),
        ({"external_id": {"$in": ["d5", "d6"]}}, lambda i: i in (5, 6)),
        ({"created_at": {"$gte": "2000-01-01T00:00:00Z"}}, lambda i: True),
        ({"n": {"$between": [10, 20]}}, lambda i: 10 <= i <= 20),
        ({"n": {"$between": [20, 10]}}, lambda i: False),
        ({"category": {"$between": ["a", "d"]}}, lambda i: i % 100 != 0),
        ({"label": {"$like": "Doc\\_1%"}}, lambda i: str(i).startswith("1")),
        ({"label": {"$like": "doc%"}}, lambda i: False),
        ({"label": {"$ilike": "doc\\_2_"}}, lambda i: 20 <= i <= 29),
        ({"label": {"$like": "Doc__"}}, lambda i: i < 10),
        ({"0": {"$like": "z%"}}, lambda i: i % 3 == 0),  # a key int() accepts is still a key
        ({"category": {"$like": "r%"}}, lambda i: i % 100 == 0),
        ({"external_id": {"$ilike": "D1_"}}, lambda i: 10 <= i <= 19),
        ({"tags": {"$contains": "ten"}}, lambda i: i % 10 == 0),
        ({"tags": {"$contains": "odd"}, "n": {"$lt": 6}}, lambda i: i in (1, 3, 5)),
        ({"parity": {"$contains": "even"}}, lambda i: False),  # a string is not a list
        ({"$not": {"parity": "even"}}, lambda i: i % 2 == 1),
        ({"$not": {"flag": True}}, lambda i: i % 10 != 0),  # documents without the key included
        ({"$not": {"n": {"$lt": 5}}}, lambda i: i >= 5),
        ({"$not": {"nothing": {"$like": "%"}}}, lambda i: True),
        ({"$not": {"nothing": {"$gt": 1}}}, lambda i: True),
        ({"$not": {"n": {"$between": [0, 100]}}}, lambda i: i > 100),
        ({"$not": [{"parity": "even"}, {"n": {"$lt": 10}}]}, lambda i: i % 2 == 1 and i >= 10),
        ({"$not": {"$or": [{"category": "rare"}, {"n": {"$gte": 5}}]}}, lambda i: i < 5 and i > 0),
        (
            {"$and": [{"tags": {"$contains": "even"}}, {"$not": {"label": {"$like": "Doc\\_1%"}}}]},
            lambda i: i % 2 == 0 and not str(i).startswith("1"),
        ),
        ({"$not": {"$not": {"external_id": "d3"}}}, lambda i: i == 3),
    ],
)
def test_each_filter_operator(small_corpus, filters, expected):
    got = sorted(Document.objects.filter(build_filter(filters)).values_list("metadata__n", flat=True))
    assert got == [i for i in range(300) if expected(i)]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": 1001}, "k"),
        ({"vector": [0.1] * 3}, "vector"),
        ({"vector": [float("nan")] * 384}, "vector"),
        ({"query": ""}, "query"),
        ({"query": "x" * 2001}, "query"),
        ({"filters": {"n": {"$regex": "x"}}}, "filters.n.$regex"),
        ({"filters": {"$not": {}}}, "filters.$not"),
        ({"filters": {"$not": [{"n": 1}, {}]}}, "filters.$not[1]"),
        ({"filters": {"$not": "n"}}, "filters.$not"),
        ({"filters": {"n": {"$between": [1]}}}, "filters.n.$between"),
        ({"filters": {"n": {"$between": [1, "z"]}}}, "filters.n.$between"),
        ({"filters": {"n": {"$between": [None, 3]}}}, "filters.n.$between"),
        ({"filters": {"n": {"$between": 3}}}, "filters.n.$between"),
        ({"filters": {"label": {"$like": 5}}}, "filters.label.$like"),
        ({"filters": {"label": {"$ilike": "ab\\"}}}, "filters.label.$ilike"),
        ({"filters": {"id": {"$like": "1%"}}}, "filters.id"),
        ({"filters": {"category": {"$contains": "x"}}}, "filters.category"),
        ({"filters": {"tags": {"$contains": ["x"]}}}, "filters.tags.$contains"),
        ({"mmr": {"lambda_mult": 1.5}}, "mmr.lambda_mult"),
        ({"mmr": {"fetch_k": 5}}, "mmr.fetch_k"),  # fewer candidates than k (10)
        ({"mmr": {"diversity": 1}}, "mmr.diversity"),
        ({"mmr": 0.5}, "mmr"),
        ({"mmr": {}, "query": "x", "mode": "text"}, "mmr"),
        ({"hybrid": {"text_weight": -1}, "query": "x", "mode": "hybrid"}, "hybrid.text_weight"),
        ({"hybrid": {"partial_weight": "a"}, "query": "x", "mode": "hybrid"}, "hybrid.partial_weight"),
        ({"hybrid": {"rrf_k": 1.5}, "query": "x", "mode": "hybrid"}, "hybrid.rrf_k"),
        ({"hybrid": {"text_k": 3}, "query": "x", "mode": "hybrid"}, "hybrid.text_k"),
        ({"hybrid": {"alpha": 1}, "query": "x", "mode": "hybrid"}, "hybrid.alpha"),
        ({"hybrid": {}, "query": "x"}, "hybrid"),  # mode vector
        ({"filters": {"n": {"$in": "abc"}}}, "filters.n.$in"),
        ({"filters": {"created_at": {"$gte": "yesterday"}}}, "filters.created_at.$gte"),
        ({"filters": ["category"]}, "filters"),
        ({"mode": "fuzzy", "query": "x"}, "mode"),
        ({"metric": "manhattan", "vector": [0.0] * 384}, "metric"),
    ],
)
def test_bad_requests_name_the_field(kwargs, field):
    kwargs.setdefault("vector", None if "query" in kwargs else [0.1] * 384)
    query = kwargs.pop("query", None)
    with pytest.raises(SearchError) as info:
        search(query, **kwargs)
    assert info.value.field == field


def test_hostile_metadata_keys_are_only_keys(small_corpus):
    """Keys carrying SQL or Django lookup syntax match nothing and change nothing."""
    for key in ("n'); DROP TABLE vectorstore_document; --", "n__gt", "metadata__n", "ключ", "n' || 'x"):
        assert search(vector=small_corpus[1], k=5, filters={key: 1}).hits == []
    with pytest.raises(SearchError, match="NUL"):
        search(vector=small_corpus[1], k=5, filters={"n\x00": 1})
    assert Document.objects.count() == 300


@pytest.fixture
def fixture_docs(tmp_path):
    """200 real passages, embedded with the bundled model and loaded."""
    table = sotu_passages(slice(0, 200))
    ingest.load(table, progress=False)
    return table


def test_semantic_search_on_real_text(fixture_docs):
    """A paraphrase finds its passage; the query vector comes from the cache the second time."""
    from vectorstore.search import query_cache

    target = Document.objects.filter(text__icontains="Indian").first()
    assert target is not None
    result = search(target.text[:200], k=5)
    assert result.hits[0].document.pk == target.pk
    before = query_cache.hits
    search(target.text[:200], k=5)
    assert query_cache.hits == before + 1


def test_hybrid_ranks_an_exact_keyword_match_first(fixture_docs):
    """A rare word found by full text alone is fused to the top by reciprocal rank fusion."""
    text = "Zyzzogeton appropriations for the lighthouse service were approved."
    # A vector unrelated to its text: only the full-text side can find this document.
    doc = Document.objects.create(text=text, embedding=unit_vectors(1, 384, seed=5)[0], external_id="keyword")
    hybrid = search("zyzzogeton", k=5, mode="hybrid")
    assert hybrid.hits[0].document.pk == doc.pk
    text = search("zyzzogeton", k=5, mode="text")
    assert [h.document.pk for h in text.hits] == [doc.pk]
    vector = search("zyzzogeton", k=5)
    assert doc.pk not in [h.document.pk for h in vector.hits[:1]]


def test_orm_helpers_on_a_host_model():
    """nearest() and similar_to() work on a host site's own subclass, with its own dimension."""
    vectors = unit_vectors(50, 8, seed=3)
    docs = HostDocument.objects.bulk_create(
        HostDocument(text=str(i), embedding=v) for i, v in enumerate(vectors)
    )
    near = HostDocument.objects.nearest(vectors[4], k=3)
    assert near[0].pk == docs[4].pk and near[0].distance == pytest.approx(0, abs=1e-6)
    similar = HostDocument.objects.similar_to(docs[4], k=3)
    assert docs[4].pk not in [d.pk for d in similar] and len(similar) == 3
    assert similar[0].pk == near[1].pk
    lazy = HostDocument.objects.order_by_distance(vectors[9])[:1]
    assert lazy[0].pk == docs[9].pk


def _ids(result) -> list[int]:
    return [h.values["id"] for h in result.hits]


def _mean_pairwise_similarity(result) -> float:
    vectors = np.stack([np.asarray(h.document.embedding) for h in result.hits])
    similarity = vectors @ vectors.T
    n = len(vectors)
    return float((similarity.sum() - np.trace(similarity)) / (n * (n - 1)))


@pytest.mark.parametrize("metric", ["cosine", "l2", "inner_product"])
def test_mmr_with_lambda_one_keeps_the_plain_order(small_corpus, metric):
    """lambda_mult 1 is plain relevance: the first k of the fetch_k candidates, in order, with filters too."""
    for filters in (None, {"parity": "even"}):
        plain = search(vector=small_corpus[3], k=40, metric=metric, filters=filters)
        mmr = search(
            vector=small_corpus[3],
            k=10,
            metric=metric,
            filters=filters,
            mmr={"lambda_mult": 1, "fetch_k": 40},
        )
        assert _ids(mmr) == _ids(plain)[:10]
        assert [h.rank for h in mmr.hits] == list(range(1, 11))
        assert [h.distance for h in mmr.hits] == [h.distance for h in plain.hits[:10]]
        assert "embedding" not in mmr.hits[0].values  # the candidates' vectors are not handed back


def test_mmr_diversifies_real_results(fixture_docs):
    """On real passages, a smaller lambda_mult lowers the results' mean pairwise similarity step by step;
    the most relevant result stays first; filters and hybrid mode work with it; ORM helpers take it."""
    query = "war with foreign nations and the army"
    plain = search(query, k=8)
    last = _mean_pairwise_similarity(plain)
    for lambda_mult in (0.7, 0.3):
        mmr = search(query, k=8, mmr={"lambda_mult": lambda_mult, "fetch_k": 40})
        assert mmr.hits[0].values["id"] == plain.hits[0].values["id"]
        spread = _mean_pairwise_similarity(mmr)
        assert spread < last, (lambda_mult, spread, last)
        last = spread
    hybrid = search(query, k=8, mode="hybrid", mmr={"lambda_mult": 0.3})
    assert len(hybrid.hits) == 8 and len(set(_ids(hybrid))) == 8
    president = fixture_docs.column("president")[0].as_py()
    filtered = search(query, k=5, filters={"president": president}, mmr={"lambda_mult": 0.3})
    assert {h.values["metadata"]["president"] for h in filtered.hits} == {president}
    near = Document.objects.nearest(query, k=8, mmr={"lambda_mult": 0.3, "fetch_k": 40})
    assert [d.pk for d in near] == _ids(search(query, k=8, mmr={"lambda_mult": 0.3, "fetch_k": 40}))


def test_mmr_through_the_api(small_corpus, client):
    """POST /api/search takes mmr; a bad option is a 422 naming it."""
    body = {"vector": small_corpus[5].tolist(), "k": 5, "mmr": {"lambda_mult": 0.25, "fetch_k": 30}}
    response = client.post("/api/search", body, content_type="application/json")
    assert response.status_code == 200
    assert len(response.json()["results"]) == 5
    body["mmr"] = {"lambda_mult": -1}
    bad = client.post("/api/search", body, content_type="application/json")
    assert bad.status_code == 422 and "lambda_mult" in bad.content.decode()
    body["mmr"] = {"fetch_k": 2}
    bad = client.post("/api/search", body, content_type="application/json")
    assert unprocessable(bad)[0] == "mmr.fetch_k"


def test_adaptive_fusion_follows_how_selective_the_words_are(fixture_docs):
    """A name only one document holds puts it first, whatever its vector; words a hundred far-away
    documents all hold leave the order to the vector side (its first ten, in its order); a fixed
    text_weight still wins over the adaptation; the weight used is reported."""
    from vectorstore.search import fusion

    query = "railway timetable"
    far = -embed_query(query)  # the farthest a vector can be: last of the vector side
    crowd = Document.objects.bulk_create(
        Document(text=f"Railway timetable number {i} for the line", embedding=far) for i in range(100)
    )
    vector_side = _ids(search(query, k=50))[:10]
    adapted = search(query, k=10, mode="hybrid")
    assert _ids(adapted) == vector_side and not set(_ids(adapted)) & {d.pk for d in crowd}
    assert adapted.details["text_weight"] == pytest.approx(fusion.adaptive_weight(100), abs=1e-4)
    assert fusion.adaptive_weight(100) < fusion.adaptive_weight(20) == fusion.ADAPTIVE_MAX
    fixed = search(query, k=10, mode="hybrid", hybrid={"text_weight": 1})
    assert _ids(fixed)[0] in {d.pk for d in crowd} and fixed.details["text_weight"] == 1.0

    name = Document.objects.create(text="The Zyzzogeton expedition reached the coast", embedding=far)
    known = search("Zyzzogeton", k=10, mode="hybrid")
    assert _ids(known)[0] == name.pk and known.details["text_weight"] == fusion.ADAPTIVE_MAX
    quiet = search("Zyzzogeton", k=10, mode="hybrid", hybrid={"text_weight": 0})
    assert name.pk not in _ids(quiet)


def test_hybrid_weights(fixture_docs):
    """Both text weights 0 is vector search's order; far from the query in vector space, a passage holding
    every word is first and one holding some of them is left out under the default weights, in with
    partial_weight 1; a query with no word (punctuation) is vector search."""
    query = "tariff on imported goods"
    # Hybrid's vector side asks for its 50 candidates: the same search's first ten (an approximate index
    # may order the tail of a k=10 search otherwise).
    plain = _ids(search(query, k=50))[:10]
    silent = search(query, k=10, mode="hybrid", hybrid={"text_weight": 0, "partial_weight": 0})
    assert _ids(silent) == plain
    far = -embed_query("zyzzogeton qwertyuiop")  # the farthest a vector can be: last of the vector side
    every = Document.objects.create(text="Zyzzogeton qwertyuiop", embedding=far)
    some = Document.objects.create(text="Zyzzogeton alone", embedding=far)
    ids = _ids(search("zyzzogeton qwertyuiop", k=10, mode="hybrid"))
    assert ids[0] == every.pk and some.pk not in ids  # a partial match weighs a quarter by default
    ids = _ids(search("zyzzogeton qwertyuiop", k=10, mode="hybrid", hybrid={"partial_weight": 1}))
    assert ids[0] == every.pk and some.pk in ids
    assert _ids(search("?!", k=10, mode="hybrid")) == _ids(search(vector=embed_query("?!"), k=50))[:10]


def test_hybrid_gates_a_described_needs_far_matches(fixture_docs):
    """A described need (two words or more) whose words a few far-away documents hold: their words alone
    do not lift them over the vector side's order; a match about as near as the vector side's k-th result
    is lifted; a one-word name held by a far document still comes first."""
    from vectorstore.search import fusion

    query = "lighthouse keepers"
    q = embed_query(query)
    far = [
        Document.objects.create(text=f"Lighthouse keepers' union minutes, meeting {i}", embedding=-q)
        for i in range(4)
    ]
    vector_side = _ids(search(query, k=50))[:10]
    gated = search(query, k=10, mode="hybrid")
    assert _ids(gated) == vector_side and not {d.pk for d in far} & set(_ids(gated))
    assert gated.details["text_weight"] == pytest.approx(fusion.adaptive_weight(4), abs=1e-4)

    # A vector just past the vector side's 10th (outside its first page, inside the gate's margin).
    tenth = search(vector=q, k=10).hits[-1].distance
    rng = np.random.default_rng(0)
    side = rng.standard_normal(q.shape).astype(np.float32)
    side -= side.dot(q) * q / q.dot(q)
    side /= np.linalg.norm(side)
    angle = np.arccos(1 - (tenth + fusion.GATE_MARGIN / 2))
    near = Document.objects.create(
        text="Lighthouse keepers of the northern coast", embedding=np.cos(angle) * q + np.sin(angle) * side
    )
    assert near.pk not in _ids(search(query, k=10))
    assert _ids(search(query, k=10, mode="hybrid"))[0] == near.pk

    name = Document.objects.create(text="The Zyzzogeton reached the coast", embedding=-q)
    assert _ids(search("zyzzogeton", k=10, mode="hybrid"))[0] == name.pk
    assert fusion.described("the lighthouse keepers") and not fusion.described("the Zyzzogeton")


def test_a_search_is_one_checked_immutable_request(fixture_docs, monkeypatch):
    """search() checks its arguments once into a SearchRequest (frozen: nothing downstream changes it),
    completed with the defaults (metric, candidates for MMR, hybrid's options), and runs from it alone."""
    import dataclasses

    from vectorstore.search import request as request_module
    from vectorstore.search.request import SearchRequest

    built = SearchRequest.build(
        "tariffs", k=5, mode="hybrid", mmr={"fetch_k": 30}, filters={"category": "Whig"}
    )
    assert (built.k, built.candidates, built.metric, built.lambda_mult) == (5, 30, "cosine", 0.5)
    assert built.fusion.vector_k == 50 and built.condition is not None and built.model is Document
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.k = 6
    with pytest.raises(SearchError, match="k"):
        SearchRequest.build("x", k=0)
    seen = []
    real = request_module.SearchRequest.build.__func__
    monkeypatch.setattr(
        request_module.SearchRequest,
        "build",
        classmethod(lambda cls, *a, **kw: seen.append(kw) or real(cls, *a, **kw)),
    )
    assert len(search("tariffs", k=3).hits) == 3 and len(seen) == 1
