"""The loading pipelines behind the commands, callable from Python on a path, an Arrow table or a DataFrame.

    from vectorstore.ingest import load
    report = load("reviews.parquet")                      # or load(df), load(arrow_table)
    report = load(df, on_conflict="update", method="insert", batch_size=1000)

``load`` reads the input in batches, checks each row, embeds texts that have no
vector (in a producer thread, so embedding overlaps the writes), and writes
with binary COPY (or batched INSERT) in one transaction. On an empty table, or
a load larger than the table, it drops the table's secondary indexes first and
builds them after: pgvector's own advice, and 6x faster than COPY into an HNSW
index.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import queue
import re
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from django.db import connections, models, transaction
from django.utils import timezone
from psycopg import sql

from vectorstore import conf
from vectorstore import copy as pgcopy
from vectorstore.parquet import AtomicParquetWriter, InputError, Source

if TYPE_CHECKING:
    from vectorstore.embedding import Embedder

METHODS = ("copy", "insert")
ON_CONFLICT = ("error", "skip", "update")
ON_ERROR = ("abort", "skip")
INDEX_STRATEGIES = ("auto", "rebuild", "keep")
EMBEDDING_COLUMNS = ("embedding", "embeddings")  # the seed notebook's parquet says "embeddings"
ID_COLUMNS = ("external_id", "id")
DEFAULT_BATCH_SIZE = {"copy": 5000, "insert": 1000}


def progress_enabled() -> bool:
    """Progress bars go to a terminal only; logs and pipes get the one-line summary."""
    return sys.stderr.isatty()


def make_bar(total: int | None, desc: str, unit: str = "rows", enabled: bool | None = None):
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        disable=not (progress_enabled() if enabled is None else enabled),
        file=sys.stderr,
    )


def index_progress_bar(desc: str, enabled: bool | None = None):
    """A bar for index builds and the callback that copy.build_indexes / reindex_concurrently feed it."""
    bar = make_bar(None, desc, unit="blocks", enabled=enabled)

    def on_progress(name: str, phase: str, done: int, total: int) -> None:
        bar.set_description(f"index {name}: {phase}")
        if total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, on_progress


# --------------------------------------------------------------------------- mapping


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
    defaults: dict[str, Any] = field(default_factory=dict)  # unfed fields, with their defaults

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
        out += list(self.defaults)
        return out


def _is_string(t: pa.DataType) -> bool:
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
    concrete = {
        f.name: f
        for f in model._meta.concrete_fields
        if not f.primary_key and not isinstance(f, models.GeneratedField)
    }
    for name, what in ((text_field, "text field"), (vector_field, "vector field")):
        if name not in concrete:
            raise InputError(f"{model._meta.label} has no {what} {name!r}")
    dims = getattr(concrete[vector_field], "dimensions", None)
    if not dims:
        raise InputError(f"{model._meta.label}.{vector_field} is not a VectorField with dimensions")

    text_type = src.require(text_column, "text")
    if not _is_string(text_type):
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
        if not (_is_string(itype) or pa.types.is_integer(itype)):
            raise InputError(
                f"{src.name}: id column {id_column!r} must hold strings or integers, not {itype}"
            )

    used = {text_column, embedding_column, id_column}
    field_columns: dict[str, str] = {}
    metadata_columns: list[str] = []
    ignored: list[str] = []
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
    fed = {text_field, vector_field, *field_columns, "metadata" if metadata_columns else None, created_field}
    if id_column:
        fed.add("external_id")
    defaults: dict[str, Any] = {}
    for name, f in concrete.items():
        if name in fed or f.null:
            continue
        if not f.has_default():
            raise InputError(f"{src.name}: no column for {model._meta.label}.{name}, which has no default")
        defaults[name] = f.get_default()
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
        defaults=defaults,
    )


# --------------------------------------------------------------------------- row checks


@dataclass
class Prepared:
    """One batch, checked: rows ready to write, and the rejected ones with their reasons."""

    rows: list[tuple]
    row_numbers: np.ndarray  # input row index of each written row
    rejects: list[tuple[int, str, str]]  # (row, column, reason)
    reject_records: pa.RecordBatch | None
    embedded: int = 0
    truncated: int = 0


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
            columns.append(ids.cast(pa.string()).to_pylist() if not _is_string(ids.type) else ids.to_pylist())
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
        for value in cm.defaults.values():
            value = pgcopy.jsonb(value) if isinstance(value, dict | list) else value
            columns.append([value] * kept.num_rows)
        rows = list(zip(*columns, strict=True))

        rejects = [(offset + i, *why[i]) for i in sorted(why)]
        return Prepared(
            rows=rows,
            row_numbers=offset + np.flatnonzero(good),
            rejects=rejects,
            reject_records=batch.filter(pa.array(bad)) if rejects else None,
            embedded=embedded,
            truncated=truncated,
        )


# --------------------------------------------------------------------------- producer


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


# --------------------------------------------------------------------------- load


@dataclass
class LoadReport:
    """What a load did. ``rows = inserted + updated + skipped + rejected``."""

    rows: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    method: str = "copy"
    table: str = ""
    embedded: int = 0
    truncated: int = 0
    index_strategy: str = "keep"
    index_seconds: float = 0.0
    workers: int = 1
    rejects_path: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    # Prepared transactions of earlier parallel loads that died, finished before this one began.
    recovered_committed: int = 0
    recovered_rolled_back: int = 0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["index_seconds"] = round(self.index_seconds, 3)
        return out

    def summary(self) -> str:
        parts = [f"{self.rows} rows", f"{self.inserted} inserted"]
        if self.updated:
            parts.append(f"{self.updated} updated")
        parts += [f"{self.skipped} skipped", f"{self.rejected} rejected"]
        line = (
            f"{', '.join(parts)} into {self.table} in {self.seconds:.2f} s ({self.rows_per_s:,.0f} rows/s, "
            f"{self.method}"
        )
        if self.embedded:
            line += f", {self.embedded} embedded"
            if self.truncated:
                line += f", {self.truncated} truncated at the model's limit"
        if self.index_strategy == "rebuild":
            line += f", indexes rebuilt in {self.index_seconds:.1f} s"
        line += ")"
        if self.rejects_path:
            line += f"; rejects: {self.rejects_path}"
        if self.recovered_committed or self.recovered_rolled_back:
            line += (
                f"; first finished an interrupted parallel load: {self.recovered_committed} streams"
                f" committed, {self.recovered_rolled_back} rolled back"
            )
        return line


def default_rejects_path(src: Source) -> Path | None:
    if src.path is None:
        return None
    return src.path.with_name(f"{src.path.stem}.rejects.parquet")


_KEY_DETAIL = re.compile(r"Key \((?P<col>[^)]+)\)=\((?P<val>.*)\) already exists")
_COPY_LINE = re.compile(r"COPY \S+, line (\d+)")


def _rows_with_id(src: Source, id_column: str, value: str, batch_size: int) -> list[int]:
    """Input rows whose id equals value (read again only to explain an error)."""
    found, offset = [], 0
    for batch in src.iter_batches(batch_size, [id_column]):
        col = batch.column(0)
        col = col if _is_string(col.type) else col.cast(pa.string())
        found += [
            offset + int(i) for i in np.flatnonzero(pc.equal(col, value).to_numpy(zero_copy_only=False))
        ]
        offset += batch.num_rows
    return found


def _records_at(src: Source, rows: Sequence[int], batch_size: int) -> pa.Table | None:
    """The input's records at the given row indexes, in that order."""
    wanted = np.asarray(sorted(rows), dtype=np.int64)
    parts, offset = [], 0
    for batch in src.iter_batches(batch_size):
        local = wanted[(wanted >= offset) & (wanted < offset + batch.num_rows)] - offset
        if len(local):
            parts.append(batch.take(pa.array(local)))
        offset += batch.num_rows
    return pa.Table.from_batches(parts) if parts else None


def _write_rejects(
    path: Path, rejects: list[tuple[int, str, str]], records: list[pa.Table], schema: pa.Schema
) -> None:
    order = sorted(range(len(rejects)), key=lambda i: rejects[i][0])
    table = pa.concat_tables([r for r in records if r is not None]) if records else schema.empty_table()
    meta = pa.table(
        {
            "row": pa.array([rejects[i][0] for i in order], pa.int64()),
            "column": pa.array([rejects[i][1] for i in order], pa.string()),
            "reason": pa.array([rejects[i][2] for i in order], pa.string()),
        }
    )
    # records arrive in the same row order as the sorted rejects (both sorted by row)
    for name in table.column_names:
        meta = meta.append_column(name, table.column(name))
    with AtomicParquetWriter(path, meta.schema) as writer:
        writer.write(meta)


def _table_size_at_least(conn: psycopg.Connection, table: str, n: int) -> int:
    """min(count(*), n) without counting a large table to the end."""
    query = sql.SQL("SELECT count(*) FROM (SELECT 1 FROM {} LIMIT %s) s").format(sql.Identifier(table))
    return conn.execute(query, [n]).fetchone()[0]


def load(
    data: str | os.PathLike | pa.Table | Any,
    *,
    model: type[models.Model] | str | None = None,
    text_column: str = "text",
    embedding_column: str | None = None,
    id_column: str | None = None,
    text_field: str = "text",
    vector_field: str = "embedding",
    method: str = "copy",
    batch_size: int | None = None,
    on_conflict: str = "error",
    on_error: str = "abort",
    index_strategy: str = "auto",
    workers: int = 1,
    embedder: Embedder | None = None,
    rejects_path: str | os.PathLike | None = None,
    maintenance_work_mem: str = "1GB",
    using: str = "default",
    progress: bool | None = None,
    name: str | None = None,
) -> LoadReport:
    """Load texts, vectors and metadata into a document model's table; see the module docstring."""
    started = time.perf_counter()
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, not {method!r}")
    if on_conflict not in ON_CONFLICT:
        raise InputError(f"on_conflict must be one of {', '.join(ON_CONFLICT)}, not {on_conflict!r}")
    if on_error not in ON_ERROR:
        raise InputError(f"on_error must be one of {', '.join(ON_ERROR)}, not {on_error!r}")
    if index_strategy not in INDEX_STRATEGIES:
        raise InputError(
            f"index_strategy must be one of {', '.join(INDEX_STRATEGIES)}, not {index_strategy!r}"
        )
    if workers < 1:
        raise InputError(f"workers must be at least 1, not {workers}")
    batch_size = batch_size or DEFAULT_BATCH_SIZE[method]
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, not {batch_size}")
    if isinstance(model, str):
        from django.apps import apps

        try:
            model = apps.get_model(model)
        except (LookupError, ValueError) as exc:
            raise InputError(f"no model {model!r}: {exc}") from exc
    model = model or conf.document_model()

    src = Source(data, name=name)
    if src.num_rows == 0:
        raise InputError(f"{src.name}: no rows")
    cmap = resolve_columns(
        src,
        model,
        text_column=text_column,
        embedding_column=embedding_column,
        id_column=id_column,
        text_field=text_field,
        vector_field=vector_field,
    )
    if cmap.embedding_column is None and embedder is None:
        from vectorstore.embedding import Embedder

        embedder = Embedder(dimensions=cmap.dimensions)
    if embedder is not None and embedder.expected_dimensions is None:
        embedder.expected_dimensions = cmap.dimensions
    if on_conflict != "error" and cmap.id_column is None:
        raise InputError(f"{src.name}: on_conflict={on_conflict!r} needs an id column (none found)")

    table = model._meta.db_table
    report = LoadReport(method=method, table=table, ignored_columns=cmap.ignored_columns, workers=workers)
    staged = on_conflict != "error" or on_error == "skip"
    rejects: list[tuple[int, str, str]] = []
    reject_records: list[pa.Table] = []
    checker = Checker(
        src, cmap, embedder if cmap.embedding_column is None else None, on_error, binary=method == "copy"
    )

    # A parallel load that died among its COMMIT PREPAREDs left prepared transactions holding
    # locks this load would wait on forever: finish them first.
    recovery = pgcopy.recover_prepared_loads(using)
    report.recovered_committed = len(recovery.committed)
    report.recovered_rolled_back = len(recovery.rolled_back)

    try:
        with transaction.atomic(using=using):
            conn = pgcopy.django_connection(using)
            strategy = index_strategy
            if strategy != "keep":
                # Loads that may drop the table's indexes take turns, before reading anything:
                # two of them dropping indexes at once deadlock. An advisory lock, not a table
                # lock, so searches and API inserts carry on meanwhile.
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [f"vectorstore-load:{table}"])
            target = pgcopy.Target.introspect(conn, table, cmap.fields)
            if strategy == "auto":
                existing = _table_size_at_least(conn, table, src.num_rows)
                strategy = "rebuild" if existing < src.num_rows else "keep"
            report.index_strategy = strategy
            dropped: list[pgcopy.IndexDef] = []
            if strategy == "rebuild":
                dropped = pgcopy.rebuildable_indexes(conn, table)
                pgcopy.drop_indexes(conn, dropped)

            write_table = table
            write_target = target
            if staged:
                write_table = f"vectorstore_stage_{uuid.uuid4().hex[:12]}"
                cols = sql.SQL(", ").join(map(sql.Identifier, target.columns))
                conn.execute(
                    sql.SQL(
                        "CREATE TEMP TABLE {} ON COMMIT DROP AS"
                        " SELECT NULL::bigint AS _row, {} FROM {} WITH NO DATA"
                    ).format(sql.Identifier(write_table), cols, sql.Identifier(table))
                )
                write_target = pgcopy.Target(write_table, ("_row", *target.columns), ("int8", *target.types))

            bar = make_bar(src.num_rows, f"load {table}", enabled=progress)
            # Checking and embedding run a thread ahead of the writes, two batches deep: the
            # bound keeps memory independent of the input's size, the thread overlaps the work.
            producer = prefetch(prepared_batches(src, checker, batch_size), depth=2)

            def rows() -> Iterator[tuple]:
                for prepared in producer:
                    report.rows += len(prepared.rows) + len(prepared.rejects)
                    report.embedded += prepared.embedded
                    report.truncated += prepared.truncated
                    if prepared.rejects:
                        rejects.extend(prepared.rejects)
                        reject_records.append(pa.Table.from_batches([prepared.reject_records]))
                    if staged:
                        yield from (
                            (int(r), *row) for r, row in zip(prepared.row_numbers, prepared.rows, strict=True)
                        )
                    else:
                        yield from prepared.rows
                    bar.update(len(prepared.rows) + len(prepared.rejects))

            parallel = workers > 1 and method == "copy" and not staged and strategy == "keep"
            report.workers = workers if parallel else 1
            with bar:
                if parallel:

                    def batches() -> Iterator[list[tuple]]:
                        for prepared in producer:
                            report.rows += len(prepared.rows)
                            yield prepared.rows

                    written = pgcopy.parallel_copy(using, target, batches(), workers, on_batch=bar.update)
                elif method == "copy":
                    written = pgcopy.copy_rows(conn, write_target, rows(), table=write_table)
                else:
                    written = 0
                    chunk: list[tuple] = []
                    for row in rows():
                        chunk.append(row)
                        if len(chunk) >= batch_size:
                            written += pgcopy.insert_rows(conn, write_target, chunk, batch_size)
                            chunk = []
                    written += pgcopy.insert_rows(conn, write_target, chunk, batch_size)

            if staged:
                sql_rejects = _merge_staging(
                    conn, src, cmap, target, write_table, on_conflict, on_error, report
                )
                # ON COMMIT DROP would do, but not when the load runs inside a caller's transaction.
                conn.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(write_table)))
                written -= len(sql_rejects)
                rejects.extend(sql_rejects)
                if sql_rejects:
                    reject_records.append(_records_at(src, [r for r, _, _ in sql_rejects], batch_size))
            else:
                report.inserted = written

            if dropped:
                index_bar, on_progress = index_progress_bar("build indexes", enabled=progress)
                with index_bar:
                    report.index_seconds = pgcopy.build_indexes(
                        conn,
                        dropped,
                        using=using,
                        maintenance_work_mem=maintenance_work_mem,
                        parallel_workers=_parallel_workers(using),
                        progress=on_progress,
                    )
    except pgcopy.ParallelCopyUnavailable as exc:
        raise InputError(str(exc)) from exc
    except psycopg.errors.UniqueViolation as exc:
        raise _explain_unique_violation(exc, src, cmap, table, using, batch_size) from exc
    except psycopg.Error as exc:
        raise _explain_database_error(exc, src) from exc

    report.rejected = len(rejects)
    path = Path(rejects_path) if rejects_path else default_rejects_path(src)
    if rejects and path is not None:
        _write_rejects(path, rejects, reject_records, src.schema)
        report.rejects_path = str(path)
    # Fresh statistics, so the planner sees the new rows (and uses the vector index) at once.
    pgcopy.django_connection(using).execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    report.seconds = time.perf_counter() - started
    report.rows_per_s = report.rows / report.seconds if report.seconds else 0.0
    return report


def _parallel_workers(using: str) -> int | None:
    """Index build workers: all but one core when the server runs on this machine (a Unix socket)."""
    host = connections[using].settings_dict.get("HOST") or ""
    if str(host).startswith("/"):
        return max(0, (os.cpu_count() or 1) - 1)
    return None  # a remote server: keep its own max_parallel_maintenance_workers


def _merge_staging(
    conn: psycopg.Connection,
    src: Source,
    cmap: ColumnMap,
    target: pgcopy.Target,
    stage: str,
    on_conflict: str,
    on_error: str,
    report: LoadReport,
) -> list[tuple[int, str, str]]:
    """Move staged rows into the table by on_conflict; return the rows rejected on the way."""
    rejects: list[tuple[int, str, str]] = []
    st, tb = sql.Identifier(stage), sql.Identifier(target.table)
    if cmap.id_column:
        dupes = conn.execute(
            sql.SQL(
                "SELECT _row, external_id, first FROM (SELECT _row, external_id, row_number() OVER w AS n,"
                " first_value(_row) OVER w AS first FROM {} WHERE external_id IS NOT NULL"
                " WINDOW w AS (PARTITION BY external_id ORDER BY _row)) s WHERE n > 1 ORDER BY _row"
            ).format(st)
        ).fetchall()
        if dupes and on_error == "abort":
            row, value, first = dupes[0]
            raise InputError(
                f"{src.name}: column {cmap.id_column!r}, row {row}: duplicate id {value!r}"
                f" (also at row {first})"
            )
        rejects += [
            (row, cmap.id_column, f"duplicate id {value!r} (also at row {first})")
            for row, value, first in dupes
        ]
        if on_conflict == "error":
            stored = conn.execute(
                sql.SQL(
                    "SELECT s._row, s.external_id FROM {} s JOIN {} t ON t.external_id = s.external_id"
                    " ORDER BY s._row"
                ).format(st, tb)
            ).fetchall()
            if stored and on_error == "abort":
                raise InputError(
                    f"{src.name}: column {cmap.id_column!r}, row {stored[0][0]}: id {stored[0][1]!r}"
                    " is already stored (use on_conflict skip or update)"
                )
            rejects += [(row, cmap.id_column, f"id {value!r} is already stored") for row, value in stored]
        if rejects:
            conn.execute(
                sql.SQL("DELETE FROM {} WHERE _row = ANY(%s)").format(st), [[r for r, _, _ in rejects]]
            )
        if on_conflict == "update":
            # Counted before the upsert: rows whose id is stored now are the ones it will update.
            report.updated = conn.execute(
                sql.SQL("SELECT count(*) FROM {} s JOIN {} t ON t.external_id = s.external_id").format(st, tb)
            ).fetchone()[0]
    cols = sql.SQL(", ").join(map(sql.Identifier, target.columns))
    insert = sql.SQL("INSERT INTO {} ({}) SELECT {} FROM {} ORDER BY _row").format(tb, cols, cols, st)
    if on_conflict == "skip":
        insert += sql.SQL(" ON CONFLICT (external_id) DO NOTHING")
    elif on_conflict == "update":
        updates = sql.SQL(", ").join(
            sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(c), sql.Identifier(c))
            for c in target.columns
            if c != "external_id"
        )
        insert += sql.SQL(" ON CONFLICT (external_id) DO UPDATE SET {}").format(updates)
    with conn.cursor() as cursor:
        cursor.execute(insert)
        affected = cursor.rowcount
    if on_conflict == "skip":
        # Whatever was not inserted was there already (or arrived from a concurrent load meanwhile).
        report.inserted = affected
        report.skipped = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(st)).fetchone()[0] - affected
    elif on_conflict == "update":
        report.inserted = affected - report.updated
    else:
        report.inserted = affected
    return rejects


def _explain_unique_violation(
    exc: psycopg.errors.UniqueViolation, src: Source, cmap: ColumnMap, table: str, using: str, batch_size: int
) -> InputError:
    match = _KEY_DETAIL.search(exc.diag.message_detail or "")
    if not match or not cmap.id_column:
        return InputError(f"{src.name}: {exc.diag.message_primary} ({exc.diag.message_detail})")
    value = match.group("val")
    rows = _rows_with_id(src, cmap.id_column, value, batch_size)
    model = cmap.model
    if model._default_manager.using(using).filter(external_id=value).exists():
        row = rows[0] if rows else "?"
        return InputError(
            f"{src.name}: column {cmap.id_column!r}, row {row}: id {value!r} is already stored in {table}"
            " (use --on-conflict skip or update); nothing was loaded"
        )
    if len(rows) >= 2:
        return InputError(
            f"{src.name}: column {cmap.id_column!r}, row {rows[1]}: duplicate id {value!r}"
            f" (also at row {rows[0]}); nothing was loaded"
        )
    return InputError(
        f"{src.name}: {exc.diag.message_primary} ({exc.diag.message_detail}); nothing was loaded"
    )


def _explain_database_error(exc: psycopg.Error, src: Source) -> InputError:
    diag = exc.diag
    message = diag.message_primary or str(exc)
    where = ""
    line = _COPY_LINE.search(diag.context or "")
    if line:
        where = f" (near input row {int(line.group(1)) - 1})"
    return InputError(f"{src.name}: the database refused the load{where}: {message}; nothing was loaded")


# --------------------------------------------------------------------------- embed_parquet


@dataclass
class EmbedReport:
    rows: int = 0  # rows read
    embedded: int = 0
    skipped: int = 0  # null or empty text: not written, as the notebook drops them
    truncated: int = 0
    seconds: float = 0.0  # reading, embedding and writing, once the model is loaded
    texts_per_s: float = 0.0
    load_seconds: float = 0.0  # loading the model (once per process)
    device: str = ""
    model: str = ""
    output: str = ""

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["texts_per_s"] = round(self.texts_per_s, 1)
        out["load_seconds"] = round(self.load_seconds, 3)
        return out

    def summary(self) -> str:
        line = (
            f"{self.embedded} texts embedded in {self.seconds:.2f} s ({self.texts_per_s:,.1f} texts/s on "
            f"{self.device}, {self.model}) -> {self.output}; {self.skipped} rows skipped (null or empty text)"
        )
        if self.truncated:
            line += f"; {self.truncated} texts truncated at the model's token limit"
        return line


def embed_parquet(
    data: str | os.PathLike | pa.Table | Any,
    output: str | os.PathLike,
    *,
    text_column: str = "text",
    embedder: Embedder | None = None,
    read_batch_size: int = 16384,
    progress: bool | None = None,
) -> EmbedReport:
    """Embed a table's texts into OUTPUT: every input column kept, plus ``embedding`` (float32 lists).

    Reads and writes in batches (memory bounded by the batch); the output appears only once complete.
    Batches are large because sentence-transformers sorts each call's texts by length: the
    more texts per call, the less padding (on a GPU, 2,048 per call cost 15% against one call).
    """
    from vectorstore.embedding import Embedder

    src = Source(data)
    text_type = src.require(text_column, "text")
    if not _is_string(text_type):
        raise InputError(f"{src.name}: column {text_column!r} must hold strings, not {text_type}")
    embedder = embedder or Embedder()
    loading = time.perf_counter()
    model = embedder.model  # load (and check) before opening the output
    dims = embedder.dimensions
    started = time.perf_counter()
    fields = [f for f in src.schema if f.name != "embedding"]
    schema = pa.schema([*fields, pa.field("embedding", pa.list_(pa.float32()))], metadata=src.schema.metadata)
    report = EmbedReport(
        device=str(model.device), model=embedder.label, output=str(output), load_seconds=started - loading
    )
    bar = make_bar(src.num_rows, "embed", unit="texts", enabled=progress)
    # Reading the next chunk and writing the last one run in threads beside the model,
    # so that on a GPU the model is not left waiting on parquet I/O.
    with (
        bar,
        AtomicParquetWriter(output, schema) as writer,
        concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="parquet-writer") as pool,
    ):
        pending: concurrent.futures.Future | None = None
        try:
            for batch in prefetch(src.iter_batches(read_batch_size)):
                text = batch.column(text_column)
                empty = pc.fill_null(pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(text)), 0), True)
                if pc.any(empty).as_py():
                    batch = batch.filter(pc.invert(empty))
                    report.skipped += int(pc.sum(empty).as_py())
                texts = batch.column(text_column).to_pylist()
                result = embedder.encode_counted(texts)
                vectors = pa.FixedSizeListArray.from_arrays(pa.array(result.vectors.reshape(-1)), dims)
                columns = [batch.column(f.name) for f in fields]
                out = pa.RecordBatch.from_arrays(
                    [*columns, vectors.cast(pa.list_(pa.float32()))], schema=schema
                )
                if pending is not None:
                    pending.result()  # one write in flight at most: memory stays bounded
                pending = pool.submit(writer.write, out)
                report.rows += len(text)
                report.embedded += len(texts)
                report.truncated += result.truncated
                bar.update(len(text))
        finally:
            if pending is not None:
                pending.result()
    report.seconds = time.perf_counter() - started
    report.texts_per_s = report.embedded / report.seconds if report.seconds else 0.0
    return report


# --------------------------------------------------------------------------- API writes


def insert_documents(
    items: Sequence[dict[str, Any]],
    *,
    model: type[models.Model] | None = None,
    embedder: Embedder | None = None,
    using: str = "default",
) -> list[int]:
    """Embed the items' texts in one batch and write them with one binary COPY; return their ids in order.

    The ids are drawn from the table's sequence first, so that COPY (which returns
    nothing) can write them and the caller still learns them. One transaction:
    an id already stored fails the whole call with IntegrityError.
    """
    from vectorstore.embedding import Embedder

    model = model or conf.document_model()
    table = model._meta.db_table
    dims = model._meta.get_field("embedding").dimensions
    embedder = embedder or Embedder(dimensions=dims)
    vectors = embedder.encode([item["text"] for item in items])
    now = timezone.now()
    with transaction.atomic(using=using):
        conn = pgcopy.django_connection(using)
        ids = [
            row[0]
            for row in conn.execute(
                "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
                [sql.Identifier(table).as_string(conn), len(items)],
            )
        ]
        columns = ("id", "external_id", "text", "embedding", "category", "metadata", "created_at")
        target = pgcopy.Target.introspect(conn, table, columns)
        rows = (
            (
                pk,
                item.get("external_id"),
                item["text"],
                vector,
                item.get("category") or "",
                pgcopy.jsonb(item.get("metadata") or {}),
                item.get("created_at") or now,
            )
            for pk, item, vector in zip(ids, items, pgcopy.encode_vectors(vectors), strict=True)
        )
        pgcopy.copy_rows(conn, target, rows)
    return ids
