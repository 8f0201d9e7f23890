"""Input rows to table rows: which column feeds which field, the checks every row passes, and the
producer that checks (and embeds) batches a thread ahead of the writes."""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.db import models
from django.utils import timezone

from vectorstore import passages
from vectorstore.loading import pgcopy
from vectorstore.loading.parquet import Source
from vectorstore.loading.writes import FieldDefault, unfed_defaults, writable_fields
from vectorstore.passages import files as passage_files
from vectorstore.validation import InputError

if TYPE_CHECKING:
    from vectorstore.embedding import Embedder

EMBEDDING_COLUMNS = ("embedding", "embeddings")  # the seed notebook's parquet says "embeddings"
ID_COLUMNS = ("external_id", "id")


@dataclass
class ColumnMap:
    """Which input column goes to which field of the target model."""

    model: type[models.Model]
    text_column: str
    embedding_column: str | None  # None: the texts are embedded on the way in
    id_column: str | None
    field_columns: dict[str, str]  # model field name -> input column, besides text/vector/id
    metadata_columns: list[str]
    ignored_columns: list[str]
    text_field: str
    vector_field: str
    dimensions: int
    created_field: str | None  # filled with the load's time when no column feeds it
    # embed_parquet --passages' column (vectorstore.passages.files): written to the passage table, not a field
    passage_column: str | None = None
    defaults: list[FieldDefault] = field(default_factory=list)  # fields no column feeds

    @property
    def fields(self) -> list[str]:
        """Target columns in row order: id, text, vector, other fields, metadata, created."""
        out = []
        if self.id_column:
            out.append("external_id")
        out += [self.text_field, self.vector_field, *self.field_columns]
        if self.metadata_columns:
            out.append("metadata")
        if self.created_field:
            out.append(self.created_field)
        out += [d.field.column for d in self.defaults]
        return out


def is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def _is_vector(t: pa.DataType) -> bool:
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        v = t.value_type
        return pa.types.is_floating(v) or pa.types.is_integer(v)
    return False


def resolve_columns(
    src: Source,
    model: type[models.Model],
    *,
    text_column: str = "text",
    embedding_column: str | None = None,
    id_column: str | None = None,
    text_field: str = "text",
    vector_field: str = "embedding",
    require_vectors: bool = False,
) -> ColumnMap:
    """Check the input's columns and types against the model, and decide where each column goes."""
    concrete = writable_fields(model)
    for name, what in ((text_field, "text field"), (vector_field, "vector field")):
        if name not in concrete:
            raise InputError(f"{model._meta.label} has no {what} {name!r}")
    dims = getattr(concrete[vector_field], "dimensions", None)
    if not dims:
        raise InputError(f"{model._meta.label}.{vector_field} is not a VectorField with dimensions")

    text_type = src.require(text_column, "text")
    if not is_string(text_type):
        raise InputError(f"{src.name}: column {text_column!r} must hold strings, not {text_type}")

    if embedding_column is None:
        embedding_column = next((c for c in EMBEDDING_COLUMNS if c in src.columns), None)
    if embedding_column is not None:
        vtype = src.require(embedding_column, "embedding")
        if not _is_vector(vtype):
            raise InputError(
                f"{src.name}: column {embedding_column!r} must hold lists of numbers, not {vtype}"
            )
    elif require_vectors:
        raise InputError(f"{src.name}: no embedding column (looked for {', '.join(EMBEDDING_COLUMNS)})")

    if id_column is None:
        id_column = next((c for c in ID_COLUMNS if c in src.columns), None)
    elif id_column not in src.columns:
        src.require(id_column, "id")
    if id_column is not None:
        if "external_id" not in concrete:
            raise InputError(f"{model._meta.label} has no external_id field for the id column {id_column!r}")
        itype = src.schema.field(id_column).type
        if not (is_string(itype) or pa.types.is_integer(itype)):
            raise InputError(
                f"{src.name}: id column {id_column!r} must hold strings or integers, not {itype}"
            )

    ignored: list[str] = []
    used = {text_column, embedding_column, id_column}
    passage_column = None
    if passage_files.COLUMN in src.columns and passage_files.is_passage_column(
        src.schema.field(passage_files.COLUMN).type
    ):
        passage_column = passage_files.COLUMN
        used.add(passage_column)
        if not passages.enabled(model):  # said in the report: this model keeps no passages
            ignored.append(passage_column)
    field_columns: dict[str, str] = {}
    metadata_columns: list[str] = []
    has_metadata = isinstance(concrete.get("metadata"), models.JSONField)
    created_field = "created_at" if "created_at" in concrete else None
    for column in src.columns:
        if column in used:
            continue
        if column in concrete and column not in (text_field, vector_field, "external_id", "metadata"):
            field_columns[column] = column
            if column == created_field:
                created_field = None
        elif has_metadata:
            metadata_columns.append(column)
        else:
            ignored.append(column)
    # Fields no column feeds get their Django default (the database has none to give):
    # category "" and metadata {} for a bare text + vector file.
    fed = {text_field, vector_field, *field_columns}
    fed |= {name for name, used in (("metadata", metadata_columns), ("created_at", created_field)) if used}
    if id_column:
        fed.add("external_id")
    defaults = unfed_defaults(model, fed, src.name)
    return ColumnMap(
        model=model,
        text_column=text_column,
        embedding_column=embedding_column,
        id_column=id_column,
        field_columns=field_columns,
        metadata_columns=metadata_columns,
        ignored_columns=ignored,
        text_field=text_field,
        vector_field=vector_field,
        dimensions=dims,
        created_field=created_field,
        passage_column=passage_column if passages.enabled(model) else None,
        defaults=defaults,
    )


@dataclass
class Prepared:
    """One batch, checked: rows ready to write, and the rejected ones with their reasons."""

    rows: list[tuple]
    row_numbers: np.ndarray  # input row index of each written row
    rejects: list[tuple[int, str, str]]  # (row, column, reason)
    reject_records: pa.RecordBatch | None
    embedded: int = 0
    truncated: int = 0
    vectors: np.ndarray | None = None  # the written rows' vectors, float32 (a first load's tuning reads them)


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _plain(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None  # JSON has no NaN or infinity
    return value


def _column_values(col: pa.Array) -> list:
    if pa.types.is_timestamp(col.type) or pa.types.is_date(col.type) or pa.types.is_floating(col.type):
        return [_plain(v) for v in col.to_pylist()]
    return col.to_pylist()


class Checker:
    """Turns input batches into rows for the target table, finding every bad row on the way."""

    def __init__(
        self, src: Source, cmap: ColumnMap, embedder: Embedder | None, on_error: str, binary: bool = True
    ) -> None:
        self.binary = binary  # vectors pre-encoded for binary COPY; else arrays for INSERT parameters
        self.src = src
        self.cmap = cmap
        self.embedder = embedder
        self.on_error = on_error
        self.loaded_at = timezone.now()

    def fail(self, row: int, column: str, reason: str) -> InputError:
        return InputError(f"{self.src.name}: column {column!r}, row {row}: {reason}")

    def prepare(self, batch: pa.RecordBatch, offset: int) -> Prepared:
        cm = self.cmap
        n = batch.num_rows
        bad = np.zeros(n, dtype=bool)
        why: dict[int, tuple[str, str]] = {}

        def mark(mask: np.ndarray, column: str, reason: Callable[[int], str] | str) -> None:
            new = mask & ~bad
            if not new.any():
                return
            if self.on_error == "abort":
                i = _first(new)
                raise self.fail(offset + i, column, reason(i) if callable(reason) else reason)
            for i in np.flatnonzero(new):
                why[int(i)] = (column, reason(int(i)) if callable(reason) else reason)
            bad[new] = True

        text = batch.column(cm.text_column)
        empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), True)
        mark(empty.to_numpy(zero_copy_only=False), cm.text_column, "text is null or empty")

        vectors = None
        if cm.embedding_column is not None:
            col = batch.column(cm.embedding_column)
            lengths = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False)
            mark(lengths == -1, cm.embedding_column, "embedding is null")
            mark(
                lengths != cm.dimensions,
                cm.embedding_column,
                lambda i: f"embedding has {lengths[i]} numbers, the vector column holds {cm.dimensions}",
            )
            ok = ~bad
            flat = pc.list_flatten(col.filter(pa.array(ok)))
            values = (
                flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, cm.dimensions)
            )
            finite = np.isfinite(values).all(axis=1)
            nonfinite = np.zeros(n, dtype=bool)
            nonfinite[np.flatnonzero(ok)[~finite]] = True
            mark(nonfinite, cm.embedding_column, "embedding holds NaN, infinity or a null number")
            vectors = values[finite[: len(values)]] if not finite.all() else values

        good = ~bad
        keep = pa.array(good)
        kept = batch.filter(keep) if bad.any() else batch
        texts = kept.column(cm.text_column).to_pylist()
        embedded = truncated = 0
        if vectors is None:
            if self.embedder is None:
                raise InputError(f"{self.src.name}: no embedding column and no embedder")
            result = self.embedder.encode_counted(texts)
            vectors, embedded, truncated = result.vectors, len(texts), result.truncated
        encoded = pgcopy.encode_vectors(vectors) if self.binary else list(vectors)

        columns: list[list] = []
        if cm.id_column:
            ids = kept.column(cm.id_column)
            columns.append(ids.cast(pa.string()).to_pylist() if not is_string(ids.type) else ids.to_pylist())
        columns += [texts, encoded]
        for name in cm.field_columns.values():
            columns.append(kept.column(name).to_pylist())
        if cm.metadata_columns:
            values = [_column_values(kept.column(c)) for c in cm.metadata_columns]
            names = cm.metadata_columns
            columns.append(
                [pgcopy.jsonb(dict(zip(names, row, strict=True))) for row in zip(*values, strict=True)]
            )
        if cm.created_field:
            columns.append([self.loaded_at] * kept.num_rows)
        for default in cm.defaults:
            columns.append(default.values(kept.num_rows))
        rows = list(zip(*columns, strict=True))

        rejects = [(offset + i, *why[i]) for i in sorted(why)]
        return Prepared(
            rows=rows,
            row_numbers=offset + np.flatnonzero(good),
            rejects=rejects,
            reject_records=batch.filter(pa.array(bad)) if rejects else None,
            embedded=embedded,
            truncated=truncated,
            vectors=vectors,
        )


_DONE = object()


def prefetch(items: Iterator[Any], depth: int = 1) -> Iterator[Any]:
    """Iterate in a background thread, ``depth`` items ahead (exceptions re-raised here)."""
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item: Any) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer has gone

    def run() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as exc:
            offer(exc)

    thread = threading.Thread(target=run, daemon=True, name="vectorstore-prefetch")
    thread.start()
    try:
        while True:
            item = handoff.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


def prepared_batches(src: Source, checker: Checker, batch_size: int) -> Iterator[Prepared]:
    """The input's batches, checked (and embedded where they have no vectors), in order."""
    offset = 0
    for batch in src.iter_batches(batch_size):
        yield checker.prepare(batch, offset)
        offset += batch.num_rows
