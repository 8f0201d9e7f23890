"""The search helpers on every document model's manager and querysets: ``Model.objects.nearest(...)``.

Document.objects.filter(category="Whig").nearest("tariffs on imported goods", k=5)
Document.objects.similar_to(document, k=10)
Document.objects.order_by_distance(vector)[:20]
await Document.objects.anearest("tariffs on imported goods", k=5)  # async code: asearch()
"""

from __future__ import annotations

from typing import Any

from django.db import models

from vectorstore.search import METRICS, asearch, asimilar, search, similar


class DocumentQuerySet(models.QuerySet):
    """Search helpers on any AbstractDocument subclass's manager and querysets."""

    def nearest(self, query: Any, k: int = 10, **kwargs: Any) -> list:
        """The k documents nearest a text or a vector, within this queryset; each has ``.distance``.

        Takes the options of ``vectorstore.search.search`` (filters, metric, mode, ef_search, ...).
        """
        if isinstance(query, str):
            result = search(query, k=k, queryset=self, **kwargs)
        else:
            result = search(vector=query, k=k, queryset=self, **kwargs)
        return [hit.document for hit in result.hits]

    def similar_to(self, document: models.Model, k: int = 10, **kwargs: Any) -> list:
        """The k documents nearest a stored one, itself left out."""
        return [hit.document for hit in similar(document, k, queryset=self, **kwargs).hits]

    async def anearest(self, query: Any, k: int = 10, **kwargs: Any) -> list:
        """``nearest()`` for async code (``vectorstore.search.asearch``): the same documents, the search
        sent on a pooled async connection. Their vectors are deferred: ``await doc.arefresh_from_db()``."""
        if isinstance(query, str):
            result = await asearch(query, k=k, queryset=self, **kwargs)
        else:
            result = await asearch(vector=query, k=k, queryset=self, **kwargs)
        return [hit.document for hit in result.hits]

    async def asimilar_to(self, document: models.Model, k: int = 10, **kwargs: Any) -> list:
        """``similar_to()`` for async code; the document's vector must be loaded."""
        return [hit.document for hit in (await asimilar(document, k, queryset=self, **kwargs)).hits]

    def order_by_distance(self, vector: Any, metric: str = "cosine") -> models.QuerySet:
        """A lazy queryset annotated with ``distance`` and ordered by it, to slice and compose."""
        return self.annotate(distance=METRICS[metric]("embedding", vector)).order_by("distance")


DocumentManager = models.Manager.from_queryset(DocumentQuerySet)
