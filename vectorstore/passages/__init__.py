"""Passages: a long document's text as windows its embedding model reads whole, each with its vector, in a
table of their own per document model, written in the document's transaction and searched as documents.

A document model turns them on with one class attribute (``keep_passages = True``; the app's own ``Document``
follows the ``PASSAGES`` setting): when Django prepares such a class, a passage model
``<Document>Passage`` is made beside it in the same app (as django-simple-history makes its historical
models), so the host's own ``makemigrations`` writes its table: the document (a foreign key, cascading),
the ordinal, the character span (``text[start:end]`` of the document is the passage; the text is not
stored twice), the vector, and an HNSW index like the document's.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from django.db import models
from pgvector.django import HnswIndex, VectorField
from psycopg import sql

from vectorstore import conf
from vectorstore.limits import HNSW_EF_CONSTRUCTION, HNSW_M
from vectorstore.loading import pgcopy
from vectorstore.passages.split import Passage, split
from vectorstore.vector_values import VectorValues


def _short(name: str, suffix: str, limit: int = 30) -> str:
    """``name_suffix``, shortened with a hash where Django's 30-character limit on names would cut it."""
    full = f"{name}_{suffix}"
    if len(full) <= limit:
        return full
    digest = hashlib.sha256(full.encode()).hexdigest()[:6]
    return f"{name[: limit - len(suffix) - 8]}_{digest}_{suffix}"


def make_passage_model(document: type[models.Model]) -> type[models.Model]:
    """The passage model of a concrete document model, registered in the document's app."""
    table = f"{document._meta.db_table}_passage"
    meta = type(
        "Meta",
        (),
        {
            "app_label": document._meta.app_label,
            "db_table": table,
            "ordering": ["document", "ordinal"],
            "verbose_name": f"{document._meta.verbose_name} passage",
            "constraints": [
                models.UniqueConstraint(fields=["document", "ordinal"], name=_short(table, "ord")),
            ],
            "indexes": [
                HnswIndex(
                    name=_short(table, "hnsw"),
                    fields=["embedding"],
                    m=HNSW_M,
                    ef_construction=HNSW_EF_CONSTRUCTION,
                    opclasses=["vector_cosine_ops"],
                ),
            ],
        },
    )
    attrs = {
        "__module__": document.__module__,
        "__doc__": f"A passage of a {document.__name__}'s text, with its own vector.",
        "Meta": meta,
        # No index of its own: the unique (document, ordinal) constraint's index leads with the document.
        "document": models.ForeignKey(
            document, on_delete=models.CASCADE, related_name="passages", db_index=False
        ),
        "ordinal": models.PositiveIntegerField(),
        "start": models.PositiveIntegerField(help_text="Where the passage starts in the document's text."),
        "end": models.PositiveIntegerField(help_text="Where it ends (text[start:end] is the passage)."),
        "embedding": VectorField(dimensions=document._meta.get_field("embedding").dimensions),
        "__str__": lambda self: f"{self.document_id} #{self.ordinal} [{self.start}:{self.end}]",
    }
    model = type(f"{document.__name__}Passage", (VectorValues,), attrs)
    model._passages_of = document
    # Importable by name from the document's module (pickling, references in the host's code).
    setattr(sys.modules[document.__module__], model.__name__, model)
    return model


def passage_model(document: type[models.Model]) -> type[models.Model] | None:
    """The passage model of a document model, or None where it has none."""
    return document.__dict__.get("_passage_model")


def document_of(model: type[models.Model]) -> type[models.Model] | None:
    """The document model of a passage model, or None for any other model."""
    return model.__dict__.get("_passages_of")


def enabled(document: type[models.Model]) -> bool:
    """Whether writes and searches of this document model use passages: its ``passages`` attribute, or
    for a model that leaves it to the settings (``keep_passages = None``: the app's Document), PASSAGES."""
    if passage_model(document) is None:
        return False
    flag = getattr(document, "keep_passages", False)
    return bool(conf.passages() if flag is None else flag)


def window(embedder: Any) -> int:
    """Word pieces a passage may hold: PASSAGE_WINDOW where set, never more than the model reads (its
    limit less its own two, [CLS] and [SEP])."""
    most = embedder.max_tokens - 2
    wanted = conf.passage_window()
    return most if wanted is None else max(8, min(wanted, most))


def cut(embedder: Any, overlap: int | None = None) -> tuple[int, int]:
    """(window, overlap) of this site's passages; the overlap PASSAGE_OVERLAP (or ``overlap``), at most
    half the window."""
    size = window(embedder)
    return size, min(conf.passage_overlap() if overlap is None else overlap, size // 2)


def split_texts(texts: Sequence[str], embedder: Any, overlap: int | None = None) -> list[list[Passage]]:
    """Each text's passages, by the embedder's own tokenizer."""
    size, overlap = cut(embedder, overlap)
    return [split(text, embedder.model.tokenizer, size, overlap) for text in texts]


def passage_vectors(
    parts: Sequence[list[Passage]], doc_vectors: Sequence[Any], embedder: Any
) -> list[np.ndarray]:
    """Each text's passage vectors: a text that fits one passage takes its document's vector (the model
    is not run again); the longer texts' passages go through the model in one batch."""
    longer = [p.text for ps in parts if len(ps) > 1 for p in ps]
    encoded = iter(embedder.encode(longer)) if longer else iter(())
    return [
        np.stack([next(encoded) for _ in ps]) if len(ps) > 1 else np.asarray([vector], np.float32)[: len(ps)]
        for ps, vector in zip(parts, doc_vectors, strict=True)
    ]


def embed_with_passages(
    texts: Sequence[str], embedder: Any, document: type[models.Model]
) -> tuple[np.ndarray, list[list[Passage]] | None, list[np.ndarray] | None]:
    """The texts' vectors and, for a document model that keeps passages, each text's passages and their
    vectors (``passage_vectors``)."""
    vectors = embedder.encode(texts)
    if not enabled(document):
        return vectors, None, None
    parts = split_texts(texts, embedder)
    return vectors, parts, passage_vectors(parts, vectors, embedder)


def copy_passages(
    conn: Any,
    document: type[models.Model],
    ids: Sequence[int],
    parts: Sequence[list[Passage]],
    vectors: Sequence[np.ndarray],
) -> int:
    """COPY the passages of the documents ``ids`` (already written, in the caller's transaction); returns
    how many were written."""
    model = passage_model(document)
    columns = [model._meta.get_field(name).column for name in ("document", "ordinal", "start", "end")]
    target = pgcopy.Target.introspect(conn, model._meta.db_table, [*columns, "embedding"])
    rows = [
        (doc_id, p.ordinal, p.start, p.end, encoded)
        for doc_id, ps, vs in zip(ids, parts, vectors, strict=True)
        for p, encoded in zip(ps, pgcopy.encode_vectors(vs) if len(ps) else [], strict=True)
    ]
    pgcopy.copy_rows(conn, target, rows)
    return len(rows)


def replace_passages(
    document: models.Model, passages: list[Passage], vectors: np.ndarray, using: str | None = None
) -> None:
    """The document's passages, replaced by these (inside the caller's transaction)."""
    model = passage_model(type(document))
    using = using or document._state.db or "default"
    model._default_manager.using(using).filter(document=document).delete()
    model._default_manager.using(using).bulk_create(
        model(document=document, ordinal=p.ordinal, start=p.start, end=p.end, embedding=v)
        for p, v in zip(passages, vectors, strict=True)
    )


def drop_changed(conn: Any, document: type[models.Model], stage: str) -> int:
    """Before a load's merge updates stored documents: delete the passages of those whose text the staged
    rows change (``fill_missing`` then writes their new ones); returns how many were deleted."""
    model = passage_model(document)
    text = document._meta.get_field("text").column
    statement = sql.SQL(
        "DELETE FROM {p} p USING {d} d JOIN {s} s ON s.external_id = d.external_id"
        " WHERE p.{fk} = d.{pk} AND d.{text} IS DISTINCT FROM s.{text}"
    ).format(
        p=sql.Identifier(model._meta.db_table),
        d=sql.Identifier(document._meta.db_table),
        s=sql.Identifier(stage),
        fk=sql.Identifier(model._meta.get_field("document").column),
        pk=sql.Identifier(document._meta.pk.column),
        text=sql.Identifier(text),
    )
    with conn.cursor() as cursor:
        cursor.execute(statement)
        return cursor.rowcount


def fill_missing(
    conn: Any,
    document: type[models.Model],
    embedder: Any,
    batch_size: int = 256,
    on_batch: Callable[[int], None] | None = None,
    external_ids: Sequence[str] | None = None,
) -> int:
    """Write the passages of every document of the table that has none (a load's new rows, and those
    whose text it changed), in the caller's transaction; returns how many passages were written.

    Read in batches through a server-side cursor; a text that fits one passage takes its stored vector
    (only its tokens are counted), a longer one's passages go through the model in one batch.
    ``external_ids``: only those documents (a stream's few records, by the unique index)."""
    model = passage_model(document)
    fields = [document._meta.get_field(name).column for name in ("text", "embedding")]
    query = sql.SQL(
        "SELECT d.{pk}, d.{text}, d.{vector} FROM {d} d"
        " WHERE NOT EXISTS (SELECT FROM {p} p WHERE p.{fk} = d.{pk}){only} ORDER BY d.{pk}"
    ).format(
        only=sql.SQL(" AND d.external_id = ANY(%s)" if external_ids is not None else ""),
        pk=sql.Identifier(document._meta.pk.column),
        text=sql.Identifier(fields[0]),
        vector=sql.Identifier(fields[1]),
        d=sql.Identifier(document._meta.db_table),
        p=sql.Identifier(model._meta.db_table),
        fk=sql.Identifier(model._meta.get_field("document").column),
    )
    written = 0
    with conn.cursor(name="vectorstore_missing_passages") as cursor:
        cursor.execute(query, [list(external_ids)] if external_ids is not None else None)
        while rows := cursor.fetchmany(batch_size):
            parts = split_texts([r[1] for r in rows], embedder)
            vectors = passage_vectors(parts, [r[2] for r in rows], embedder)
            written += copy_passages(conn, document, [r[0] for r in rows], parts, vectors)
            if on_batch is not None:
                on_batch(len(rows))
    return written
