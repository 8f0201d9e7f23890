"""LangChain over a Django document model: ``DjangoVectorStore`` and ``ModelEmbeddings``
(``pip install vectorstore[langchain]``, which pulls ``langchain-core`` only).

    from vectorstore.integrations.langchain import DjangoVectorStore

    store = DjangoVectorStore(Article)  # embeds with Article's own model
    retriever = store.as_retriever(search_kwargs={"k": 5, "filter": {"category": "news"}})

The store's table is the site's model: its migrations, admin, replicas and filters hold. A LangChain
document's ``id`` is the row's ``external_id``, its ``metadata`` the row's ``metadata``; a metadata key
that names one of the model's own fields (``category``, ``created_at``, a host field) fills that field
too, so the model's validation and filters apply. Searches run through ``vectorstore.search``: the
planned filtered path, hybrid (``mode="hybrid"``), MMR, tuned index settings. Scores from
``similarity_search_with_score`` are distances (lower is nearer), as langchain-postgres gives them.

The async methods run the same code through ``sync_to_async(thread_sensitive=True)``, which is what
Django's own async ORM calls do; one call for a whole write keeps it one transaction, which a chain of
async ORM calls cannot be (``transaction.atomic`` does not work in async code). LangChain's default
executor would run them in arbitrary threads, each opening its own database connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from asgiref.sync import sync_to_async
from django.db import models, transaction
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from vectorstore import conf, search
from vectorstore.integrations.common import checked_rows, write_db, write_rows


def _with_mmr(options: dict[str, Any], k: int, fetch_k: int, lambda_mult: float) -> dict[str, Any]:
    """The search options with the app's MMR: k among the fetch_k nearest (at least k)."""
    return {**options, "mmr": {"fetch_k": max(fetch_k, k), "lambda_mult": lambda_mult}}


class ModelEmbeddings(Embeddings):
    """LangChain ``Embeddings`` over a document model's own sentence-transformers model (``Embedder``)."""

    def __init__(self, model: type[models.Model] | None = None) -> None:
        self.model = model or conf.document_model()

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        from vectorstore.reembed import record  # torch only when a text is embedded

        return record.embedder(self.model).encode(texts).tolist()

    def embed_query(self, text: str) -> list[float]:
        return search.embed_query(text, self.model).tolist()


class DjangoVectorStore(VectorStore):
    """A LangChain ``VectorStore`` over any ``AbstractDocument`` model.

    ``embedding``: any LangChain ``Embeddings`` (default: the model's own, ``ModelEmbeddings``), for a
    model whose ``embedding_model`` is no sentence-transformers one. ``using``: the database alias
    (default: the router's choice). ``metric``: cosine, l2 or inner_product (default: the setting).
    ``metadata_fields``: model fields returned in each document's metadata beside the stored metadata
    (for rows the site wrote itself).
    """

    def __init__(
        self,
        model: type[models.Model] | None = None,
        *,
        embedding: Embeddings | None = None,
        using: str | None = None,
        metric: str | None = None,
        metadata_fields: Sequence[str] = (),
    ) -> None:
        self.model = model or conf.document_model()
        self._embedding = embedding
        self.using = using
        self.metric = metric or conf.distance()
        self.metadata_fields = tuple(metadata_fields)
        for name in self.metadata_fields:
            self.model._meta.get_field(name)  # FieldDoesNotExist names a wrong one now, not at a search

    @property
    def embeddings(self) -> Embeddings:
        return self._embedding or ModelEmbeddings(self.model)

    # Writes

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Add or replace (by id) the texts, embedded in one batch and written in one transaction; the
        ids in order (a uuid4 for each one not given)."""
        texts = list(texts)
        rows = checked_rows(texts, metadatas, ids)
        vectors = self.embeddings.embed_documents(texts) if texts else []
        return write_rows(self.model, rows, vectors, self.using)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        texts = list(texts)
        rows = checked_rows(texts, metadatas, ids)
        vectors = await self.embeddings.aembed_documents(texts) if texts else []
        return await sync_to_async(write_rows, thread_sensitive=True)(self.model, rows, vectors, self.using)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        """Delete the documents with these ids (unknown ids are no error). Never all: on a site's own
        table that is ``Model.objects.all().delete()``, said explicitly."""
        if ids is None:
            raise ValueError("ids: give the ids to delete (this store never empties the table by itself)")
        db = write_db(self.model, self.using)
        with transaction.atomic(using=db):
            self.model._default_manager.db_manager(db).filter(external_id__in=list(ids)).delete()
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool | None:
        return await sync_to_async(self.delete, thread_sensitive=True)(ids, **kwargs)

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """The stored documents with these ids, in the order asked (unknown ids left out)."""
        fields = self._fields()
        rows = self.model._default_manager.db_manager(self.using).filter(external_id__in=list(ids))
        found = {row["external_id"]: self._document(row) for row in rows.values(*fields)}
        return [found[i] for i in dict.fromkeys(ids) if i in found]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        return await sync_to_async(self.get_by_ids, thread_sensitive=True)(ids)

    # Searches

    def similarity_search(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score(query, k, filter, **kwargs)]

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """The k nearest documents and their distances. ``mode="hybrid"`` (and ``hybrid={...}``) fuses
        full-text search in; other keywords go to ``vectorstore.search.search`` (``ef_search``, ...)."""
        return self._search(query, None, k, filter, kwargs)

    def similarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in self.similarity_search_with_score_by_vector(embedding, k, filter, **kwargs)]

    def similarity_search_with_score_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return self._search(None, embedding, k, filter, kwargs)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """k documents by maximal marginal relevance among the fetch_k nearest (the app's MMR)."""
        options = _with_mmr(kwargs, k, fetch_k, lambda_mult)
        return [doc for doc, _ in self._search(query, None, k, filter, options)]

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        options = _with_mmr(kwargs, k, fetch_k, lambda_mult)
        return [doc for doc, _ in self._search(None, embedding, k, filter, options)]

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in await self.asimilarity_search_with_score(query, k, filter, **kwargs)]

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        return await self._asearch(query, None, k, filter, kwargs)

    async def asimilarity_search_by_vector(
        self, embedding: list[float], k: int = 4, filter: dict | None = None, **kwargs: Any
    ) -> list[Document]:
        return [doc for doc, _ in await self._asearch(None, embedding, k, filter, kwargs)]

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        options = _with_mmr(kwargs, k, fetch_k, lambda_mult)
        return [doc for doc, _ in await self._asearch(query, None, k, filter, options)]

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings | None,
        metadatas: list[dict] | None = None,
        *,
        ids: list[str] | None = None,
        model: type[models.Model] | None = None,
        **kwargs: Any,
    ) -> DjangoVectorStore:
        store = cls(model, embedding=embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        return {
            "cosine": self._cosine_relevance_score_fn,
            "l2": self._euclidean_relevance_score_fn,
            "inner_product": self._max_inner_product_relevance_score_fn,
        }[self.metric]

    # The parts

    def _fields(self) -> list[str]:
        return ["external_id", "text", "metadata", *self.metadata_fields]

    def _document(self, values: dict[str, Any], passage: dict[str, Any] | None = None) -> Document:
        metadata = dict(values.get("metadata") or {})
        for name in self.metadata_fields:
            metadata.setdefault(name, values[self.model._meta.get_field(name).attname])
        if passage is not None:  # a model that keeps passages: the one that matched (ordinal, span, text)
            metadata["passage"] = passage
        return Document(page_content=values["text"], metadata=metadata, id=values.get("external_id"))

    async def _asearch(
        self,
        query: str | None,
        vector: Sequence[float] | None,
        k: int,
        filters: dict | None,
        options: dict[str, Any],
    ) -> list[tuple[Document, float]]:
        """``_search`` on Django's thread for sync code, the query embedded by the async Embeddings."""
        if query is not None and vector is None and self._embedding is not None:
            vector = await self._embedding.aembed_query(query)
        return await sync_to_async(self._search, thread_sensitive=True)(query, vector, k, filters, options)

    def _search(
        self,
        query: str | None,
        vector: Sequence[float] | None,
        k: int,
        filters: dict | None,
        options: dict[str, Any],
    ) -> list[tuple[Document, float]]:
        if query is not None and vector is None and self._embedding is not None:
            vector = self._embedding.embed_query(query)
        mode = options.pop("mode", "vector")
        # The model's own embedder: search() embeds the text (cached). Another one: the vector, and the
        # text only where hybrid needs it.
        text = query if (vector is None or mode != "vector") else None
        queryset = options.pop("queryset", None)
        queryset = queryset if queryset is not None else self.model._default_manager.all()
        result = search.search(
            text,
            vector=vector,
            k=k,
            filters=filters or None,
            mode=mode,
            metric=self.metric,
            queryset=queryset,
            using=self.using,
            **options,
        )
        return [(self._document(hit.values, hit.passage), hit.distance) for hit in result.hits]
