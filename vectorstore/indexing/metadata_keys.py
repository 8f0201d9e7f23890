"""Declared metadata keys: typed B-tree expression indexes, so range filters on a metadata key are indexed.

    VECTORSTORE = {"METADATA_KEYS": {"year": "int", "price": "float", "lang": "text"}}

Equality and ``$in`` on any metadata key are containment (``metadata @> '{"key": value}'``), which the
GIN index on ``metadata`` serves. A range (``$lt $lte $gt $gte``) the GIN index cannot serve; on a
declared key it compares an expression that a B-tree index holds:

- ``int``, ``float``, ``number``: ``CASE WHEN jsonb_typeof(metadata -> 'year') = 'number'
  THEN (metadata ->> 'year')::numeric END`` (numbers only, as every range compares like with like);
- ``text``: ``CASE WHEN jsonb_typeof(metadata -> 'lang') = 'string' THEN metadata ->> 'lang' END``.

The CASE keeps a document whose value has another type (or no value) out of the index instead of
failing its insert. ``migrate`` creates the declared keys' indexes (post_migrate);
``manage.py index_metadata`` creates them on a live table with CREATE INDEX CONCURRENTLY.
"""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

from django.db import connections, models
from django.db.models import Case, Func, Value, When
from django.db.models.lookups import Exact

from vectorstore import conf

# A declared type, and the JSON type its values have.
TYPES = {"int": "number", "float": "number", "number": "number", "text": "string"}


def declared() -> dict[str, str]:
    """The declared keys and their JSON types ("number" or "string")."""
    return {key: TYPES[kind] for key, kind in (conf.get("METADATA_KEYS") or {}).items() if kind in TYPES}


class _Key(Func):
    """``metadata -> 'key'`` with the key a literal of the expression (an index must spell it so)."""

    template = "(%(expressions)s -> %(key)s)"
    output_field = models.JSONField()

    def __init__(self, key: str) -> None:
        super().__init__(models.F("metadata"), key=_quote(key))


class _Numeric(Func):
    template = "(%(expressions)s)::numeric"
    output_field = models.DecimalField()


def _quote(key: str) -> str:
    # A SQL string literal: the key is stored in the index definition, where no parameter can be.
    # PostgreSQL's standard_conforming_strings (on since 9.1) makes doubling quotes the only escape.
    return "'" + key.replace("'", "''") + "'"


class _TypeOf(Func):
    function = "jsonb_typeof"
    output_field = models.TextField()


def expression(key: str, json_type: str) -> Case:
    """The typed value of a metadata key, NULL when the value has another type."""
    text = Func(
        models.F("metadata"), template=f"(%(expressions)s ->> {_quote(key)})", output_field=models.TextField()
    )
    value = _Numeric(text) if json_type == "number" else text
    return Case(
        When(Exact(_TypeOf(_Key(key)), Value(json_type)), then=value),
        output_field=models.DecimalField() if json_type == "number" else models.TextField(),
    )


def comparable(json_type: str, value: Any) -> Any | None:
    """The filter's value as the expression compares it (numeric as Decimal, so that the comparison
    stays numeric and the index matches), or None when the value's type is not the key's."""
    if json_type == "number" and isinstance(value, int | float) and not isinstance(value, bool):
        return Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    if json_type == "string" and isinstance(value, str):
        return value
    return None


def index_name(table: str, key: str, json_type: str) -> str:
    digest = hashlib.sha1(f"{table}\0{key}\0{json_type}".encode()).hexdigest()[:10]
    return f"{table[:40]}_meta_{digest}"


def indexes_for(model: type[models.Model]) -> list[models.Index]:
    """The expression indexes the declared keys need on ``model``'s table."""
    table = model._meta.db_table
    return [
        models.Index(expression(key, json_type), name=index_name(table, key, json_type))
        for key, json_type in declared().items()
    ]


def ensure_indexes(
    model: type[models.Model] | None = None, *, using: str = "default", concurrently: bool = False
) -> list[str]:
    """Create the declared keys' indexes that the table lacks; their names."""
    model = model or conf.document_model()
    connection = connections[using]
    with connection.cursor() as cursor:
        existing = set(
            connection.introspection.get_constraints(cursor, model._meta.db_table)
            if model._meta.db_table in connection.introspection.table_names(cursor)
            else ()
        )
    if not existing:
        return []
    created = []
    for index in indexes_for(model):
        if index.name in existing:
            continue
        with connection.schema_editor(atomic=not concurrently) as editor:
            editor.add_index(model, index, concurrently=concurrently)
        created.append(index.name)
    return created
