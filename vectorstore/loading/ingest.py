"""The loading pipelines behind the commands, callable from Python on a path, an Arrow table or a DataFrame.

    from vectorstore.loading.ingest import load, embed_parquet
    report = load("reviews.parquet")                      # or load(df), load(arrow_table)
    report = load(df, on_conflict="update", method="insert", batch_size=1000)
    embed_parquet("texts.parquet", "embedded.parquet")

``load`` reads the input in batches, checks each row, embeds texts that have no vector (in a producer
thread, so embedding overlaps the writes), and writes with binary COPY (or batched INSERT) in one
transaction. On an empty table, or a load larger than the table, it drops the table's secondary indexes
first and builds them after: pgvector's own advice (COPY into an HNSW index is several times slower;
benchmarks/README.md has the figures). A model that keeps passages gets them in the same transaction.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psycopg
import pyarrow as pa
from django.db import connections, models, transaction

from vectorstore import conf, passages, tuning
from vectorstore.embedding import Embedder
from vectorstore.indexing import indexes
from vectorstore.loading import pgcopy, twophase
from vectorstore.loading.parquet import Source
from vectorstore.loading.rejects import (
    RejectLog,
    default_rejects_path,
    explain_database_error,
    explain_unique_violation,
)
from vectorstore.loading.report import LoadReport
from vectorstore.loading.rows import Checker, ColumnMap, prefetch, prepared_batches, resolve_columns
from vectorstore.passages import files as passage_files
from vectorstore.progress import index_progress_bar, make_bar
from vectorstore.reembed import record
from vectorstore.tuning import first_load as load_tuning
from vectorstore.tuning import status as tuning_status
from vectorstore.validation import InputError

logger = logging.getLogger("vectorstore")

METHODS = ("copy", "insert")
ON_CONFLICT = ("error", "skip", "update")
ON_ERROR = ("abort", "skip")
INDEX_STRATEGIES = ("auto", "rebuild", "keep")
TUNE = ("auto", "now", "off")
DEFAULT_BATCH_SIZE = {"copy": 5000, "insert": 1000}


@dataclass(frozen=True)
class LoadOptions:
    """How a load reads its input and writes the table: ``load()``'s keyword arguments, checked."""

    model: type[models.Model] | str | None = None  # default: VECTORSTORE DOCUMENT_MODEL
    text_column: str = "text"
    embedding_column: str | None = None  # default: "embedding" or "embeddings" if present
    id_column: str | None = None  # default: "external_id" or "id" if present
    text_field: str = "text"
    vector_field: str = "embedding"
    method: str = "copy"  # copy | insert
    batch_size: int | None = None  # default: DEFAULT_BATCH_SIZE[method]
    on_conflict: str = "error"  # ids already stored: error | skip | update
    on_error: str = "abort"  # bad rows: abort (nothing is loaded) | skip (to the rejects file)
    index_strategy: str = "auto"  # auto | rebuild (drop, load, build) | keep
    workers: int = 1  # parallel COPY streams into a populated table
    rejects_path: str | os.PathLike | None = None  # default: INPUT.rejects.parquet
    maintenance_work_mem: str | None = None  # for index builds; None: sized for the graph (build_memory)
    using: str = "default"
    progress: bool | None = None  # default: on a terminal
    name: str | None = None  # the input's name in messages
    # After a load that changed the table substantially: "auto" measures recall where it costs the load
    # nothing (the query log, or the model already loaded in this process) and else stores the setting for
    # an unmeasured table of its size, measured later by the site (autotune) or tune_search; "now" loads the
    # model to measure on pseudo-queries during the index build (0.62-0.68x an expert's load on two cores);
    # "off" (or False) leaves the stored tuning as it is.
    tune: bool | str = "auto"

    def checked(self) -> LoadOptions:
        """These options with defaults filled in and the model resolved; InputError naming a bad one."""
        for param, value, allowed in (
            ("method", self.method, METHODS),
            ("on_conflict", self.on_conflict, ON_CONFLICT),
            ("on_error", self.on_error, ON_ERROR),
            ("index_strategy", self.index_strategy, INDEX_STRATEGIES),
        ):
            if value not in allowed:
                raise InputError(f"{param} must be one of {', '.join(allowed)}, not {value!r}")
        tune = {True: "auto", False: "off"}.get(self.tune, self.tune)  # type: ignore[call-overload]
        if tune not in TUNE:
            raise InputError(f"tune must be one of {', '.join(TUNE)}, not {self.tune!r}")
        if self.workers < 1:
            raise InputError(f"workers must be at least 1, not {self.workers}")
        batch_size = self.batch_size or DEFAULT_BATCH_SIZE[self.method]
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, not {batch_size}")
        return replace(self, batch_size=batch_size, model=resolve_model(self.model), tune=tune)

    @property
    def staged(self) -> bool:
        """Rows go through a staging table: to skip or update stored ids, or to reject bad ones."""
        return self.on_conflict != "error" or self.on_error == "skip"


def resolve_model(model: type[models.Model] | str | None) -> type[models.Model]:
    """A document model from a class, an 'app_label.Model' label (InputError if none), or None (the
    configured DOCUMENT_MODEL)."""
    if isinstance(model, str):
        from django.apps import apps

        try:
            return apps.get_model(model)
        except (LookupError, ValueError) as exc:
            raise InputError(f"no model {model!r}: {exc}") from exc
    return model or conf.document_model()


@dataclass
class _Plan:
    """Where a load writes, decided inside its transaction."""

    target: pgcopy.Target  # the table
    write_target: pgcopy.Target  # the table, or the staging table
    strategy: str  # keep | rebuild
    dropped: list[indexes.IndexDef]


def load(
    data: str | os.PathLike | pa.Table | Any, *, embedder: Embedder | None = None, **options: Any
) -> LoadReport:
    """Load texts, vectors and metadata into a document model's table; see the module docstring.

    ``options`` are LoadOptions' fields. Raises InputError naming the input, column and row at fault;
    on any error nothing is loaded.
    """
    started = time.perf_counter()
    opts = LoadOptions(**options).checked()
    src = Source(data, name=opts.name)
    if src.num_rows == 0:
        raise InputError(f"{src.name}: no rows")
    cmap = resolve_columns(
        src,
        opts.model,
        text_column=opts.text_column,
        embedding_column=opts.embedding_column,
        id_column=opts.id_column,
        text_field=opts.text_field,
        vector_field=opts.vector_field,
    )
    if opts.on_conflict != "error" and cmap.id_column is None:
        raise InputError(f"{src.name}: on_conflict={opts.on_conflict!r} needs an id column (none found)")
    embedder = _embedder_for(cmap, embedder, opts.using)
    report = LoadReport(
        method=opts.method, table=cmap.model._meta.db_table, ignored_columns=cmap.ignored_columns
    )
    # A parallel load that died among its COMMIT PREPAREDs left prepared transactions holding locks this
    # load would wait on forever: finish them first.
    recovery = twophase.recover_prepared_loads(opts.using)
    report.recovered_committed, report.recovered_rolled_back = map(
        len, (recovery.committed, recovery.rolled_back)
    )
    rejects = RejectLog(src, opts.batch_size)
    vectors_of = record.made_by(src.schema.metadata, embedder)
    try:
        with transaction.atomic(using=opts.using):
            conn = pgcopy.django_connection(opts.using)
            plan = _plan(conn, src, cmap, opts)
            # The vectors are the table's model's, or the table holds none yet and takes their model: after
            # the plan's locks on the table, so that two loads take their locks in one order.
            if vectors_of:
                recorded = record.accept(cmap.model, opts.using, *vectors_of)
            else:  # vectors made elsewhere: the file does not say by which model
                recorded = record.read(cmap.model, opts.using)
            report.index_strategy = plan.strategy
            # A first load's tuning: its queries and their truth, made while the indexes build.
            tuner = load_tuning.LoadTuning.for_load(conn, src, cmap, plan.dropped, opts.tune)
            checker = Checker(src, cmap, embedder, opts.on_error, binary=opts.method == "copy")
            written = _write(conn, plan, src, checker, opts, report, rejects, tuner)
            if opts.staged:
                _merge(conn, plan, src, cmap, opts, report, rejects)
            else:
                report.inserted = written
            if passages.enabled(cmap.model):  # in the same transaction: no document without them
                embedder = embedder or record.embedder(cmap.model, opts.using)
                report.passages, rebuilt = passage_files.write_missing(
                    conn,
                    src,
                    cmap.model,
                    cmap.text_column,
                    cmap.passage_column,
                    embedder,
                    report.inserted + report.updated,
                    opts.progress,
                    plan.strategy == "rebuild",
                    report.warnings,
                )
                if rebuilt:  # the passage table's indexes, dropped while its rows were written
                    model = passages.passage_model(cmap.model)
                    report.index_seconds += _build_indexes(conn, model, rebuilt, opts, report)
            if plan.dropped:
                if tuner is not None:
                    tuner.start()
                report.index_seconds += _build_indexes(conn, cmap.model, plan.dropped, opts, report)
            with connections[opts.using].cursor() as cursor:  # a swap came first: nothing is written
                record.check_version(cursor, report.table, -1 if recorded.adopt else recorded.version)
    except record.ModelChanged as exc:
        raise InputError(
            f"{report.table}: its embedding model changed during the load (manage.py reembed swapped it): "
            "load again"
        ) from exc
    except record.ModelMismatch as exc:
        raise InputError(str(exc)) from exc
    except twophase.ParallelCopyUnavailable as exc:
        raise InputError(str(exc)) from exc
    except psycopg.errors.UniqueViolation as exc:
        raise explain_unique_violation(exc, src, cmap, opts.using, opts.batch_size) from exc
    except psycopg.Error as exc:
        raise explain_database_error(exc, src) from exc

    report.rejected = len(rejects)
    path = Path(opts.rejects_path) if opts.rejects_path else default_rejects_path(src)
    if len(rejects) and path is not None:
        rejects.write(path)
        report.rejects_path = str(path)
    pgcopy.analyze(pgcopy.django_connection(opts.using), report.table)
    if opts.tune != "off":
        changed = None if plan.strategy == "rebuild" else report.inserted + report.updated
        prepared = tuner.result() if tuner is not None else None
        tuned = tuning.retune(
            cmap.model, changed=changed, using=opts.using, prepared=prepared, later=opts.tune == "auto"
        )
        if tuned is not None and prepared is not None:
            tuned.model_seconds, tuned.prepare_seconds = tuner.model_seconds, tuner.prepare_seconds
        report.tuned = tuned.as_dict() if tuned else None
        if tuned is None and changed is not None:
            stale = tuning_status.staleness(cmap.model, opts.using)
            if stale and stale.startswith("the table holds"):
                report.warnings.append(
                    f"the stored search tuning is out of date ({stale}): the site measures it again"
                    " (AUTO_TUNE), or run tune_search"
                )
    report.seconds = time.perf_counter() - started
    report.rows_per_s = report.rows / report.seconds if report.seconds else 0.0
    return report


def _embedder_for(cmap: ColumnMap, embedder: Embedder | None, using: str) -> Embedder | None:
    """The embedder for a file without vectors (the model that made the table's vectors, its record,
    unless given), checked against the vector field's dimension; None when the file brings its vectors."""
    if cmap.embedding_column is not None:
        return None
    if embedder is None:
        embedder = record.embedder(cmap.model, using)
    if embedder.expected_dimensions is None:
        embedder.expected_dimensions = cmap.dimensions
    return embedder


def _plan(conn: psycopg.Connection, src: Source, cmap: ColumnMap, opts: LoadOptions) -> _Plan:
    """Take the load's turn, choose the index strategy, drop indexes to rebuild, open the staging table."""
    table = cmap.model._meta.db_table
    strategy = opts.index_strategy
    if strategy != "keep":
        pgcopy.take_load_turn(conn, table)  # before reading anything: see its docstring
    target = pgcopy.Target.introspect(conn, table, cmap.fields)
    if strategy == "auto":
        existing = pgcopy.table_size_at_least(conn, table, src.num_rows)
        strategy = "rebuild" if existing < src.num_rows else "keep"
    dropped: list[indexes.IndexDef] = []
    if strategy == "rebuild":
        dropped = indexes.rebuildable_indexes(conn, table)
        indexes.drop_indexes(conn, dropped)
    write_target = pgcopy.create_staging(conn, target) if opts.staged else target
    return _Plan(target, write_target, strategy, dropped)


def _write(
    conn: psycopg.Connection,
    plan: _Plan,
    src: Source,
    checker: Checker,
    opts: LoadOptions,
    report: LoadReport,
    rejects: RejectLog,
    tuner: load_tuning.LoadTuning | None = None,
) -> int:
    """Check (and embed) the input a thread ahead, and write its rows by the plan; returns rows written.
    ``tuner`` is handed each batch's vectors (a first load's tuning reads them rather than the input
    again)."""
    bar = make_bar(src.num_rows, f"load {report.table}", enabled=opts.progress)
    # Checking and embedding run a thread ahead of the writes, two batches deep: the
    # bound keeps memory independent of the input's size, the thread overlaps the work.
    batches = prefetch(prepared_batches(src, checker, opts.batch_size), depth=2)

    def rows() -> Iterator[tuple]:
        for prepared in batches:
            report.rows += len(prepared.rows) + len(prepared.rejects)
            report.embedded += prepared.embedded
            report.truncated += prepared.truncated
            rejects.add_batch(prepared.rejects, prepared.reject_records)
            if tuner is not None and prepared.vectors is not None:
                tuner.feed(prepared.vectors)
            if opts.staged:  # the input row number goes first: merge and rejects speak of it
                yield from (
                    (int(r), *row) for r, row in zip(prepared.row_numbers, prepared.rows, strict=True)
                )
            else:
                yield from prepared.rows
            bar.update(len(prepared.rows) + len(prepared.rejects))

    # Parallel streams commit apart: a model's passages are written in the load's own transaction.
    parallel = opts.workers > 1 and opts.method == "copy" and not opts.staged and plan.strategy == "keep"
    parallel = parallel and not passages.enabled(opts.model)
    report.workers = opts.workers if parallel else 1
    with bar:
        if parallel:

            def row_batches() -> Iterator[list[tuple]]:
                for prepared in batches:
                    report.rows += len(prepared.rows)
                    yield prepared.rows

            return twophase.parallel_copy(
                opts.using, plan.target, row_batches(), opts.workers, on_batch=bar.update
            )
        if opts.method == "copy":
            return pgcopy.copy_rows(conn, plan.write_target, rows())
        written = 0
        chunk: list[tuple] = []
        for row in rows():
            chunk.append(row)
            if len(chunk) >= opts.batch_size:
                written += pgcopy.insert_rows(conn, plan.write_target, chunk, opts.batch_size)
                chunk = []
        return written + pgcopy.insert_rows(conn, plan.write_target, chunk, opts.batch_size)


def _merge(
    conn: psycopg.Connection,
    plan: _Plan,
    src: Source,
    cmap: ColumnMap,
    opts: LoadOptions,
    report: LoadReport,
    rejects: RejectLog,
) -> None:
    """Move the staged rows into the table by on_conflict, rejecting duplicate ids (and stored ones)."""
    stage, table = plan.write_target, plan.target.table
    found: list[tuple[int, str, str]] = []
    if cmap.id_column:
        dupes = pgcopy.staged_duplicate_ids(conn, stage)
        if dupes and opts.on_error == "abort":
            row, value, first = dupes[0]
            raise InputError(
                f"{src.name}: column {cmap.id_column!r}, row {row}: duplicate id {value!r}"
                f" (also at row {first})"
            )
        found += [
            (row, cmap.id_column, f"duplicate id {value!r} (also at row {first})")
            for row, value, first in dupes
        ]
        if opts.on_conflict == "error":
            stored = pgcopy.staged_ids_stored(conn, stage, table)
            if stored and opts.on_error == "abort":
                raise InputError(
                    f"{src.name}: column {cmap.id_column!r}, row {stored[0][0]}: id {stored[0][1]!r}"
                    " is already stored (use on_conflict='skip' or on_conflict='update')"
                )
            found += [(row, cmap.id_column, f"id {value!r} is already stored") for row, value in stored]
        if found:
            pgcopy.delete_staged(conn, stage, [r for r, _, _ in found])
        if opts.on_conflict == "update":
            # Counted before the upsert: rows whose id is stored now are the ones it will update.
            report.updated = pgcopy.count_staged_ids_stored(conn, stage, table)
            if passages.enabled(cmap.model):  # a changed text's passages are written again
                passages.drop_changed(conn, cmap.model, stage.table)
    affected = pgcopy.merge_staged(conn, stage, plan.target, opts.on_conflict)
    if opts.on_conflict == "skip":
        # Whatever was not inserted was there already (or arrived from a concurrent load meanwhile).
        report.inserted = affected
        report.skipped = pgcopy.count_rows(conn, stage.table) - affected
    elif opts.on_conflict == "update":
        report.inserted = affected - report.updated
    else:
        report.inserted = affected
    pgcopy.drop_staging(conn, stage)
    rejects.add_rows(found)


def _build_indexes(
    conn: psycopg.Connection,
    model: type[models.Model],
    dropped: list[indexes.IndexDef],
    opts: LoadOptions,
    report: LoadReport,
) -> float:
    """Build the model's dropped indexes with maintenance_work_mem sized for the largest graph; a graph
    that will not fit, and pgvector's notice if a build spilled to disk, become the report's warnings."""
    memory = indexes.size_build(
        conn, model._meta.db_table, dropped, model, opts.using, opts.maintenance_work_mem
    )
    report.index_memory = memory.setting
    if memory.warning():
        report.warnings.append(memory.warning())
        logger.warning(memory.warning())
    notices: list[str] = []
    index_bar, on_progress = index_progress_bar("build indexes", enabled=opts.progress)
    with index_bar:
        seconds = indexes.build_indexes(
            conn,
            dropped,
            using=opts.using,
            maintenance_work_mem=memory.setting,
            parallel_workers=indexes.parallel_workers(opts.using),
            progress=on_progress,
            notices=notices,
        )
    for warning in indexes.spill_warnings(notices):
        report.warnings.append(warning)
        logger.warning(warning)
    return seconds
