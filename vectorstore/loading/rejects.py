"""Rows a load refuses: collected with their reasons, written to ``INPUT.rejects.parquet``, and database
errors explained in terms of the input's rows."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from django.db import models

from vectorstore.loading.parquet import AtomicParquetWriter, Source
from vectorstore.loading.rows import ColumnMap, is_string
from vectorstore.validation import InputError

_KEY_DETAIL = re.compile(r"Key \((?P<col>[^)]+)\)=\((?P<val>.*)\) already exists")
_COPY_LINE = re.compile(r"COPY \S+, line (\d+)")


def default_rejects_path(src: Source) -> Path | None:
    """``INPUT.rejects.parquet`` beside a file; None for an in-memory table."""
    if src.path is None:
        return None
    return src.path.with_name(f"{src.path.stem}.rejects.parquet")


class RejectLog:
    """The rows a load refused, as (row, column, reason), and their input records."""

    def __init__(self, src: Source, batch_size: int) -> None:
        self.src = src
        self.batch_size = batch_size
        self.rejects: list[tuple[int, str, str]] = []
        self.records: list[pa.Table] = []

    def __len__(self) -> int:
        return len(self.rejects)

    def add_batch(self, rejects: list[tuple[int, str, str]], records: pa.RecordBatch | None) -> None:
        """Rejects found while checking a batch, with that batch's refused records."""
        if rejects:
            self.rejects.extend(rejects)
            self.records.append(pa.Table.from_batches([records]))

    def add_rows(self, rejects: list[tuple[int, str, str]]) -> None:
        """Rejects found in the database (duplicate or stored ids): their records are read again."""
        if rejects:
            rejects = sorted(rejects)
            self.rejects.extend(rejects)
            self.records.append(self._records_at([r for r, _, _ in rejects]))

    def _records_at(self, rows: Sequence[int]) -> pa.Table:
        """The input's records at the given (ascending) row indexes, in that order."""
        wanted = np.asarray(rows, dtype=np.int64)
        parts, offset = [], 0
        for batch in self.src.iter_batches(self.batch_size):
            local = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)] - offset
            if len(local):
                parts.append(batch.take(pa.array(local)))
            offset += batch.num_rows
        return pa.Table.from_batches(parts) if parts else self.src.schema.empty_table()

    def write(self, path: Path) -> None:
        """The rejects as parquet, by input row: row, column, reason, then the record's own columns."""
        # self.records, concatenated, holds one record per entry of self.rejects, in the same order.
        order = pa.array(np.argsort([row for row, _, _ in self.rejects], kind="stable"))
        meta = pa.table(
            {
                "row": pa.array([r[0] for r in self.rejects], pa.int64()),
                "column": pa.array([r[1] for r in self.rejects], pa.string()),
                "reason": pa.array([r[2] for r in self.rejects], pa.string()),
            }
        ).take(order)
        table = pa.concat_tables(self.records).take(order)
        for name in table.column_names:
            meta = meta.append_column(name, table.column(name))
        with AtomicParquetWriter(path, meta.schema) as writer:
            writer.write(meta)


def rows_with_id(src: Source, id_column: str, value: str, batch_size: int) -> list[int]:
    """Input rows whose id equals value (read again only to explain an error)."""
    found, offset = [], 0
    for batch in src.iter_batches(batch_size, [id_column]):
        col = batch.column(0)
        col = col if is_string(col.type) else col.cast(pa.string())
        found += [
            offset + int(i) for i in np.flatnonzero(pc.equal(col, value).to_numpy(zero_copy_only=False))
        ]
        offset += batch.num_rows
    return found


def explain_unique_violation(
    exc: psycopg.errors.UniqueViolation, src: Source, cmap: ColumnMap, using: str, batch_size: int
) -> InputError:
    """A duplicate-key error as the input row it came from: a stored id, or an id twice in the input."""
    match = _KEY_DETAIL.search(exc.diag.message_detail or "")
    if not match or not cmap.id_column:
        return InputError(f"{src.name}: {exc.diag.message_primary} ({exc.diag.message_detail})")
    value = match.group("val")
    rows = rows_with_id(src, cmap.id_column, value, batch_size)
    model: type[models.Model] = cmap.model
    if model._default_manager.using(using).filter(external_id=value).exists():
        row = rows[0] if rows else "?"
        return InputError(
            f"{src.name}: column {cmap.id_column!r}, row {row}: id {value!r} is already stored in"
            f" {model._meta.db_table} (use on_conflict='skip' or on_conflict='update'); nothing was loaded"
        )
    if len(rows) >= 2:
        return InputError(
            f"{src.name}: column {cmap.id_column!r}, row {rows[1]}: duplicate id {value!r}"
            f" (also at row {rows[0]}); nothing was loaded"
        )
    return InputError(
        f"{src.name}: {exc.diag.message_primary} ({exc.diag.message_detail}); nothing was loaded"
    )


def explain_database_error(exc: psycopg.Error, src: Source) -> InputError:
    """Any other database error, with the input row COPY was at when it is known."""
    diag = exc.diag
    message = diag.message_primary or str(exc)
    where = ""
    line = _COPY_LINE.search(diag.context or "")
    if line:
        where = f" (near input row {int(line.group(1)) - 1})"
    return InputError(f"{src.name}: the database refused the load{where}: {message}; nothing was loaded")
