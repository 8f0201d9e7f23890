"""LlamaIndex over a Django document model: ``DjangoVectorStore`` and ``ModelEmbedding``
(``pip install vectorstore[llama-index]``, which pulls ``llama-index-core`` only).

    from llama_index.core import StorageContext, VectorStoreIndex
    from vectorstore.integrations.llama_index import DjangoVectorStore, ModelEmbedding

    store = DjangoVectorStore(Article)
    index = VectorStoreIndex.from_vector_store(store, embed_model=ModelEmbedding(Article))

A node is a row: its ``node_id`` the row's ``external_id``, its text the row's ``text``, its vector the
row's ``embedding``; its metadata, relationships and the rest of the node go into the row's
``metadata`` as LlamaIndex's own vector stores keep them (``node_to_metadata_dict``: the metadata's
keys at the top level, so the app's filters reach them, the node itself under ``_node_content``, its
document's id under ``ref_doc_id``). A metadata key that names a model field fills that field too,
through the model's validation. Queries run through ``vectorstore.search``: modes default (vector),
``mmr``, ``hybrid`` and ``text_search``; ``MetadataFilters`` become the app's filter language
(``metadata_filters``), and an operator with no faithful translation is a ValueError naming it.

The async methods run the same code through ``sync_to_async(thread_sensitive=True)``, as Django's async
ORM calls do, each write one transaction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.db import models, transaction
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from vectorstore import conf, search
from vectorstore.integrations.common import checked_rows, write_db, write_rows
from vectorstore.search.filters import SearchError, build_filter

_COMPARISONS = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.CONTAINS: "$contains",
}
_CONDITIONS = {FilterCondition.AND: "$and", FilterCondition.OR: "$or", FilterCondition.NOT: "$not"}
_MODES = {
    VectorStoreQueryMode.DEFAULT: "vector",
    VectorStoreQueryMode.MMR: "vector",
    VectorStoreQueryMode.HYBRID: "hybrid",
    VectorStoreQueryMode.TEXT_SEARCH: "text",
}


def _like(text: str) -> str:
    """A substring as an SQL LIKE pattern: its own %, _ and \\ made literal."""
    return "%" + text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"


def metadata_filters(filters: MetadataFilters | None) -> dict | None:
    """LlamaIndex ``MetadataFilters`` in the app's filter language (``vectorstore.search.filters``).

    ``==  != > >= < <= in nin contains`` map one to one; ``any`` / ``all`` are an ``$or`` / ``$and`` of
    ``$contains``; ``text_match`` / ``text_match_insensitive`` a ``$like`` / ``$ilike`` of the substring;
    conditions and, or, not (none of them) nest. ``is_empty`` (missing, null, "" or []) has no
    translation the app's filters express exactly, and is refused by name.
    """
    if filters is None or not filters.filters:
        return None
    parts = []
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            nested = metadata_filters(item)
            if nested is not None:
                parts.append(nested)
            continue
        parts.append(_one_filter(item))
    return {_CONDITIONS[FilterCondition(filters.condition or FilterCondition.AND)]: parts}


def _one_filter(item: MetadataFilter) -> dict:
    operator = FilterOperator(item.operator)
    key, value = item.key, item.value
    if operator in _COMPARISONS:
        return {key: {_COMPARISONS[operator]: value}}
    if operator in (FilterOperator.ANY, FilterOperator.ALL):
        values = value if isinstance(value, list) else [value]
        joined = "$or" if operator == FilterOperator.ANY else "$and"
        return {joined: [{key: {"$contains": v}} for v in values]}
    if operator in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        if not isinstance(value, str):
            raise ValueError(f"filters.{key}: {operator.value} needs a string")
        like = "$like" if operator == FilterOperator.TEXT_MATCH else "$ilike"
        return {key: {like: _like(value)}}
    raise ValueError(
        f"filters.{key}: the operator {operator.value!r} has no translation to this store's filters"
        " (missing, null, empty string and empty list at once); use $exists or == instead"
    )


def _alpha_weights(alpha: Any) -> dict[str, float]:
    """LlamaIndex's ``alpha`` (1: vector search alone, 0: text alone) as the fusion's weights against the
    vector ranking's 1: a text match holding every word weighs (1 - alpha) / alpha, at most the
    fusion's 10 (alpha 1 is vector search alone)."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError("alpha: must be a number from 0 to 1")
    weight = min(10.0, (1 - alpha) / alpha) if alpha > 0 else 10.0
    return {"text_weight": weight}


class ModelEmbedding(BaseEmbedding):
    """LlamaIndex's ``BaseEmbedding`` over a document model's own sentence-transformers model."""

    _document_model: Any = PrivateAttr()

    def __init__(self, model: type[models.Model] | None = None, **kwargs: Any) -> None:
        name = getattr(model, "embedding_model", None) or conf.model_name() or "all-MiniLM-L6-v2 (bundled)"
        super().__init__(model_name=name, **kwargs)
        self._document_model = model or conf.document_model()

    @classmethod
    def class_name(cls) -> str:
        return "VectorstoreModelEmbedding"

    def _encode(self, texts: list[str]) -> list[list[float]]:
        from vectorstore.reembed import record  # torch only when a text is embedded

        return record.embedder(self._document_model).encode(texts).tolist()

    def _get_query_embedding(self, query: str) -> list[float]:
        return search.embed_query(query, self._document_model).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._encode([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._encode(texts)


class DjangoVectorStore(BasePydanticVectorStore):
    """A LlamaIndex vector store over any ``AbstractDocument`` model (nodes carry their embeddings, as
    LlamaIndex's indexes give them)."""

    stores_text: bool = True
    flat_metadata: bool = False
    using: str | None = None
    metric: str | None = None
    _document_model: Any = PrivateAttr()

    def __init__(
        self,
        model: type[models.Model] | None = None,
        *,
        using: str | None = None,
        metric: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(using=using, metric=metric or conf.distance(), **kwargs)
        self._document_model = model or conf.document_model()

    @classmethod
    def class_name(cls) -> str:
        return "DjangoVectorStore"

    @property
    def client(self) -> type[models.Model]:
        """The document model (its manager is the client)."""
        return self._document_model

    # Writes

    def add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Add or replace (by node id) the nodes, in one transaction; their ids."""
        rows = checked_rows(
            [node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes],
            [
                node_to_metadata_dict(node, remove_text=True, flat_metadata=self.flat_metadata)
                for node in nodes
            ],
            [node.node_id for node in nodes],
        )
        vectors = []
        for i, node in enumerate(nodes):
            if node.embedding is None:
                raise ValueError(f"document {i} ({node.node_id}): embedding: the node has none")
            vectors.append(node.embedding)
        return write_rows(self._document_model, rows, vectors, self.using)

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of one source document."""
        self._delete(self._manager(write=True).filter(metadata__contains={"ref_doc_id": ref_doc_id}))

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete the nodes with these ids and/or matching these filters (neither: none)."""
        if node_ids is None and filters is None:
            return
        self._delete(self._selected(node_ids, filters, write=True))

    def clear(self) -> None:
        """Delete every row of the model's table (the store is the whole table)."""
        self._delete(self._manager(write=True).all())

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """The stored nodes with these ids and/or matching these filters, with their embeddings."""
        rows = self._selected(node_ids, filters).values_list("text", "metadata", "embedding")
        nodes = []
        for text, metadata, embedding in rows:
            node = metadata_dict_to_node(metadata, text=text)
            node.embedding = [float(x) for x in embedding]
            nodes.append(node)
        return nodes

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """The ``similarity_top_k`` best nodes for the query; similarities are the app's scores (higher
        is nearer: the cosine similarity for cosine)."""
        mode = _MODES.get(VectorStoreQueryMode(query.mode))
        if mode is None:
            raise ValueError(f"mode: {query.mode!r} is not served here (default, mmr, hybrid, text_search)")
        wanted = [metadata_filters(query.filters)]
        if query.doc_ids:
            wanted.append({"ref_doc_id": {"$in": list(query.doc_ids)}})
        if query.node_ids:
            wanted.append({"external_id": {"$in": list(query.node_ids)}})
        wanted = [w for w in wanted if w]
        options: dict[str, Any] = dict(kwargs)
        if mode == "hybrid" and query.alpha is not None:
            options["hybrid"] = {**_alpha_weights(query.alpha), **options.get("hybrid", {})}
        if query.mode == VectorStoreQueryMode.MMR:
            lambda_mult = query.mmr_threshold if query.mmr_threshold is not None else 0.5
            options["mmr"] = {"lambda_mult": lambda_mult, **options.get("mmr", {})}
        try:
            result = search.search(
                query.query_str if mode != "vector" or query.query_embedding is None else None,
                vector=query.query_embedding if mode != "text" else None,
                k=query.similarity_top_k,
                filters={"$and": wanted} if len(wanted) > 1 else (wanted[0] if wanted else None),
                mode=mode,
                metric=self.metric,
                queryset=self._document_model._default_manager.all(),
                using=self.using,
                **options,
            )
        except SearchError as exc:
            raise ValueError(str(exc)) from None
        nodes, similarities, ids = [], [], []
        for hit in result.hits:
            node = metadata_dict_to_node(hit.values["metadata"], text=hit.values["text"])
            if hit.passage is not None:  # a model that keeps passages: the one that matched
                node.metadata["passage"] = hit.passage
            nodes.append(node)
            similarities.append(hit.score)
            ids.append(hit.values["external_id"])
        return VectorStoreQueryResult(nodes=nodes, similarities=similarities, ids=ids)

    # The async forms: the same code on Django's thread for sync code.

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        return await sync_to_async(self.add, thread_sensitive=True)(nodes, **kwargs)

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        await sync_to_async(self.delete, thread_sensitive=True)(ref_doc_id, **delete_kwargs)

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        await sync_to_async(self.delete_nodes, thread_sensitive=True)(node_ids, filters, **delete_kwargs)

    async def aclear(self) -> None:
        await sync_to_async(self.clear, thread_sensitive=True)()

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        return await sync_to_async(self.get_nodes, thread_sensitive=True)(node_ids, filters)

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        return await sync_to_async(self.query, thread_sensitive=True)(query, **kwargs)

    # The parts

    def _manager(self, write: bool = False) -> models.Manager:
        model = self._document_model
        db = write_db(model, self.using) if write else self.using
        return model._default_manager.db_manager(db) if db else model._default_manager

    def _selected(
        self, node_ids: list[str] | None, filters: MetadataFilters | None, write: bool = False
    ) -> models.QuerySet:
        rows = self._manager(write).all()
        if node_ids is not None:
            rows = rows.filter(external_id__in=list(node_ids))
        translated = metadata_filters(filters)
        if translated:
            try:
                rows = rows.filter(build_filter(translated))
            except SearchError as exc:
                raise ValueError(str(exc)) from None
        return rows

    def _delete(self, rows: models.QuerySet) -> None:
        with transaction.atomic(using=rows.db):
            rows.delete()
