"""A host site's own document model, with its own dimension: what a user of the app would write."""

from pgvector.django import VectorField

from vectorstore.models import AbstractDocument


class HostDocument(AbstractDocument):
    embedding = VectorField(dimensions=8)

    class Meta(AbstractDocument.Meta):
        pass
