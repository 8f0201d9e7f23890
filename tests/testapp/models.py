"""A host site's own document model, with its own dimension: what a user of the app would write."""

from django.db import models
from pgvector.django import VectorField

from vectorstore.models import AbstractDocument


class HostDocument(AbstractDocument):
    embedding = VectorField(dimensions=8)

    class Meta(AbstractDocument.Meta):
        pass


class LongArticle(AbstractDocument):
    """A host's model of long texts that keeps passages (one option and a migration)."""

    keep_passages = True
    title = models.CharField(max_length=200, blank=True, default="")

    class Meta(AbstractDocument.Meta):
        pass


class ChainDocument(AbstractDocument):
    """The LangChain and LlamaIndex adapters' test model: the frameworks' fake embeddings' size, and
    fields of its own that a metadata key can fill (and the model's validation can refuse)."""

    embedding = VectorField(dimensions=6)
    source = models.CharField(max_length=20, blank=True, default="")
    rating = models.IntegerField(null=True, blank=True)

    class Meta(AbstractDocument.Meta):
        pass
