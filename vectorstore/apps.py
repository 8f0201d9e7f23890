from django.apps import AppConfig
from django.db.models.signals import post_migrate, pre_migrate


def _vector_extension(sender, using: str = "default", **kwargs) -> None:
    """Before any migration: the pgvector extension, so that a host app's first migration, which
    makemigrations writes without a dependency on vectorstore's, can create its vector column on a
    fresh database whatever the order the apps migrate in. A role that may not create extensions
    leaves it to vectorstore's 0001 migration (and its clear error) or to the database's owner."""
    from django.db import DatabaseError, connections

    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'")
            if cursor.fetchone() is None:
                cursor.execute("CREATE EXTENSION IF NOT EXISTS vector")
    except DatabaseError:
        if connection.in_atomic_block:  # the failed statement broke the caller's transaction: say so
            raise
        # Not allowed to create it: vectorstore's 0001 migration will say what is missing.


def _declared_key_indexes(sender, using: str = "default", **kwargs) -> None:
    """After migrate: the declared metadata keys' indexes on the document table (metadata_keys)."""
    from vectorstore import metadata_keys

    metadata_keys.ensure_indexes(using=using)


class VectorstoreConfig(AppConfig):
    name = "vectorstore"
    verbose_name = "Vector store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from vectorstore import checks  # noqa: F401  (registers the system checks)

        pre_migrate.connect(_vector_extension, sender=self, dispatch_uid="vectorstore.vector_extension")
        post_migrate.connect(_declared_key_indexes, sender=self, dispatch_uid="vectorstore.metadata_keys")
