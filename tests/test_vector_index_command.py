"""manage.py vector_index on a real table: each kind built concurrently and used by search, kinds switched
with --replace while clients search, and index builds sized for their graph (warning when capped)."""

import json
import threading
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, connections

from tests.helpers import unit_vectors
from vectorstore.indexing import build_memory, vector_indexes
from vectorstore.models import Document, SearchTuning
from vectorstore.search import search

# CREATE INDEX CONCURRENTLY runs outside any transaction, on rows other connections can see.
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def restore_indexes():
    """Put the table's vector indexes back as the migrations made them (a flush keeps indexes as they are)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'vectorstore_document'"
            " AND (indexdef LIKE '%USING hnsw%' OR indexdef LIKE '%USING ivfflat%')"
        )
        before = dict(cursor.fetchall())
    yield
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'vectorstore_document'"
            " AND (indexdef LIKE '%USING hnsw%' OR indexdef LIKE '%USING ivfflat%')"
        )
        for (name,) in cursor.fetchall():
            if name not in before:
                cursor.execute(f'DROP INDEX "{name}"')
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'vectorstore_document'")
        present = {r[0] for r in cursor.fetchall()}
        for name, definition in before.items():
            if name not in present:
                cursor.execute(definition)
    vector_indexes.forget()


def emitted(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def listed(capsys) -> list[dict]:
    call_command("vector_index", "list", "--json")
    return emitted(capsys)["indexes"]


@pytest.fixture
def vectors():
    found = unit_vectors(2000, 384, seed=31)
    Document.objects.bulk_create(
        Document(external_id=f"v{i}", text=f"t{i}", embedding=v) for i, v in enumerate(found)
    )
    return found


def test_the_command_lists_and_builds_each_kind(vectors, capsys, restore_indexes):
    (only,) = listed(capsys)
    assert (only["name"], only["kind"], only["valid"], only["serving"]) == (
        "vectorstore_document_hnsw",
        "full",
        True,
        True,
    )
    for options, kind, name in [
        (["--quantization", "half"], "half", "vectorstore_document_hnsw_half"),
        (["--quantization", "binary"], "binary", "vectorstore_document_hnsw_binary"),
        (
            ["--method", "ivfflat", "--quantization", "half"],
            "half",
            "vectorstore_document_ivfflat_half",
        ),
        (["--quantization", "full"], "full", "vectorstore_document_hnsw_full"),
    ]:
        call_command("vector_index", "create", *options, "--replace", "--grace", "0", "--json")
        report = emitted(capsys)
        assert report["index"] == name and report["rows"] == 2000 and report["size_bytes"] > 0
        assert report["maintenance_work_mem"] == "65536kB"  # 2,000 rows: PostgreSQL's default suffices
        (index,) = listed(capsys)  # exactly one vector index, valid, and the one searches use
        assert (index["name"], index["kind"], index["valid"], index["serving"]) == (name, kind, True, True)
        result = search(vector=vectors[7], k=5, probes=20)
        assert result.hits[0].document.external_id == "v7"
        assert result.details.get("quantization") == (None if kind == "full" else kind)
    # A build whose name is taken, without --replace, is refused, naming the flag.
    with pytest.raises(CommandError, match="--name vectorstore_document_hnsw_full"):
        call_command("vector_index", "create", "--quantization", "full")


def _search_continuously(
    stop: threading.Event, counts: Counter, kinds: set, problems: list, vectors: np.ndarray
) -> None:
    """A client calling search() in a loop (its own connection), counting answers, errors and index kinds."""
    i = 0
    try:
        while not stop.is_set():
            try:
                result = search(vector=vectors[i % 100], k=10)
                distances = [h.distance for h in result.hits]
                # (Whether the source comes first is the index's recall, not the switch's concern.)
                good = len(distances) == 10 and distances == sorted(distances)
                counts["ok" if good else "wrong"] += 1
                kinds.add(result.details.get("quantization"))
                if not good:
                    problems.append(
                        f"v{i % 100}: {[h.document.external_id for h in result.hits]} {result.details}"
                    )
            except Exception as exc:  # any failure is what this test counts
                counts["error"] += 1
                problems.append(repr(exc))
            i += 1
    finally:
        connections.close_all()


def test_switching_kinds_under_searches_leaves_one_valid_index_and_no_failed_search(
    vectors, capsys, settings, restore_indexes
):
    settings.VECTORSTORE = {"INDEX_LOOKUP_SECONDS": 1}  # the old index goes 1 s after the new one is ready
    stop, counts, kinds, problems = threading.Event(), Counter(), set(), []
    clients = [
        threading.Thread(target=_search_continuously, args=(stop, counts, kinds, problems, vectors))
        for _ in range(4)
    ]
    for client in clients:
        client.start()
    try:
        for kind in ("half", "binary", "full"):
            call_command("vector_index", "create", "--quantization", kind, "--replace", "--no-tune", "--json")
            report = emitted(capsys)
            (index,) = listed(capsys)
            assert index["valid"] and index["kind"] == kind and report["dropped"]
            seen = counts["ok"]
            # Each kind searched before the next switch (observed, not slept on).
            while counts["ok"] < seen + 8 and not counts["error"]:
                stop.wait(0.05)
    finally:
        stop.set()
        for client in clients:
            client.join()
    assert counts["error"] == 0 and counts["wrong"] == 0 and counts["ok"] > 0, (counts, problems[:5])
    assert {"half", "binary", None} <= kinds
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_index WHERE NOT indisvalid")
        assert cursor.fetchone()[0] == 0
    assert SearchTuning.objects.filter(db_table="vectorstore_document").count() <= 1


def test_memory_is_sized_for_the_graph():
    """A million 384-dimension rows: the setting grows with the kind's element size, within the cap."""
    full = build_memory.BuildIndex("f", "hnsw", None, 384)
    half = build_memory.BuildIndex("h", "hnsw", "half", 384)
    binary = build_memory.BuildIndex("b", "hnsw", "binary", 384)
    sized = {b.name: build_memory.plan([b], 1_000_000) for b in (full, half, binary)}
    # ~2.2 KB, ~1.5 KB, ~0.75 KB an element with m 16 (measured from pgvector's own notice).
    assert 2.2e9 < sized["f"].needed < 2.7e9
    assert 1.4e9 < sized["h"].needed < 1.8e9
    assert 0.7e9 < sized["b"].needed < 0.95e9
    assert all(p.fits and p.chosen == p.needed and p.warning() is None for p in sized.values())
    small = build_memory.plan([full], 1000)
    assert small.chosen == build_memory.FLOOR and small.setting == "65536kB"
    ivf = build_memory.plan([build_memory.BuildIndex("i", "ivfflat", None, 384)], 1_000_000)
    assert ivf.needed == 0 and ivf.chosen == build_memory.FLOOR


def test_a_capped_build_warns_with_the_numbers_and_reports_the_spill(tmp_path, capsys, settings):
    """With BUILD_MEMORY_LIMIT below the graph's need, bulk_copy says so before building, and pgvector's
    notice that the graph outgrew memory is reported."""
    settings.VECTORSTORE = {"BUILD_MEMORY_LIMIT": "2MB"}
    capped = build_memory.plan([build_memory.BuildIndex("f", "hnsw", None, 384)], 3000)
    assert capped.chosen == 2 * 1024**2 and not capped.fits
    assert "capped by VECTORSTORE BUILD_MEMORY_LIMIT" in capped.warning()
    vectors = unit_vectors(3000, 384, seed=32)
    path = tmp_path / "v.parquet"
    ids = [f"c{i}" for i in range(3000)]
    pq.write_table(
        pa.table(
            {"id": ids, "text": ids, "embedding": pa.array(list(vectors), type=pa.list_(pa.float32(), 384))}
        ),
        path,
    )
    call_command("bulk_copy", str(path), "--json", "--no-tune")
    out, err = capsys.readouterr()
    report = json.loads(out.strip().splitlines()[-1])
    assert report["inserted"] == 3000 and report["index_memory"] == "2048kB"
    assert "needs about" in err and "maintenance_work_mem is 2.0 MB (capped by" in err
    assert any("no longer fits into maintenance_work_mem" in w for w in report["warnings"]), report[
        "warnings"
    ]
    assert "graph no longer fits" in err
