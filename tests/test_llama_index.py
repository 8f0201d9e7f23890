"""The LlamaIndex adapter against a real PostgreSQL: a VectorStoreIndex built on it answers with the right
node, each mapped filter operator selects what LlamaIndex's own in-memory store selects, delete by
document id, async, the model's validation, and the bundled model with its own embedder."""

from __future__ import annotations

import numpy as np
import pytest
from llama_index.core import Document as LIDocument
from llama_index.core import StorageContext, VectorStoreIndex
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores import SimpleVectorStore
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)

from tests.helpers import close_async_thread_connections, run_readme_guide
from tests.testapp.models import ChainDocument
from vectorstore.integrations.llama_index import DjangoVectorStore, ModelEmbedding, metadata_filters
from vectorstore.models import Document

pytestmark = pytest.mark.django_db(transaction=True)  # the async forms' thread must see committed rows


@pytest.fixture(autouse=True)
def _close_the_async_threads_connection():
    yield
    close_async_thread_connections()


def _nodes() -> list[TextNode]:
    rng = np.random.default_rng(3)
    specs = [
        ("n1", "doc-a", {"topic": "pets", "year": 2020, "tags": ["cat", "home"], "title": "Cats at Home"}),
        ("n2", "doc-a", {"topic": "pets", "year": 2024, "tags": ["dog"], "title": "Dogs outside"}),
        (
            "n3",
            "doc-b",
            {"topic": "money", "year": 2022, "tags": ["stocks", "home"], "title": "Home loans_2"},
        ),
        ("n4", "doc-c", {"topic": "money", "year": 1999, "tags": [], "title": "100% returns"}),
    ]
    nodes = []
    for node_id, doc, metadata in specs:
        vector = rng.normal(size=6)
        node = TextNode(
            id_=node_id,
            text=f"text of {node_id}",
            metadata=metadata,
            embedding=list(vector / np.linalg.norm(vector)),
        )
        node.relationships[NodeRelationship.SOURCE] = RelatedNodeInfo(node_id=doc)
        nodes.append(node)
    return nodes


@pytest.fixture
def store():
    store = DjangoVectorStore(ChainDocument)
    store.add(_nodes())
    return store


def _ids(result) -> list[str]:
    return [n.node_id for n in result.nodes]


OPERATOR_CASES = [
    (FilterOperator.EQ, "topic", "pets"),
    (FilterOperator.NE, "topic", "pets"),
    (FilterOperator.GT, "year", 2020),
    (FilterOperator.GTE, "year", 2020),
    (FilterOperator.LT, "year", 2022),
    (FilterOperator.LTE, "year", 2022),
    (FilterOperator.IN, "topic", ["money", "art"]),
    (FilterOperator.NIN, "year", [2020, 1999]),
    (FilterOperator.CONTAINS, "tags", "home"),
    (FilterOperator.ANY, "tags", ["dog", "stocks"]),
    (FilterOperator.ALL, "tags", ["stocks", "home"]),
    (FilterOperator.TEXT_MATCH, "title", "Home"),
    (FilterOperator.TEXT_MATCH_INSENSITIVE, "title", "home"),
    (FilterOperator.TEXT_MATCH, "title", "100%"),
    (FilterOperator.TEXT_MATCH, "title", "s_2"),
]


@pytest.mark.parametrize(
    ("operator", "key", "value"), OPERATOR_CASES, ids=lambda c: str(getattr(c, "value", c))
)
def test_each_mapped_operator_selects_what_llama_indexs_own_store_selects(store, operator, key, value):
    simple = SimpleVectorStore()
    simple.add(_nodes())
    filters = MetadataFilters(filters=[MetadataFilter(key=key, operator=operator, value=value)])
    query = VectorStoreQuery(query_embedding=_nodes()[0].embedding, similarity_top_k=10, filters=filters)
    expected = sorted(simple.query(query).ids)
    assert expected  # every case selects something
    assert sorted(_ids(store.query(query))) == expected
    assert sorted(n.node_id for n in store.get_nodes(filters=filters)) == expected


def test_conditions_nest_and_an_unmapped_operator_is_named(store):
    either = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value="money"),
            MetadataFilters(
                filters=[MetadataFilter(key="year", operator=FilterOperator.GTE, value=2024)],
                condition=FilterCondition.AND,
            ),
        ],
        condition=FilterCondition.OR,
    )
    query = VectorStoreQuery(query_embedding=_nodes()[0].embedding, similarity_top_k=10, filters=either)
    assert sorted(_ids(store.query(query))) == ["n2", "n3", "n4"]
    neither = MetadataFilters(
        filters=[MetadataFilter(key="topic", value="money"), MetadataFilter(key="year", value=2020)],
        condition=FilterCondition.NOT,
    )
    assert _ids(
        store.query(
            VectorStoreQuery(query_embedding=_nodes()[0].embedding, filters=neither, similarity_top_k=5)
        )
    ) == ["n2"]
    empty = MetadataFilters(
        filters=[MetadataFilter(key="tags", operator=FilterOperator.IS_EMPTY, value=None)]
    )
    with pytest.raises(ValueError, match=r"filters\.tags: the operator 'is_empty'"):
        metadata_filters(empty)
    with pytest.raises(ValueError, match="mode"):
        store.query(VectorStoreQuery(query_embedding=[0.1] * 6, mode=VectorStoreQueryMode.SVM))


def test_nodes_round_trip_and_delete_by_document(store):
    """Text, metadata, relationships and the embedding come back; the query returns the nearest node first;
    delete removes one source document's nodes, delete_nodes by id and filter, clear all."""
    nodes = _nodes()
    (back,) = store.get_nodes(node_ids=["n3"])
    assert back.text == "text of n3" and back.metadata == nodes[2].metadata and back.ref_doc_id == "doc-b"
    assert np.allclose(back.embedding, nodes[2].embedding, atol=1e-6)
    found = store.query(VectorStoreQuery(query_embedding=nodes[1].embedding, similarity_top_k=2))
    assert found.ids[0] == "n2" and found.similarities[0] == pytest.approx(1.0, abs=1e-5)
    assert found.nodes[0].ref_doc_id == "doc-a" and found.nodes[0].metadata == nodes[1].metadata
    assert sorted(
        _ids(
            store.query(
                VectorStoreQuery(query_embedding=nodes[0].embedding, similarity_top_k=5, doc_ids=["doc-a"])
            )
        )
    ) == ["n1", "n2"]
    store.delete("doc-a")
    assert sorted(ChainDocument.objects.values_list("external_id", flat=True)) == ["n3", "n4"]
    store.delete_nodes(filters=MetadataFilters(filters=[MetadataFilter(key="year", value=1999)]))
    assert list(ChainDocument.objects.values_list("external_id", flat=True)) == ["n3"]
    store.delete_nodes(node_ids=["n3"])
    assert not ChainDocument.objects.exists()
    store.add(nodes)
    store.clear()
    assert not ChainDocument.objects.exists()


def test_writes_honour_the_models_validation(store):
    bad = TextNode(id_="bad", text="x", metadata={"rating": "five"}, embedding=[0.1] * 6)
    with pytest.raises(ValueError, match="rating"):
        store.add([TextNode(id_="ok", text="y", embedding=[0.2] * 6), bad])
    with pytest.raises(ValueError, match="embedding"):
        store.add([TextNode(id_="none", text="z")])
    assert not ChainDocument.objects.filter(external_id__in=["ok", "bad", "none"]).exists()
    store.add(
        [TextNode(id_="r", text="rated", metadata={"rating": 4, "source": "wire"}, embedding=[0.3] * 6)]
    )
    row = ChainDocument.objects.get(external_id="r")
    assert (row.rating, row.source) == (4, "wire")


def test_mmr_and_text_modes(store):
    nodes = _nodes()
    mmr = store.query(
        VectorStoreQuery(
            query_embedding=nodes[0].embedding,
            similarity_top_k=3,
            mode=VectorStoreQueryMode.MMR,
            mmr_threshold=0.2,
        )
    )
    assert len(set(mmr.ids)) == 3 and mmr.ids[0] == "n1"
    text = store.query(
        VectorStoreQuery(query_str="n3", similarity_top_k=2, mode=VectorStoreQueryMode.TEXT_SEARCH)
    )
    assert text.ids == ["n3"]
    # Hybrid: alpha 1 is the vector order; alpha 0 puts the text match first.
    vector = store.query(VectorStoreQuery(query_embedding=nodes[0].embedding, similarity_top_k=4))
    for alpha, first in ((1.0, vector.ids[0]), (0.0, "n3")):
        hybrid = store.query(
            VectorStoreQuery(
                query_embedding=nodes[0].embedding,
                query_str="n3",
                similarity_top_k=4,
                mode=VectorStoreQueryMode.HYBRID,
                alpha=alpha,
            )
        )
        assert hybrid.ids[0] == first, (alpha, hybrid.ids)
    with pytest.raises(ValueError, match="alpha"):
        store.query(VectorStoreQuery(query_embedding=[0.1] * 6, query_str="x", mode="hybrid", alpha=2))


async def test_async_forms(store):
    nodes = _nodes()
    query = VectorStoreQuery(query_embedding=nodes[3].embedding, similarity_top_k=1)
    assert (await store.aquery(query)).ids == ["n4"]
    await store.adelete("doc-c")
    assert [n.node_id for n in await store.aget_nodes(node_ids=["n4", "n3"])] == ["n3"]
    await store.async_add([nodes[3]])
    await store.adelete_nodes(node_ids=["n1"])
    assert sorted(n.node_id for n in await store.aget_nodes(filters=MetadataFilters(filters=[]))) == [
        "n2",
        "n3",
        "n4",
    ]
    await store.aclear()
    assert await store.aget_nodes() == []


def test_a_vector_store_index_on_the_bundled_model_answers_with_the_right_node():
    """The index LlamaIndex users build: documents split into nodes, embedded by the model's own
    ModelEmbedding, stored in the site's table; a retriever and a filtered retriever find the right one."""
    store = DjangoVectorStore(Document)
    index = VectorStoreIndex.from_documents(
        [
            LIDocument(
                text="The cathedral's organ was restored last spring.",
                metadata={"kind": "music"},
                id_="organ",
            ),
            LIDocument(
                text="Interest rates rose again this quarter.", metadata={"kind": "finance"}, id_="rates"
            ),
            LIDocument(
                text="The violinist tuned her instrument before the concert.",
                metadata={"kind": "music"},
                id_="violin",
            ),
        ],
        storage_context=StorageContext.from_defaults(vector_store=store),
        embed_model=ModelEmbedding(Document),
    )
    assert Document.objects.count() == 3
    (hit,) = index.as_retriever(similarity_top_k=1).retrieve("church music instrument repaired")
    assert hit.node.ref_doc_id == "organ" and "organ" in hit.node.get_content()
    only_finance = MetadataFilters(filters=[MetadataFilter(key="kind", value="finance")])
    (hit,) = index.as_retriever(similarity_top_k=1, filters=only_finance).retrieve("a concert")
    assert hit.node.ref_doc_id == "rates"
    index.delete_ref_doc("organ")
    assert sorted(Document.objects.values_list("metadata__ref_doc_id", flat=True)) == ["rates", "violin"]


def test_the_readme_guide_retrieves_from_the_sites_model(monkeypatch):
    """The README's LlamaIndex block, word for word, with the host's ``Article`` being the bundled model."""
    run_readme_guide("llama-index guide", monkeypatch, Document)
    assert Document.objects.filter(metadata__ref_doc_id="pipes").count() == 1
