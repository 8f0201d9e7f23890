from django.apps import AppConfig


class VectorstoreConfig(AppConfig):
    name = "vectorstore"
    verbose_name = "Vector store"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from vectorstore import checks  # noqa: F401  (registers the system checks)
