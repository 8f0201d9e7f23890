"""What the framework adapters share: a batch of (id, text, metadata, vector) checked, validated by the
model and written in one statement, and the database it goes to. Imports no framework."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from django.core.exceptions import ValidationError
from django.db import models, router, transaction

from vectorstore import passages, pg
from vectorstore.loading.writes import writable_fields
from vectorstore.reembed import record
from vectorstore.validation import storable_json, storable_text

# Fields a framework's document fills by its own parts, never from a metadata key.
OWN_FIELDS = ("external_id", "text", "embedding", "metadata")

Row = tuple[str, str, dict]


def write_db(model: type[models.Model], using: str | None) -> str:
    """The alias writes go to: the one given, else the router's (the primary with replicas)."""
    return using or router.db_for_write(model)


def checked_rows(
    texts: Sequence[str], metadatas: Sequence[dict] | None, ids: Sequence[str | None] | None
) -> list[Row]:
    """(id, text, metadata) per text, checked before anything is embedded (a uuid4 for a missing id);
    a ValueError names the document and the field."""
    metadatas = list(metadatas) if metadatas is not None else [{} for _ in texts]
    ids = list(ids) if ids is not None else [None] * len(texts)
    if not len(metadatas) == len(ids) == len(texts):
        raise ValueError(f"metadatas, ids: {len(texts)} texts need as many of each")
    rows = []
    for i, (text, metadata, id_) in enumerate(zip(texts, metadatas, ids, strict=True)):
        if not isinstance(metadata, dict):
            raise ValueError(f"document {i}: metadata: must be a dict")
        for field, check, value in (("text", storable_text, text), ("metadata", storable_json, metadata)):
            try:
                check(value)
            except (ValueError, TypeError, AttributeError) as exc:
                raise ValueError(f"document {i}: {field}: {exc}") from None
        rows.append((str(id_) if id_ is not None else str(uuid.uuid4()), text, dict(metadata)))
    return rows


def write_rows(
    model: type[models.Model], rows: Sequence[Row], vectors: Sequence[Sequence[float]], using: str | None
) -> list[str]:
    """One INSERT ... ON CONFLICT (external_id) DO UPDATE of model instances that passed the model's own
    validation (``full_clean``), in a transaction; the ids in order. A metadata key naming one of the
    model's own fields fills that field too; an id given twice keeps its last document; a stored id is
    replaced whole (every field but its id and, unless given, its creation time)."""
    if not rows:
        return []
    writable = writable_fields(model)
    named = {name for name in writable if name not in OWN_FIELDS}
    dimensions = model._meta.get_field("embedding").dimensions
    latest: dict[str, Any] = {}
    given: set[str] = set()
    for i, ((id_, text, metadata), vector) in enumerate(zip(rows, vectors, strict=True)):
        if dimensions is not None and len(vector) != dimensions:
            raise ValueError(
                f"document {i}: embedding: {len(vector)} dimensions, the model's field has {dimensions}"
            )
        fields = {name: value for name, value in metadata.items() if name in named}
        given |= fields.keys()
        instance = model(external_id=id_, text=text, metadata=metadata, embedding=list(vector), **fields)
        try:
            instance.full_clean(validate_unique=False, validate_constraints=False)
        except ValidationError as exc:
            problems = "; ".join(f"{f}: {' '.join(m)}" for f, m in exc.message_dict.items())
            raise ValueError(f"document {i} ({id_}): {problems}") from None
        latest[id_] = instance
    update = [name for name in writable if name != "external_id" and (name != "created_at" or name in given)]
    db = write_db(model, using)
    with transaction.atomic(using=db):
        keeps_passages = passages.enabled(model)
        if keeps_passages:  # what each stored id holds now: an unchanged text keeps its passages
            stored = dict(
                model._default_manager.db_manager(db)
                .filter(external_id__in=list(latest))
                .values_list("external_id", "text")
            )
        model._default_manager.db_manager(db).bulk_create(
            list(latest.values()),
            update_conflicts=True,
            unique_fields=["external_id"],
            update_fields=update,
        )
        if keeps_passages:  # bulk_create runs no save(): the passages are written here, in its transaction
            changed = [i for i, instance in latest.items() if i in stored and stored[i] != instance.text]
            passages.passage_model(model)._default_manager.db_manager(db).filter(
                document__external_id__in=changed
            ).delete()
            passages.fill_missing(
                pg.django_connection(db), model, record.embedder(model, db), external_ids=list(latest)
            )
    return [id_ for id_, _, _ in rows]
