"""embed_parquet --passages and bulk_copy, against the real database: the passages cut and embedded once,
in the file, are what a load into a model that keeps passages writes (the model not run again), as save()
would have cut them; rows the file has none for are embedded by the load; a wrong passage is refused by
row with nothing stored; a model without passages ignores the column."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from tests.test_passages import (  # noqa: F401 - the fixture is used by every test here
    _each_text_embedded_once,
    _long_table,
    _long_texts,
    _passage_counts,
)
from tests.testapp.models import LongArticle
from vectorstore import passages
from vectorstore.embedding import Embedder
from vectorstore.indexing import vector_indexes
from vectorstore.loading import ingest
from vectorstore.models import Document, SearchTuning
from vectorstore.passages import files as passage_files
from vectorstore.search import forget_tuning, search
from vectorstore.search.settings import tuned_settings
from vectorstore.tuning import queries as tuning_queries
from vectorstore.validation import InputError

pytestmark = pytest.mark.django_db


@pytest.fixture
def embedded(tmp_path) -> tuple[list[tuple[str, str]], str]:
    """Three long texts and a short one, through ``embed_parquet --passages``."""
    texts = [*_long_texts(3), ("short", "A short text fits in one passage.")]
    pq.write_table(_long_table(texts), tmp_path / "in.parquet")
    out = str(tmp_path / "embedded.parquet")
    call_command("embed_parquet", str(tmp_path / "in.parquet"), out, "--passages")
    return texts, out


def _stored(model) -> dict[str, list[tuple[int, int, int, np.ndarray]]]:
    passage = passages.passage_model(model)
    out: dict[str, list] = {}
    for p in passage.objects.select_related("document").order_by("document__external_id", "ordinal"):
        out.setdefault(p.document.external_id, []).append(
            (p.ordinal, p.start, p.end, np.asarray(p.embedding, dtype=np.float32))
        )
    return out


def test_bulk_copy_takes_the_files_passages_without_running_the_model(embedded, monkeypatch):
    """The file's passages are the ones save() cuts (same spans, same vectors); loading it writes them
    for each document in the load's transaction, and the model never runs (it would raise)."""
    texts, path = embedded
    table = pq.read_table(path)
    assert table.schema.field("passages").type == passage_files.COLUMN_TYPE
    assert passage_files.described(ingest.Source(path))["overlap"] == 32
    cut = table.column("passages").to_pylist()
    assert [len(c) for c in cut][3] == 1 and all(len(c) > 10 for c in cut[:3])

    def no_model(self, texts, **kwargs):
        raise AssertionError("the load ran the model")

    with monkeypatch.context() as patched:
        patched.setattr(Embedder, "encode", no_model)
        report = ingest.load(path, model="testapp.LongArticle", progress=False)
    assert report.inserted == 4 and report.passages == sum(len(c) for c in cut) and not report.warnings
    assert report.ignored_columns == [] and report.index_strategy == "rebuild" and report.index_seconds > 0
    # A first load builds the passage table's indexes after its rows, as the document table's.
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT i.indexrelid::regclass::text FROM pg_index i WHERE i.indrelid = %s::regclass"
            " AND i.indisvalid AND pg_get_indexdef(i.indexrelid) LIKE '%%USING hnsw%%'",
            [passages.passage_model(LongArticle)._meta.db_table],
        )
        assert [r[0] for r in cursor.fetchall()] == [
            passages.passage_model(LongArticle)._meta.indexes[0].name
        ]

    from_file = _stored(LongArticle)
    LongArticle.objects.all().delete()
    stored_ids, stored_texts = (table.column(name).to_pylist() for name in ("external_id", "text"))
    for external_id, text in zip(stored_ids, stored_texts, strict=True):
        LongArticle.objects.create(external_id=external_id, text=text)
    on_save = _stored(LongArticle)
    assert sorted(from_file) == sorted(on_save) == ["bulk-0", "bulk-1", "bulk-2", "bulk-3"]
    for key, saved in on_save.items():
        assert [row[:3] for row in from_file[key]] == [row[:3] for row in saved]
        assert all(np.allclose(a[3], b[3], atol=1e-5) for a, b in zip(from_file[key], saved, strict=True))
    long_text = texts[0][1]
    assert all(end <= len(long_text) for _, _, end, _ in from_file["bulk-0"])


def test_rows_the_file_has_no_passages_for_are_embedded_by_the_load(embedded, tmp_path):
    """A row whose passages are null (edited after embedding, say) is cut and embedded by the load; a
    rerun writes nothing; the same file into a model without passages leaves the column out (said in
    the report) and nothing of it in the metadata."""
    texts, path = embedded
    table = pq.read_table(path)
    cut = table.column("passages").to_pylist()
    column = pa.array([None, *cut[1:]], type=passage_files.COLUMN_TYPE)
    table = table.set_column(table.schema.get_field_index("passages"), "passages", column)
    pq.write_table(table, tmp_path / "partial.parquet")
    report = ingest.load(str(tmp_path / "partial.parquet"), model="testapp.LongArticle", progress=False)
    counts = _passage_counts(LongArticle)
    assert report.passages == sum(n for n, _ in counts.values())
    assert counts["bulk-0"][0] > 10 and counts["bulk-0"][1] == len(texts[0][1])
    assert [counts[f"bulk-{i}"][0] for i in (1, 2, 3)] == [len(cut[i]) for i in (1, 2, 3)]
    again = ingest.load(
        str(tmp_path / "partial.parquet"), model="testapp.LongArticle", on_conflict="skip", progress=False
    )
    assert (again.skipped, again.passages) == (4, 0)

    plain = ingest.load(path, model=Document, progress=False)  # PASSAGES off: no passages kept
    assert plain.ignored_columns == ["passages"] and plain.passages == 0
    assert all("passages" not in d.metadata for d in Document.objects.all())


def test_a_wrong_passage_in_the_file_is_refused_by_row_and_nothing_is_stored(embedded, tmp_path):
    """A span past its text's end, or a vector of the wrong size: an InputError naming the column, the
    row and the passage, nothing stored (documents nor passages), bulk_copy a CommandError."""
    _, path = embedded
    table = pq.read_table(path)
    cut = table.column("passages").to_pylist()
    bad_span = [dict(p) for p in cut[2]]
    bad_span[1]["end"] = 10**6
    bad_vector = [dict(p) for p in cut[1]]
    bad_vector[0]["embedding"] = bad_vector[0]["embedding"][:10]
    for rows, message in (
        ([*cut[:2], bad_span, cut[3]], "column 'passages', row 2: passage 1 spans"),
        ([cut[0], bad_vector, *cut[2:]], "column 'passages', row 1: passage 0 has 10 numbers, not 384"),
    ):
        broken = table.set_column(
            table.schema.get_field_index("passages"), "passages", pa.array(rows, passage_files.COLUMN_TYPE)
        )
        pq.write_table(broken, tmp_path / "broken.parquet")
        with pytest.raises(InputError, match=message):
            ingest.load(str(tmp_path / "broken.parquet"), model="testapp.LongArticle", progress=False)
        assert LongArticle.objects.count() == 0
        assert passages.passage_model(LongArticle).objects.count() == 0
    with pytest.raises(CommandError, match="row 1: passage 0 has 10 numbers"):
        call_command("bulk_copy", str(tmp_path / "broken.parquet"), "--model", "testapp.LongArticle")


@pytest.mark.django_db(transaction=True)  # CREATE INDEX CONCURRENTLY
def test_vector_index_and_tune_search_serve_the_passage_table(capsys):
    """``--passages``: vector_index builds a half-precision index on the model's passage table, which the
    passage search then uses; tune_search measures the passage table (pseudo-queries are passages' own
    text) and stores its ef_search, which the passage search reads; a model without passages is refused
    by flag."""
    texts = _long_texts(3)
    ingest.load(_long_table(texts), model="testapp.LongArticle", progress=False)
    model = passages.passage_model(LongArticle)
    table = model._meta.db_table
    try:
        call_command(
            "vector_index", "create", "--model", "testapp.LongArticle", "--passages",
            "--quantization", "half", "--no-tune",
        )  # fmt: skip
        vector_indexes.forget()
        assert vector_indexes.serving(model, "cosine").kind == "half"
        query = " ".join(texts[1][1][-900:].split()[:60])
        found = search(query, queryset=LongArticle.objects.all(), k=3)
        assert found.details.get("quantization") == "half"
        assert found.hits[0].values["external_id"] == "bulk-1" and found.hits[0].passage["ordinal"] > 3

        cut = tuning_queries.pseudo_queries(model, "default", 20, model.objects.count())
        # The passages' own words, from anywhere in the documents (not only their first TEXT_CHARS).
        words = [" ".join(tuning_queries.WORD.findall(text)) for _, text in texts]
        heads = [
            " ".join(tuning_queries.WORD.findall(text[: tuning_queries.TEXT_CHARS])) for _, text in texts
        ]
        assert cut.texts and all(any(t in w for w in words) for t in cut.texts)
        assert not all(any(t in h for h in heads) for t in cut.texts)
        call_command(
            "tune_search", "--model", "testapp.LongArticle", "--passages", "--query-model", "pseudo",
            "--queries", "20", "--json",
        )  # fmt: skip
        stored = SearchTuning.objects.get(db_table=table)
        assert stored.ef_search is not None and stored.index_name.startswith(table)
        forget_tuning()
        assert tuned_settings(table, "default").ef_search == stored.ef_search  # what the search reads
        assert (
            search(query, queryset=LongArticle.objects.all(), k=3).hits[0].values["external_id"] == "bulk-1"
        )
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f'DROP INDEX IF EXISTS "{table}_hnsw_half"')
        vector_indexes.forget()
    with pytest.raises(CommandError, match=r"--passages: testapp\.HostDocument keeps no passages"):
        call_command("vector_index", "list", "--model", "testapp.HostDocument", "--passages")


def test_the_adapters_write_passages_and_answer_with_the_matched_one():
    """LangChain's add_texts and LlamaIndex's add (bulk upserts, no save()) into a model that keeps
    passages write them in their transaction, so the documents are found by their last third; the
    matched passage is in the results' metadata; adding an unchanged text again keeps its passages, a
    changed one's are replaced."""
    from llama_index.core.schema import TextNode
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from vectorstore.integrations.langchain import DjangoVectorStore
    from vectorstore.integrations.llama_index import DjangoVectorStore as LlamaStore

    texts = _long_texts(3)
    store = DjangoVectorStore(LongArticle)
    store.add_texts([t for _, t in texts[:2]], [{"by": p} for p, _ in texts[:2]], ids=["lc-0", "lc-1"])
    embedder = Embedder.for_model(LongArticle)
    node = TextNode(id_="li-2", text=texts[2][1], embedding=embedder.encode([texts[2][1]])[0].tolist())
    LlamaStore(LongArticle).add([node])
    counts = _passage_counts(LongArticle)
    assert sorted(counts) == ["lc-0", "lc-1", "li-2"] and all(n > 10 for n, _ in counts.values())
    assert [counts[k][1] for k in ("lc-0", "lc-1", "li-2")] == [len(t) for _, t in texts]

    for i, key in enumerate(["lc-0", "lc-1", "li-2"]):
        query = " ".join(texts[i][1][-1200:].split()[:80])
        (found,) = store.similarity_search(query, k=1)
        assert found.id == key and found.metadata["passage"]["ordinal"] > 3
        assert (
            found.metadata["passage"]["text"]
            == texts[i][1][found.metadata["passage"]["start"] :][: len(found.metadata["passage"]["text"])]
        )
    vector = embedder.encode([" ".join(texts[2][1][-1200:].split()[:80])])[0].tolist()
    result = LlamaStore(LongArticle).query(VectorStoreQuery(query_embedding=vector, similarity_top_k=1))
    assert result.ids == ["li-2"] and result.nodes[0].metadata["passage"]["ordinal"] > 3

    passage = passages.passage_model(LongArticle)
    before = dict(passage.objects.filter(document__external_id="lc-0").values_list("ordinal", "pk"))
    shorter = texts[1][1][: len(texts[1][1]) // 3]
    store.add_texts([texts[0][1], shorter], ids=["lc-0", "lc-1"])
    assert dict(passage.objects.filter(document__external_id="lc-0").values_list("ordinal", "pk")) == before
    after = _passage_counts(LongArticle)
    assert after["lc-1"][1] == len(shorter) and after["lc-1"][0] < counts["lc-1"][0]


def test_a_querysets_own_narrowing_holds_in_passage_search():
    """Without ``filters``, what the queryset itself narrows (the ORM helpers' filter(), similar()'s
    exclusion of the document itself) still holds: the passages of other documents are not answered."""
    texts = _long_texts(3)
    ingest.load(_long_table(texts), model="testapp.LongArticle", progress=False)
    query = " ".join(texts[1][1][-1200:].split()[:80])
    assert LongArticle.objects.nearest(query, k=1)[0].external_id == "bulk-1"
    only = LongArticle.objects.filter(external_id__in=["bulk-0", "bulk-2"]).nearest(query, k=3)
    assert sorted(d.external_id for d in only) == ["bulk-0", "bulk-2"]
    document = LongArticle.objects.get(external_id="bulk-1")
    similar = LongArticle.objects.similar_to(document, k=3)
    assert sorted(d.external_id for d in similar) == ["bulk-0", "bulk-2"]
    assert all(d.passage is not None for d in similar)
