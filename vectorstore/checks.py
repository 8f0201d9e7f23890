"""System checks: catch misconfiguration at start-up, with the fix in the message."""

from __future__ import annotations

from typing import Any

from django.apps import apps
from django.core.checks import Error, Tags, Warning, register
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, connections

from vectorstore import conf
from vectorstore.limits import DEVICES, EMBED_ON_SAVE, ITERATIVE_SCANS, MAX_DIMENSIONS, METRICS
from vectorstore.models import AbstractDocument


def _document_models() -> list[type]:
    return [
        m
        for m in apps.get_models()
        if issubclass(m, AbstractDocument) and not m._meta.swapped and m._meta.managed
    ]


@register()
def check_installed_apps(app_configs=None, **kwargs) -> list:
    if apps.is_installed("django.contrib.postgres"):
        return []
    return [
        Error(
            "vectorstore needs 'django.contrib.postgres' in INSTALLED_APPS.",
            hint="Add 'django.contrib.postgres' to INSTALLED_APPS (full-text search and GIN indexes use it).",
            id="vectorstore.E001",
        )
    ]


@register()
def check_settings(app_configs=None, **kwargs) -> list:
    errors: list = []
    unknown = sorted(set(conf.user_settings()) - set(conf.DEFAULTS))
    if unknown:
        errors.append(
            Warning(
                f"Unknown VECTORSTORE setting(s): {', '.join(unknown)}.",
                hint=f"Known settings: {', '.join(conf.DEFAULTS)}.",
                id="vectorstore.W001",
            )
        )
    dims = conf.dimensions()
    if not isinstance(dims, int) or isinstance(dims, bool) or not 1 <= dims <= MAX_DIMENSIONS:
        errors.append(
            Error(
                f"VECTORSTORE['DIMENSIONS'] must be an integer from 1 to {MAX_DIMENSIONS}, not {dims!r}.",
                id="vectorstore.E002",
            )
        )
    for name, low in (("SEARCH_TIMEOUT_MS", 1), ("EXACT_SEARCH_ROWS", 0), ("EF_SEARCH", 1)):
        value = conf.get(name)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            errors.append(
                Error(
                    f"VECTORSTORE['{name}'] must be an integer of at least {low}, not {value!r}.",
                    id="vectorstore.E012",
                )
            )
    keys = conf.get("METADATA_KEYS")
    from vectorstore.indexing.metadata_keys import TYPES

    if not isinstance(keys, dict) or any(
        not isinstance(k, str) or not k or v not in TYPES for k, v in keys.items()
    ):
        errors.append(
            Error(
                f"VECTORSTORE['METADATA_KEYS'] is {keys!r}; expected a dict of metadata keys to one of "
                f"{', '.join(TYPES)}.",
                id="vectorstore.E013",
            )
        )
    for name, allowed in (
        ("DISTANCE", METRICS),
        ("DEVICE", DEVICES),
        ("ITERATIVE_SCAN", ITERATIVE_SCANS),
        ("EMBED_ON_SAVE", EMBED_ON_SAVE),
    ):
        value = conf.get(name)
        # A device may name one GPU, as torch does: "cuda:1".
        base = value.split(":")[0] if name == "DEVICE" and isinstance(value, str) else value
        if base not in allowed:
            errors.append(
                Error(
                    f"VECTORSTORE['{name}'] is {value!r}; expected one of {', '.join(allowed)}.",
                    id="vectorstore.E003",
                )
            )
    try:
        model = conf.document_model()
    except ImproperlyConfigured as exc:
        errors.append(
            Error(
                str(exc),
                hint="Name an installed subclass of AbstractDocument, as 'app_label.Model'.",
                id="vectorstore.E004",
            )
        )
        return errors
    field_dims = model._meta.get_field("embedding").dimensions
    if isinstance(dims, int) and field_dims != dims:
        errors.append(
            Error(
                f"VECTORSTORE['DIMENSIONS'] is {dims} but {model._meta.label}.embedding "
                f"is vector({field_dims}).",
                hint="Set DIMENSIONS to the embedding model's dimension, and give the document model a "
                "VectorField of that dimension (a subclass of AbstractDocument, named in DOCUMENT_MODEL).",
                obj=model,
                id="vectorstore.E010",
            )
        )
    return errors


@register()
def check_embedding_models(app_configs=None, **kwargs) -> list:
    """Each document model's embedding model makes vectors of its field's size.

    Checked for the configured document model (the API, the admin and the commands embed with it) and
    for any model that names its own ``embedding_model``; the size is read from a local model's files,
    so a hub name not on this disk is checked when it first loads instead.
    """
    from vectorstore.embedding import declared_dimension

    errors: list = []
    try:
        configured = conf.document_model()
    except ImproperlyConfigured:
        configured = None  # E004 says so
    for model in _document_models():
        if conf.embed_on_save() == "deferred" and not model._meta.get_field("embedding").null:
            errors.append(
                Error(
                    f"VECTORSTORE['EMBED_ON_SAVE'] is 'deferred' but {model._meta.label}.embedding is NOT "
                    "NULL: a text saved before the worker embeds it has no vector to write.",
                    hint="Declare the field VectorField(dimensions=..., null=True, blank=True), then "
                    "makemigrations and migrate.",
                    obj=model,
                    id="vectorstore.E015",
                )
            )
        name = model.embedding_model
        if name is not None and not isinstance(name, str):
            errors.append(
                Error(
                    f"{model._meta.label}.embedding_model is {name!r}; expected a model name or path, "
                    "or None for VECTORSTORE['MODEL'].",
                    obj=model,
                    id="vectorstore.E014",
                )
            )
            continue
        if name is None and model is not configured:
            continue  # never embedded by the app unless saved without a vector: checked at that save
        name = name if name is not None else conf.model_name()
        size = declared_dimension(name)
        field_dims = model._meta.get_field("embedding").dimensions
        if size is not None and size != field_dims:
            source = (
                f"{model._meta.label}.embedding_model" if model.embedding_model else "VECTORSTORE['MODEL']"
            )
            errors.append(
                Error(
                    f"{source} ({name or 'the bundled all-MiniLM-L6-v2'}) makes {size}-dimensional vectors "
                    f"but {model._meta.label}.embedding is vector({field_dims}).",
                    hint="Give the field the model's dimension (then makemigrations and migrate), or name a "
                    "model of the field's dimension in the class's embedding_model.",
                    obj=model,
                    id="vectorstore.E014",
                )
            )
    return errors


@register(Tags.database)
def check_vector_columns(app_configs=None, databases=None, **kwargs) -> list:
    """Each document table's vector column in the database has its field's dimension.

    Runs with ``migrate`` and ``check --database default``, as database checks do.
    """
    errors: list = []
    for alias in databases or []:
        connection = connections[alias]
        if connection.vendor != "postgresql":
            errors.append(
                Error(
                    f"Database '{alias}' is {connection.vendor}; vectorstore needs PostgreSQL with pgvector.",
                    id="vectorstore.E020",
                )
            )
            continue
        with connection.cursor() as cursor:
            for model in _document_models():
                field = model._meta.get_field("embedding")
                # atttypmod holds a vector column's dimension (-1 when undeclared).
                cursor.execute(
                    "SELECT a.atttypmod, format_type(a.atttypid, a.atttypmod)"
                    " FROM pg_attribute a WHERE a.attrelid = to_regclass(%s) AND a.attname = %s"
                    " AND NOT a.attisdropped",
                    [connection.ops.quote_name(model._meta.db_table), field.column],
                )
                row = cursor.fetchone()
                if row is None:
                    continue  # not migrated yet: migrate will create it with the field's dimension
                typmod, column_type = row
                recorded = _recorded(model, alias)
                if recorded is not None:
                    errors += _model_warnings(model, field, typmod, recorded)
                    if typmod == recorded.dimensions:
                        continue  # a move of reembed's, said by the warnings above
                if typmod != field.dimensions:
                    errors.append(
                        Error(
                            f"{model._meta.label}.embedding is vector({field.dimensions}) but the column "
                            f"{model._meta.db_table}.{field.column} in database '{alias}' is {column_type}.",
                            hint="Run makemigrations and migrate, or give the field the column's dimension.",
                            obj=model,
                            id="vectorstore.E011",
                        )
                    )
    return errors


def _recorded(model: type, alias: str) -> Any:
    """The table's binding record (the model its vectors were made by), None without one."""
    from vectorstore.reembed import record

    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT to_regclass(%s) IS NOT NULL", [record.RECORD])
        if not cursor.fetchone()[0]:
            return None  # vectorstore not migrated yet
    found = record.read(model, alias)
    return None if found.adopt else found


def _model_warnings(model: type, field: Any, typmod: int, recorded: Any) -> list:
    from vectorstore.reembed import record

    out = []
    name = record.configured(model)
    if record.fingerprint(name) != recorded.fingerprint:
        out.append(
            Warning(
                f"{model._meta.db_table} holds vectors of {recorded.label} ({recorded.dimensions} "
                f"dimensions); the configured model is {record.label(name)}. Queries are embedded with "
                f"{recorded.label} until the table moves.",
                hint="Run manage.py reembed to move the table to the configured model while the site serves "
                "(docs: Changing the embedding model), or configure the table's model again.",
                obj=model,
                id="vectorstore.W050",
            )
        )
    if typmod == recorded.dimensions and typmod != field.dimensions:
        out.append(
            Warning(
                f"{model._meta.label}.embedding is vector({field.dimensions}) but the table holds "
                f"{recorded.label}'s vectors of {typmod} dimensions.",
                hint=(
                    "Run manage.py reembed first where the field is the new size"
                    if field.dimensions != typmod and record.fingerprint(name) != recorded.fingerprint
                    else f"Give the field dimensions={typmod}, then makemigrations and migrate"
                )
                + " (docs: Changing the embedding model).",
                obj=model,
                id="vectorstore.W051",
            )
        )
    return out


ROUTER = "vectorstore.replicas.routers.ReplicaRouter"
MIDDLEWARE = "vectorstore.replicas.routers.ReplicaMiddleware"


def _replica_identity(alias: str) -> tuple[bool, int]:
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery(), (SELECT system_identifier FROM pg_control_system())")
        return cursor.fetchone()


@register()
def check_replicas(app_configs=None, **kwargs) -> list:
    """VECTORSTORE["REPLICAS"] names databases that are streaming replicas of "default", routed.

    Connects to each (a replica down now is a warning: reads go to the primary until it is back; one
    that is a primary, or a replica of another cluster, is an error: its reads would answer wrongly)."""
    from django.conf import settings

    aliases = conf.replicas()
    if not aliases:
        return []
    errors: list = []
    valid = []
    for alias in aliases:
        if alias == "default" or alias not in settings.DATABASES:
            errors.append(
                Error(
                    f"VECTORSTORE['REPLICAS'] names {alias!r}, which is "
                    + ("the primary." if alias == "default" else "not in DATABASES."),
                    hint="List the DATABASES aliases of streaming replicas of 'default'.",
                    id="vectorstore.E030",
                )
            )
        else:
            valid.append(alias)
    if ROUTER not in getattr(settings, "DATABASE_ROUTERS", []):
        errors.append(
            Warning(
                f"VECTORSTORE['REPLICAS'] is set but DATABASE_ROUTERS lacks {ROUTER!r}: "
                "no read goes to them.",
                hint=f"Add {ROUTER!r} to DATABASE_ROUTERS.",
                id="vectorstore.W030",
            )
        )
    if MIDDLEWARE not in settings.MIDDLEWARE:
        errors.append(
            Warning(
                f"VECTORSTORE['REPLICAS'] is set but MIDDLEWARE lacks {MIDDLEWARE!r}: reads in GET requests "
                "stay on the primary and a client's writes are not followed by its reads.",
                hint=f"Add {MIDDLEWARE!r} to MIDDLEWARE, after SessionMiddleware.",
                id="vectorstore.W031",
            )
        )
    if not valid:
        return errors
    try:
        primary = _replica_identity("default")[1]
    except DatabaseError:  # the primary's own checks and migrate report it
        return errors
    for alias in valid:
        try:
            in_recovery, system = _replica_identity(alias)
        except DatabaseError as exc:
            errors.append(
                Warning(
                    f"Replica {alias!r} cannot be reached ({str(exc).strip().splitlines()[0]}): "
                    "reads go to the primary until it can.",
                    id="vectorstore.W032",
                )
            )
            continue
        finally:
            connections[alias].close()
        if not in_recovery:
            errors.append(
                Error(
                    f"Database {alias!r} is not in recovery: it is a primary, not a streaming replica; "
                    "reads sent there would miss the primary's writes.",
                    hint="Give DATABASE_REPLICA_URLS (VECTORSTORE['REPLICAS']) only replicas of 'default'.",
                    id="vectorstore.E031",
                )
            )
        elif system != primary:
            errors.append(
                Error(
                    f"Database {alias!r} is a replica of another cluster (system identifier {system}, "
                    f"the primary's is {primary}).",
                    hint="Give DATABASE_REPLICA_URLS (VECTORSTORE['REPLICAS']) only replicas of 'default'.",
                    id="vectorstore.E032",
                )
            )
    return errors


@register(Tags.database)
def check_embedding_backlog(app_configs=None, databases=None, **kwargs) -> list:
    """W040: stale rows wait (their text changed without their vector) and no embedding worker has run for
    WORKER_MISSING_AFTER seconds: searches answer them by their old vector until one does."""
    from django.apps import apps as registry
    from django.utils import timezone

    from vectorstore.freshness import backlog

    if not databases or "default" not in databases:
        return []
    try:
        model = conf.document_model()
        waiting = backlog(model)
        last = registry.get_model("vectorstore", "EmbedWorker").objects.order_by("-last_seen").first()
    except (ImproperlyConfigured, DatabaseError):
        return []
    if not waiting["stale"]:
        return []
    limit = conf.worker_missing_after()
    if last is not None and (timezone.now() - last.last_seen).total_seconds() <= limit:
        return []
    seen = (
        "no embedding worker has ever run"
        if last is None
        else f"the last embedding worker ran {last.last_seen:%Y-%m-%d %H:%M}"
    )
    return [
        Warning(
            f"{waiting['stale']} rows of {model._meta.db_table} have stale vectors (the oldest"
            f" {waiting['oldest_seconds'] or 0:.0f} s old) and {seen}.",
            hint="Run `manage.py embed_worker` beside the web server (or `--once` from cron, or"
            " vectorstore.freshness.worker.embed_batch from your task queue).",
            id="vectorstore.W040",
        )
    ]
