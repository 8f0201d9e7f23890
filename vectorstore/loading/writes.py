"""The one place that builds a document row: which fields a write fills, with what, and the API's writes.

Every write path (``POST /api/documents``, ``stream_sim``, ``bulk_copy``) fills the fields its input
gives, and every other field of the model with its Django default (``default=``; a field with only a
``db_default`` is left to the database, a nullable one without a default is NULL). A field that
nothing can fill is named before anything is written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from django.db import DataError, models, transaction
from django.utils import timezone

from vectorstore import conf, passages
from vectorstore.embedding import Embedder
from vectorstore.loading import pgcopy
from vectorstore.reembed import record
from vectorstore.validation import InputError

# The fields of AbstractDocument that writes fill from their input, in row order.
DOCUMENT_FIELDS = ("external_id", "text", "embedding", "category", "metadata", "created_at")


def writable_fields(model: type[models.Model]) -> dict[str, models.Field]:
    """The model's concrete fields that a write fills: not the primary key, not generated columns."""
    return {
        f.name: f
        for f in model._meta.concrete_fields
        if not f.primary_key and not isinstance(f, models.GeneratedField)
    }


def extra_fields(model: type[models.Model]) -> list[str]:
    """A host model's own writable fields, beyond AbstractDocument's (``source_url``, say)."""
    return [name for name in writable_fields(model) if name not in DOCUMENT_FIELDS]


def has_default(field: models.Field) -> bool:
    """A Django default, or a blank=True text field (which Model() fills with "", as writes do here)."""
    return field.has_default() or (field.blank and field.empty_strings_allowed and not field.null)


def db_value(field: models.Field, value: Any) -> Any:
    """A Python value as COPY and INSERT parameters take it (JSON fields as jsonb)."""
    return pgcopy.jsonb(value) if isinstance(field, models.JSONField) else value


@dataclass(frozen=True)
class FieldDefault:
    """A field no input feeds, filled with its Django default."""

    field: models.Field

    def value(self) -> Any:
        return db_value(self.field, self.field.get_default())

    def values(self, n: int) -> list[Any]:
        """n values: a callable default (uuid4, now) is called for each row, a constant is repeated."""
        if callable(self.field.default):
            return [self.value() for _ in range(n)]
        return [self.value()] * n


def unfed_defaults(model: type[models.Model], fed: set[str], where: str) -> list[FieldDefault]:
    """The defaults of the fields that ``fed`` leaves out; an InputError naming a field nothing can fill."""
    defaults = []
    for name, f in writable_fields(model).items():
        if name in fed or f.db_default is not models.NOT_PROVIDED:
            continue
        if has_default(f):
            defaults.append(FieldDefault(f))
        elif not f.null:
            raise InputError(
                f"{where}: nothing fills {model._meta.label}.{name}, which has no default"
                " (give it a default, null=True, or a value in the input)"
            )
    return defaults


class DocumentRows:
    """Rows for a document model's table, built from dicts of AbstractDocument's fields.

    The columns are the model's fields among ``DOCUMENT_FIELDS`` and ``extra`` (an ``id`` first when
    the caller draws ids), then every other field with its default.
    """

    def __init__(
        self,
        conn: psycopg.Connection,
        model: type[models.Model],
        *,
        with_id: bool = False,
        extra: Sequence[str] = (),
    ) -> None:
        concrete = writable_fields(model)
        self.model = model
        self.fields = [concrete[name] for name in (*DOCUMENT_FIELDS, *extra) if name in concrete]
        self.defaults = unfed_defaults(model, {f.name for f in self.fields}, model._meta.label)
        columns = [f.column for f in (*self.fields, *(d.field for d in self.defaults))]
        self.with_id = with_id
        self.target = pgcopy.Target.introspect(
            conn, model._meta.db_table, ["id", *columns] if with_id else columns
        )

    def row(self, values: Mapping[str, Any], vector: Any, pk: int | None = None) -> tuple:
        """One row: ``values`` by field name (missing or None: the field's default), the vector as given
        (an array for INSERT, pgcopy.encode_vectors bytes for COPY)."""
        out: list[Any] = [pk] if self.with_id else []
        for f in self.fields:
            if f.name == "embedding":
                out.append(vector)
                continue
            value = values.get(f.name)
            if value is None and has_default(f):
                value = f.get_default()
            out.append(db_value(f, value))
        out += [d.value() for d in self.defaults]
        return tuple(out)


def insert_documents(
    items: Sequence[Mapping[str, Any]],
    *,
    model: type[models.Model] | None = None,
    embedder: Embedder | None = None,
    using: str = "default",
) -> list[int]:
    """Embed the items' texts in one batch and write them with one binary COPY; return their ids in order.

    Items carry AbstractDocument's fields and the model's own (``extra_fields``); a missing one gets
    its default. The ids are drawn from the table's sequence first, so that COPY (which returns
    nothing) can write them and the caller still learns them. One transaction:
    an id already stored fails the whole call with IntegrityError. A model that keeps passages gets
    them in the same transaction (``vectorstore.passages``). Embedded by the table's model (its record):
    where a swap of ``reembed`` commits first, the items are embedded again with the new one.
    """
    model = model or conf.document_model()
    before = record.current(model, using)
    try:
        return _insert(items, model, embedder, using)
    except (record.ModelChanged, DataError) as exc:
        if embedder is not None or not record.moved(model, using, before, exc):
            raise
        return _insert(items, model, None, using)


def _insert(
    items: Sequence[Mapping[str, Any]], model: type[models.Model], embedder: Embedder | None, using: str
) -> list[int]:
    if conf.embed_on_save() == "deferred":
        # Written without vectors: the database marks each row stale and the worker embeds it.
        vectors, parts, part_vectors = None, None, None
    else:
        embedder = embedder or record.embedder(model, using)
        vectors, parts, part_vectors = passages.embed_with_passages(
            [item["text"] for item in items], embedder, model
        )
    now = timezone.now()
    with transaction.atomic(using=using):
        conn = pgcopy.django_connection(using)
        rows = DocumentRows(conn, model, with_id=True, extra=extra_fields(model))
        ids = pgcopy.next_ids(conn, model._meta.db_table, len(items))
        pgcopy.copy_rows(
            conn,
            rows.target,
            (
                rows.row({**item, "created_at": item.get("created_at") or now}, vector, pk)
                for pk, item, vector in zip(
                    ids,
                    items,
                    [None] * len(items) if vectors is None else pgcopy.encode_vectors(vectors),
                    strict=True,
                )
            ),
        )
        if parts is not None:
            passages.copy_passages(conn, model, ids, parts, part_vectors)
        if vectors is not None and getattr(embedder, "recorded", None) is not None:
            # Made by the table's model still: where a swap of reembed came first, nothing is written.
            record.hold(model, using, embedder.recorded)
    return ids
