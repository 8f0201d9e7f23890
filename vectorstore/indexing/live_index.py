"""A vector index of any kind created on a live table (``manage.py vector_index create``): built
concurrently with memory sized for its graph, and with ``replace`` the table's other vector indexes
dropped once every process's search follows the new one."""

from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from django.db import connections, models
from psycopg import sql

from vectorstore import conf, search, tuning
from vectorstore.indexing import build_memory, vector_indexes
from vectorstore.indexing.indexes import (
    IndexProgress,
    drop_invalid_indexes,
    parallel_workers,
    relay_progress,
    server_notices,
    spill_warnings,
)
from vectorstore.loading.pgcopy import new_connection
from vectorstore.models import SearchTuning


@dataclass
class CreateReport:
    """What ``create_index`` built, dropped and measured."""

    table: str
    index: str
    method: str
    quantization: str | None
    metric: str
    rows: int
    size_bytes: int
    seconds: float
    maintenance_work_mem: str
    dropped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tuned: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        return out

    def summary(self) -> str:
        kind = self.quantization or "full precision"
        line = (
            f"built {self.index} ({self.method}, {kind}, {self.metric}) on {self.table} concurrently:"
            f" {self.rows:,} rows, {build_memory.pretty(self.size_bytes)}, {self.seconds:.1f} s"
            f" (maintenance_work_mem {self.maintenance_work_mem})"
        )
        if self.dropped:
            line += f"; replaced {', '.join(self.dropped)}"
        if self.tuned:
            tuned = self.tuned
            measured = "no recall measured" if tuned["recall"] is None else f"recall ~{tuned['recall']:.3f}"
            line += (
                f"; search tuned: {tuned['setting']} {tuned['value']} ({measured}, {tuned['query_model']})"
            )
        return line


def default_name(table: str, method: str, quantization: str | None, metric: str) -> str:
    """``<table>_<method>_<kind>[_<metric>]``, shortened with a hash where PostgreSQL's 63 bytes would cut."""
    name = f"{table}_{method}_{quantization or 'full'}"
    if quantization != "binary" and metric != "cosine":
        name += f"_{metric}"
    if len(name.encode()) <= 59:  # room for the "_new" of a replacement built beside it
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name.encode()[:50].decode(errors='ignore')}_{digest}"


def create_index(
    model: type[models.Model],
    *,
    method: str = "hnsw",
    quantization: str | None = None,
    metric: str | None = None,
    m: int | None = None,
    ef_construction: int | None = None,
    lists: int | None = None,
    name: str | None = None,
    replace: bool = False,
    maintenance_work_mem: str | None = None,
    using: str = "default",
    progress: Any = None,
    tune: bool = True,
    grace: float | None = None,
) -> CreateReport:
    """Build a vector index of the kind with ``CREATE INDEX CONCURRENTLY`` (searches and writes go on),
    with maintenance_work_mem sized for its graph; with ``replace``, then drop the table's other vector
    indexes on the column, concurrently.

    Searches prefer the newest index, and each process reads the table's indexes at most every
    INDEX_LOOKUP_SECONDS: the old indexes are dropped only after that long (``grace``), so that no
    search is left ordering by an index that is gone (it would still answer, by a slow exact scan).
    A failed build leaves no INVALID index behind. Raises ValueError for bad options.
    """
    started = time.perf_counter()
    metric = metric or conf.distance()
    embedding = model._meta.get_field("embedding")
    table = model._meta.db_table
    dimensions = embedding.dimensions
    name = name or default_name(table, method, quantization, metric)
    index = vector_indexes.VectorIndex(
        name=name,
        field="embedding",
        dimensions=dimensions,
        method=method,
        quantization=quantization,
        metric=metric,
        m=m,
        ef_construction=ef_construction,
        lists=lists,
    )
    before = vector_indexes.table_indexes(table, embedding.column, using)
    taken = {i.name for i in before}
    if name in taken and not replace:
        raise ValueError(f"name={name!r}: an index of that name exists (add replace=True to rebuild it)")
    build_name = f"{name}_new" if name in taken else name
    index.name = build_name
    with connections[using].schema_editor(collect_sql=True, atomic=False) as editor:
        statement = str(index.create_sql(model, editor, concurrently=True))
    index.name = name

    conn = new_connection(using, autocommit=True)
    notices: list[str] = []
    report = CreateReport(table, name, method, quantization, metric, 0, 0, 0.0, "")
    try:
        drop_invalid_indexes(conn, table)
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(build_name)))
        report.rows = conn.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))
        ).fetchone()[0]
        workers = parallel_workers(using)
        memory = build_memory.plan(
            [build_memory.BuildIndex(build_name, method, quantization, dimensions, m or 16)],
            report.rows,
            using=using,
            requested=maintenance_work_mem,
            parallel=bool(workers),
        )
        report.maintenance_work_mem = memory.setting
        if memory.warning():
            report.warnings.append(memory.warning())
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", [memory.setting])
        if workers is not None:
            conn.execute(
                "SELECT set_config('max_parallel_maintenance_workers', %s, false)",
                [str(workers)],
            )

        with (
            IndexProgress(using, conn.info.backend_pid, relay_progress(progress, [build_name])),
            server_notices(conn, notices),
        ):
            try:
                conn.execute(statement)
            except BaseException:
                drop_invalid_indexes(conn, table)
                raise
        report.warnings += spill_warnings(notices)
        conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))  # the new expression's statistics
        vector_indexes.forget()
        if replace:
            old = [i.name for i in before if i.name != build_name]
            if old:
                # Every process's lookup must have seen the new index before the old ones go.
                time.sleep(conf.index_lookup_seconds() if grace is None else grace)
            for old_name in old:
                conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(old_name)))
            if build_name != name:
                conn.execute(
                    sql.SQL("ALTER INDEX {} RENAME TO {}").format(
                        sql.Identifier(build_name), sql.Identifier(name)
                    )
                )
            SearchTuning.objects.using(using).filter(db_table=table).exclude(index_name=name).delete()
            SearchTuning.objects.using(using).filter(index_name=name).delete()  # a new graph: tuned afresh
            report.dropped = old
            vector_indexes.forget()
        report.size_bytes = (
            conn.execute("SELECT pg_relation_size(to_regclass(%s))", [name]).fetchone()[0] or 0
        )
    finally:
        conn.close()
    search.forget_tuning()
    if tune:
        tuned = tuning.retune(model, using=using)
        report.tuned = tuned.as_dict() if tuned else None
    report.seconds = time.perf_counter() - started
    return report
