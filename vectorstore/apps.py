from django.apps import AppConfig
from django.db.models.signals import post_migrate


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

        post_migrate.connect(_declared_key_indexes, sender=self, dispatch_uid="vectorstore.metadata_keys")
