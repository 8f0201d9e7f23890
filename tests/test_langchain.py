"""The LangChain adapter against a real PostgreSQL: LangChain's own standard suite, sync and async, in full
(none of its tests overridden or skipped), then what the suite does not ask: filters, MMR, hybrid, the
model's validation, its own fields, the bundled model with its own embedder."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from asgiref.sync import sync_to_async
from langchain_core.documents import Document as LCDocument
from langchain_tests.integration_tests import VectorStoreIntegrationTests

from tests.helpers import close_async_thread_connections, run_readme_guide
from tests.testapp.models import ChainDocument
from vectorstore.integrations.langchain import DjangoVectorStore, ModelEmbeddings
from vectorstore.models import Document

# Committed rows: the async methods run on Django's thread for sync code, whose connection is not the
# test's (pytest-django's rollback would hide their writes from it).
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def _close_the_async_threads_connection():
    yield
    close_async_thread_connections()


class TestStandardSuite(VectorStoreIntegrationTests):
    """langchain-tests' VectorStoreIntegrationTests on a host model of the suite's embedding size."""

    @pytest.fixture
    def vectorstore(self):
        ChainDocument.objects.all().delete()
        yield DjangoVectorStore(ChainDocument, embedding=self.get_embeddings())
        ChainDocument.objects.all().delete()


@pytest.fixture
def store():
    return DjangoVectorStore(
        ChainDocument, embedding=VectorStoreIntegrationTests.get_embeddings(), metadata_fields=["source"]
    )


def _add(store) -> list[str]:
    return store.add_documents(
        [
            LCDocument(page_content="the cat sat on the mat", metadata={"topic": "pets", "year": 2020}),
            LCDocument(page_content="dogs chase cats", metadata={"topic": "pets", "year": 2024}),
            LCDocument(page_content="stock markets fell", metadata={"topic": "money", "source": "wire"}),
        ],
        ids=["a", "b", "c"],
    )


def test_filters_speak_the_apps_language_and_reach_model_fields(store):
    """Metadata keys filter metadata; a key naming a model field fills that field and filters it."""
    _add(store)
    assert ChainDocument.objects.get(external_id="c").source == "wire"
    assert store.get_by_ids(["c"])[0].metadata == {"topic": "money", "source": "wire"}
    found = store.similarity_search("cats", k=3, filter={"topic": "pets", "year": {"$gte": 2021}})
    assert [d.id for d in found] == ["b"]
    assert [
        d.id for d in store.similarity_search("x", k=3, filter={"$or": [{"year": 2020}, {"topic": "money"}]})
    ] in (
        ["a", "c"],
        ["c", "a"],
    )
    # A row the site wrote itself: its own field comes back through metadata_fields.
    store.add_texts(["plain row"], ids=["d"])
    ChainDocument.objects.filter(external_id="d").update(source="site")
    assert store.get_by_ids(["d"])[0].metadata == {"source": "site"}
    with pytest.raises(ValueError, match="filter"):
        store.similarity_search("x", filter={"year": {"$near": 3}})


def test_scores_mmr_and_hybrid(store):
    """Distances ascend; relevance scores lie in [0, 1]; MMR returns k distinct documents; hybrid fuses the
    text side in."""
    _add(store)
    vector = store.embeddings.embed_query("dogs chase cats")
    scored = store.similarity_search_with_score_by_vector(vector, k=3)
    assert scored[0][0].id == "b" and scored[0][1] == pytest.approx(0, abs=1e-5)
    assert [s for _, s in scored] == sorted(s for _, s in scored)
    relevance = store.similarity_search_with_relevance_scores("dogs chase cats", k=3)
    assert all(0 <= r <= 1 for _, r in relevance) and relevance[0][0].id == "b"
    picked = store.max_marginal_relevance_search("dogs chase cats", k=2, fetch_k=3, lambda_mult=0.1)
    assert len({d.id for d in picked}) == 2 and picked[0].id == "b"
    hybrid = store.similarity_search("markets", k=3, mode="hybrid")
    assert hybrid[0].id == "c"  # the fake embedding knows no meaning; the text side found the word
    retriever = store.as_retriever(search_kwargs={"k": 1, "filter": {"topic": "money"}})
    assert [d.id for d in retriever.invoke("anything")] == ["c"]


def test_writes_honour_the_models_validation_and_write_all_or_nothing(store):
    """A bad value is a ValueError naming the document and the field, and nothing of the batch is kept."""
    _add(store)
    cases = [
        ({"rating": "five"}, "rating"),
        ({"source": "x" * 21}, "source"),
        ({"created_at": "not a date"}, "created_at"),
        ({"note": "a\x00b"}, "metadata"),
    ]
    for metadata, field in cases:
        with pytest.raises(ValueError, match=f"document 1.*{field}"):
            store.add_texts(["fine", "bad"], [{}, metadata], ids=["e", "a"])
        assert not ChainDocument.objects.filter(external_id="e").exists()
        assert ChainDocument.objects.get(external_id="a").text == "the cat sat on the mat"
    with pytest.raises(ValueError, match="document 0: text"):
        store.add_texts(["a\x00b"])
    with pytest.raises(ValueError, match="ids"):
        store.delete()
    assert ChainDocument.objects.count() == 3
    # An id given twice keeps the last text; a replaced document is replaced whole.
    store.add_texts(["one", "two"], [{"source": "x", "rating": 3}, {"rating": 4}], ids=["a", "a"])
    row = ChainDocument.objects.get(external_id="a")
    assert (row.text, row.source, row.rating, row.metadata) == ("two", "", 4, {"rating": 4})


async def test_async_methods_answer_as_the_sync_ones(store):
    await store.aadd_texts(
        ["red apples", "green pears", "blue sky"], [{"n": 1}, {"n": 2}, {"n": 3}], ids=["1", "2", "3"]
    )
    vector = store.embeddings.embed_query("green pears")
    sync = sync_to_async(lambda method, *args, **kwargs: getattr(store, method)(*args, **kwargs))
    assert await store.asimilarity_search_by_vector(vector, k=2) == await sync(
        "similarity_search_by_vector", vector, k=2
    )
    assert (await store.asimilarity_search_by_vector(vector, k=2))[0].id == "2"
    options = {"k": 3, "filter": {"n": {"$gt": 1}}}
    assert await store.asimilarity_search("blue", **options) == await sync(
        "similarity_search", "blue", **options
    )
    assert await store.amax_marginal_relevance_search("red", k=2) == await sync(
        "max_marginal_relevance_search", "red", k=2
    )
    assert await store.adelete(["1"]) and [d.id for d in await store.aget_by_ids(["1", "2"])] == ["2"]


def test_the_bundled_model_with_its_own_embedder():
    """No Embeddings given: the model's own sentence-transformers model embeds, and meaning ranks."""
    store = DjangoVectorStore(Document)
    assert isinstance(store.embeddings, ModelEmbeddings)
    store.add_texts(
        ["The cathedral's organ was restored last spring.", "Interest rates rose again this quarter."],
        [{"kind": "music"}, {"kind": "finance"}],
        ids=["organ", "rates"],
    )
    stored = Document.objects.get(external_id="organ")
    assert np.allclose(stored.embedding, store.embeddings.embed_documents([stored.text])[0], atol=1e-5)
    assert store.similarity_search("church music instrument repaired", k=1)[0].id == "organ"
    assert store.similarity_search("central bank monetary policy", k=1, mode="hybrid")[0].id == "rates"


def test_the_readme_guide_builds_a_retriever_over_the_sites_model(monkeypatch):
    """The README's LangChain block, word for word, with the host's ``Article`` being the bundled model."""
    run_readme_guide("langchain guide", monkeypatch, Document)
    assert Document.objects.filter(external_id__in=["p", "c"]).count() == 2


def test_the_app_without_the_extra_imports_none_of_it():
    """Every module of the app but the adapters loads without langchain imported (an install without
    the extra)."""
    code = (
        "import importlib, pkgutil, sys, django; django.setup(); import vectorstore;"
        "names = [m.name for m in pkgutil.walk_packages(vectorstore.__path__, 'vectorstore.')"
        " if not m.name.startswith('vectorstore.integrations.')];"
        "[importlib.import_module(n) for n in names];"
        "assert not [m for m in sys.modules if m.startswith(('langchain', 'llama_index'))], 'imported';"
        "print(len(names))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
        cwd=Path(__file__).resolve().parent.parent,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.split()[-1]) > 30
