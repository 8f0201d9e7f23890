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
    from vectorstore.indexing import metadata_keys

    metadata_keys.ensure_indexes(using=using)


def _vector_storage(sender, using: str = "default", **kwargs) -> None:
    """After migrate: every document table keeps its vectors in the row (STORAGE MAIN), not in TOAST.

    pgvector's types default to EXTERNAL storage, so a row of text, tsvector and a 384-dimension vector
    (over PostgreSQL's 2 kB toast threshold) has its vector moved out of line, and every distance the
    executor computes from the heap (a quantized index's re-rank, an exact filtered search, the hits'
    distances) first fetches it from the TOAST table. MAIN keeps it inline, moving the texts out first,
    and still moves it out as a last resort. A column set to anything else by hand is left as it is;
    rows already stored keep their layout until rewritten."""
    from django.apps import apps
    from django.db import connections

    from vectorstore.models import AbstractDocument

    connection = connections[using]
    if connection.vendor != "postgresql":
        return
    with connection.cursor() as cursor:
        for model in apps.get_models():
            if not issubclass(model, AbstractDocument) or model._meta.proxy or not model._meta.managed:
                continue
            column = model._meta.get_field("embedding").column
            cursor.execute(
                "SELECT attstorage FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s",
                [connection.ops.quote_name(model._meta.db_table), column],
            )
            row = cursor.fetchone()
            if row and row[0] == "e":  # pgvector's default, EXTERNAL
                cursor.execute(
                    f"ALTER TABLE {connection.ops.quote_name(model._meta.db_table)}"
                    f" ALTER COLUMN {connection.ops.quote_name(column)} SET STORAGE MAIN"
                )


def _record_models(sender, using: str = "default", **kwargs) -> None:
    """After migrate: a document table that holds vectors and no record of their model (made before
    records were kept) records the configured one (``vectorstore.reembed.record``)."""
    from django.apps import apps
    from django.db import connections

    from vectorstore.models import AbstractDocument
    from vectorstore.reembed import record

    if connections[using].vendor != "postgresql":
        return
    tables = set(connections[using].introspection.table_names())
    for model in apps.get_models():
        document = issubclass(model, AbstractDocument) and not model._meta.proxy and model._meta.managed
        if document and model._meta.db_table in tables:
            record.ensure(model, using)


class VectorstoreConfig(AppConfig):
    name = "vectorstore"
    verbose_name = "Vector store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from vectorstore import checks  # noqa: F401  (registers the system checks)
        from vectorstore.search import query_log
        from vectorstore.tuning import autotune

        if autotune.after_flush not in query_log.after_flush:
            query_log.after_flush.append(autotune.after_flush)

        pre_migrate.connect(_vector_extension, sender=self, dispatch_uid="vectorstore.vector_extension")
        post_migrate.connect(_declared_key_indexes, sender=self, dispatch_uid="vectorstore.metadata_keys")
        post_migrate.connect(_vector_storage, sender=self, dispatch_uid="vectorstore.vector_storage")
        post_migrate.connect(_record_models, sender=self, dispatch_uid="vectorstore.record_models")
