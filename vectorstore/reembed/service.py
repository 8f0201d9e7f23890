"""``reembed()``: a table moved to another embedding model while the site serves (``manage.py reembed``);
``drop_old()`` removes the previous model's vectors kept for ``reembed --rollback``.

The steps (``vectorstore.reembed.shadow``): prepare the shadow column (or go on with the one a killed run
left), fill it with this process's workers (and any others, here or on other machines, running the same
command), build its indexes, fill what was written meanwhile, swap, then tune the new index on the new
model's pseudo-queries. Searches run throughout: each answer comes from one model's vectors (the record's
version check, ``vectorstore.reembed.record``).
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import django
from django.db import connections, models, transaction
from psycopg import sql

from vectorstore import conf, passages, pg
from vectorstore.embedding import Embedder, EmbeddingError, bundled_model_path, declared_dimension
from vectorstore.progress import make_bar
from vectorstore.reembed import record, shadow

# Rounds of filling while other workers finish their chunks before the swap (0.2 s apart).
WAIT_ROUNDS = 3000


class ReembedError(EmbeddingError):
    """A move the table cannot make (its message says why)."""


@dataclass
class ReembedReport:
    """What a ``reembed`` did."""

    table: str
    old_model: str = ""
    new_model: str = ""
    dimensions: int | None = None
    swapped: bool = False
    rolled_back: bool = False
    documents: int = 0  # document rows this process embedded
    passages: int = 0  # passage rows this process embedded
    late: int = 0  # rows written during the run, embedded under the swap's lock
    indexes: list[str] = field(default_factory=list)
    version: int | None = None
    seconds: float = 0.0
    embed_seconds: float = 0.0
    tuning: dict[str, Any] | None = None
    note: str = ""

    @property
    def rows_per_s(self) -> float:
        return (self.documents + self.passages) / self.embed_seconds if self.embed_seconds else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["seconds"], out["embed_seconds"] = round(self.seconds, 3), round(self.embed_seconds, 3)
        return out

    def summary(self) -> str:
        if not self.swapped:
            return f"{self.table}: {self.note}"
        verb = "rolled back to" if self.rolled_back else "moved to"
        tuned = ""
        if self.tuning:
            tuned = f"; tuned: {self.tuning.get('knob')} {self.tuning.get('value')}"
        return (
            f"{self.table} {verb} {self.new_model} ({self.dimensions} dimensions, version {self.version}): "
            f"{self.documents:,} rows and {self.passages:,} passages embedded here in "
            f"{self.embed_seconds:.1f} s "
            f"({self.rows_per_s:,.1f} rows/s), {self.late} written meanwhile; {self.seconds:.1f} s in all"
            f"{tuned}; the old vectors are kept for reembed --rollback (reembed --drop-old removes them)"
        )


def _column_dimensions(model: type[models.Model], using: str) -> int:
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT atttypmod FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attname = %s",
            [connection.ops.quote_name(model._meta.db_table), shadow.column(model)],
        )
        return cursor.fetchone()[0]


def _target(name: str, device: str | None, batch_size: int | None, load: bool) -> tuple[int, Embedder | None]:
    """The new model's size (from its files where they say, else by loading it) and its embedder."""
    embedder = Embedder(model=name or bundled_model_path(), device=device, batch_size=batch_size)
    dims = declared_dimension(name or None)
    if dims is None or load:
        dims = embedder.dimensions
    return dims, embedder


def _check_passages(document: type[models.Model], old: Embedder, new: Embedder, using: str) -> None:
    """Passages stay where they are only if both models cut texts the same (tokenizer and window)."""
    passage = passages.passage_model(document)
    if passage is None or not passage._default_manager.using(using).exists():
        return
    same = (
        passages.cut(old) == passages.cut(new)
        and old.model.tokenizer.get_vocab() == new.model.tokenizer.get_vocab()
    )
    if not same:
        raise ReembedError(
            f"{passage._meta.db_table}: {new.label} cuts texts into other passages than {old.label} (another "
            "tokenizer or window); reembed moves passages in place only between models that cut alike"
        )


def _prepare(document: type[models.Model], using: str, name: str, dims: int, print_: str) -> str:
    """The shadow column ready to fill toward the model: 'resume' (a run left it), 'new', or 'none' (the
    table has the model already)."""
    table = document._meta.db_table
    with transaction.atomic(using=using):
        # The tables first, then the record's row, in the swap's order: a first save() into an empty
        # table writes its row after its own lock on the table, so the other order could deadlock.
        pg.django_connection(using).execute(
            sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                sql.SQL(", ").join(sql.Identifier(m._meta.db_table) for m in shadow.tables(document))
            )
        )
        stored = record.read_table(table, using)
        if stored is None:  # a table never recorded: its column's vectors are the configured model's
            configured = record.configured(document)
            record._store(
                document,
                using,
                configured,
                _column_dimensions(document, using),
                record.fingerprint(configured),
            )
        with connections[using].cursor() as cursor:
            cursor.execute(f"SELECT 1 FROM {record.RECORD} WHERE db_table = %s FOR UPDATE", [table])
        r = record.read_table(table, using)
        kept = r.shadow_state in ("filling", "previous") and shadow.exists(document, using)
        if kept and (r.shadow_fingerprint, r.shadow_dimensions) == (print_, dims):
            _set_shadow(table, using, name, dims, print_, "filling")
            return "resume"
        if r.fingerprint == print_ and r.dimensions == dims:
            if r.shadow_state == "filling":  # a run toward another model is given up: back to this one
                shadow.drop(document, using)
                _set_shadow(table, using, "", None, "", "")
            return "none"
        shadow.drop(document, using)
        shadow.add(document, dims, using)
        _set_shadow(table, using, name, dims, print_, "filling")
    record.forget(table)
    return "new"


def _set_shadow(table: str, using: str, name: str, dims: int | None, print_: str, state: str) -> None:
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"UPDATE {record.RECORD} SET shadow_model = %s, shadow_dimensions = %s, shadow_fingerprint = %s,"
            " shadow_state = %s WHERE db_table = %s",
            [name, dims, print_, state, table],
        )


def _fill_all(document: type[models.Model], embedder: Embedder, using: str, bar: Any) -> tuple[int, int]:
    """This process's share of the documents' and the passages' shadow vectors."""
    counts = []
    for model in shadow.tables(document):
        counts.append(shadow.fill(model, embedder.encode, using, bar.update))
    return counts[0], sum(counts[1:])


def _spawned_worker(
    label: str, name: str, device: str | None, batch_size: int | None, using: str, db: str
) -> tuple:
    """A worker process (spawned: torch must not be forked; Django set up by the pool), on this database."""
    from django.apps import apps

    connections[using].settings_dict["NAME"] = db  # a test database's name is the parent's own
    document = apps.get_model(label)
    embedder = Embedder(model=name or bundled_model_path(), device=device, batch_size=batch_size)

    class _NoBar:
        def update(self, n: int) -> None:
            pass

    return _fill_all(document, embedder, using, _NoBar())


def reembed(
    document: type[models.Model] | None = None,
    *,
    model: str | None = None,
    rollback: bool = False,
    batch_size: int | None = None,
    workers: int = 1,
    device: str | None = None,
    using: str = "default",
    tune: bool = True,
    progress: bool | None = None,
) -> ReembedReport:
    """Move the table (and its passages) to ``model`` (default: the configured one), or back to the
    previous model (``rollback``); see the module's docstring."""
    started = time.perf_counter()
    document = document or conf.document_model()
    if workers < 1:
        raise ReembedError(f"workers={workers}: must be at least 1")
    table = document._meta.db_table
    r = record.ensure(document, using)
    report = ReembedReport(table=table, old_model=r.label)
    if rollback:
        if r.shadow_state != "previous" or not shadow.exists(document, using):
            raise ReembedError(f"{table}: no previous model's vectors are kept (nothing to roll back to)")
        name = r.shadow_model
    else:
        name = model if model is not None else record.configured(document)
    print_ = record.fingerprint(name)
    dims, embedder = _target(name, device, batch_size, load=workers == 1)
    state = _prepare(document, using, name, dims, print_)
    report.new_model, report.dimensions, report.rolled_back = record.label(name), dims, rollback
    if state == "none":
        report.note = f"its vectors are {record.label(name)}'s already: nothing to do"
        report.seconds = time.perf_counter() - started
        return report
    if passages.passage_model(document) is not None:
        _check_passages(document, record.embedder(document, using), embedder, using)
    left = sum(shadow.empty_rows(m, using) for m in shadow.tables(document))
    bar = make_bar(left, f"reembed {table}", unit="rows", enabled=progress)
    embedding_started = time.perf_counter()
    try:
        futures = []
        pool = None
        if workers > 1:
            db = connections[using].settings_dict["NAME"]
            # Django set up before the task (this module, which needs the app registry) is unpickled.
            spawn = multiprocessing.get_context("spawn")
            pool = concurrent.futures.ProcessPoolExecutor(
                workers - 1, mp_context=spawn, initializer=django.setup
            )
            futures = [
                pool.submit(_spawned_worker, document._meta.label, name, device, batch_size, using, db)
                for _ in range(workers - 1)
            ]
        try:
            docs, parts = _fill_all(document, embedder, using, bar)
            for future in futures:
                d, p = future.result()
                docs, parts = docs + d, parts + p
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
        # Chunks other workers (other machines) hold, and rows written meanwhile: filled before the swap.
        for _ in range(WAIT_ROUNDS):
            d, p = _fill_all(document, embedder, using, bar)
            docs, parts = docs + d, parts + p
            if not any(shadow.others_filling(m, using) for m in shadow.tables(document)):
                break
            time.sleep(0.2)
        report.embed_seconds = time.perf_counter() - embedding_started
        report.indexes = shadow.build_indexes(document, dims, using)
        d, p = _fill_all(document, embedder, using, bar)  # written while the indexes were built
        report.documents, report.passages = docs + d, parts + p
    except record.ModelChanged as exc:  # another machine's reembed swapped (or a --drop-old ran) meanwhile
        report.note = f"the shadow column stopped filling: another reembed swapped it first ({exc})"
        report.seconds = time.perf_counter() - started
        return report
    finally:
        bar.close()
    try:
        recorded, report.late = shadow.swap(document, embedder.encode, using)
    except record.ModelChanged as exc:
        report.note = f"another reembed swapped it first ({exc})"
        report.seconds = time.perf_counter() - started
        return report
    report.swapped, report.version = True, recorded.version
    _forget_caches()
    if tune:
        report.tuning = _tune(document, using)
    report.seconds = time.perf_counter() - started
    return report


def _forget_caches() -> None:
    from vectorstore.indexing import vector_indexes
    from vectorstore.search.settings import forget_tuning

    vector_indexes.forget()
    forget_tuning()


def _tune(document: type[models.Model], using: str) -> dict[str, Any] | None:
    """The new index tuned on the new model's pseudo-queries (the old model's logged queries are gone)."""
    from vectorstore import tuning
    from vectorstore.validation import InputError

    try:
        return tuning.tune(document, using=using, query_model="pseudo").as_dict()
    except InputError as exc:  # no index (searches are exact) or too few rows to measure
        return {"skipped": str(exc)}


def drop_old(document: type[models.Model] | None = None, *, using: str = "default") -> ReembedReport:
    """Remove the previous model's vectors (and their indexes) kept for ``--rollback``."""
    document = document or conf.document_model()
    table = document._meta.db_table
    report = ReembedReport(table=table)
    with transaction.atomic(using=using):
        r = record.read_table(table, using)
        if r is None or not r.shadow_state:
            report.note = "no other model's vectors are kept: nothing to drop"
            return report
        shadow.drop(document, using)
        _set_shadow(table, using, "", None, "", "")
    record.forget(table)
    report.note = f"dropped the vectors of {r.shadow_label} ({r.shadow_state}): no --rollback from here on"
    return report


def status(document: type[models.Model] | None = None, using: str = "default") -> dict[str, Any]:
    """The table's record and its shadow column's progress."""
    document = document or conf.document_model()
    r = record.read(document, using)
    out = {
        "table": r.table,
        "model": r.label,
        "dimensions": r.dimensions,
        "version": r.version,
        "shadow": r.shadow_state or None,
    }
    if r.shadow_state and shadow.exists(document, using):
        out["shadow_model"] = r.shadow_label
        out["shadow_empty_rows"] = sum(shadow.empty_rows(m, using) for m in shadow.tables(document))
    return out
