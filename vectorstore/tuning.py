"""Recall that holds by default: measure a table's recall@k against exact search and store the smallest
``hnsw.ef_search`` (or ``ivfflat.probes``) that reaches a target, for every search that sets none.

    from vectorstore.tuning import tune
    report = tune(target_recall=0.95)        # manage.py tune_search --target-recall 0.95

pgvector's default ``ef_search`` (40) gives recall@10 0.98 on one corpus and 0.92 on another: how
hard a corpus is for the graph depends on the corpus. The queries are stored vectors with noise
added (so no query is a stored vector), the truth an exact scan of the table, the approximate
answers ``search()`` itself.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from django.db import connections, models, transaction
from psycopg import sql
from psycopg.types.string import ByteaBinaryLoader

from vectorstore import conf, pgcopy, search, vector_indexes
from vectorstore.models import SearchTuning
from vectorstore.validation import InputError

EF_SEARCH_STEPS = (10, 16, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400, 500, 640, 800, 1000)
RERANK_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50, 64, 80, 100)
PROBES_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
OPERATORS = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
# Noise as long as the vector: a query about as far from its source (cosine ~0.7) as real queries are
# from their nearest stored texts. With 0.3 (cosine ~0.96) the queries were too easy: ef_search 10
# measured 0.97 on a corpus where real queries need about 40 for 0.98.
NOISE = 1.0
DEFAULT_TARGET_RECALL = 0.95
# Loads and rebuilds tune again on their own (retune) when the table is at least this big and they wrote
# at least this share of it: below a thousand rows the graph is searched nearly whole at any setting.
AUTO_TUNE_MIN_ROWS = 1000
AUTO_TUNE_CHANGE = 0.2


@dataclass
class TuneReport:
    """What tune() measured and stored."""

    table: str
    index: str
    method: str
    metric: str
    setting: str  # hnsw.ef_search | ivfflat.probes
    value: int
    recall: float
    target_recall: float
    reached: bool
    k: int
    queries: int
    rows: int
    seconds: float = 0.0
    tried: list[tuple[int, float]] = field(default_factory=list)  # (value, recall)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["recall"] = round(self.recall, 4)
        return out

    def summary(self) -> str:
        verdict = "reached" if self.reached else "NOT reached (the largest setting tried is stored)"
        return (
            f"{self.index} ({self.method}, {self.metric}, {self.rows:,} rows): {self.setting} = {self.value},"
            f" recall@{self.k} {self.recall:.3f} over {self.queries} queries; target {self.target_recall}"
            f" {verdict}; {self.seconds:.1f} s"
        )


def _vector_index(
    model: type[models.Model], using: str, metric: str
) -> tuple[vector_indexes.FoundIndex, str]:
    """The vector index searches by ``metric`` use (else the table's newest), and the metric to tune for."""
    field = model._meta.get_field("embedding")
    table = model._meta.db_table
    found = [i for i in vector_indexes.table_indexes(table, field.column, using) if i.valid]
    if not found:
        raise InputError(f"{table} has no HNSW or IVFFlat index on a vector: searches are exact already")
    serving = [i for i in found if i.serves(metric, field.dimensions)]
    index = serving[-1] if serving else found[-1]
    return index, index.metric or metric


def tune(
    model: type[models.Model] | None = None,
    *,
    target_recall: float = 0.95,
    k: int = 10,
    queries: int = 100,
    margin: float = 0.01,
    using: str = "default",
    seed: int = 0,
) -> TuneReport:
    """Find, store and return the smallest setting whose recall@k reaches ``target_recall + margin``."""
    started = time.perf_counter()
    if not 0 < target_recall <= 1:
        raise InputError(f"target_recall={target_recall}: must be above 0 and at most 1")
    if not 1 <= k <= 100:
        raise InputError(f"k={k}: must be from 1 to 100")
    if queries < 1:
        raise InputError(f"queries={queries}: must be at least 1")
    model = model or conf.document_model()
    table = model._meta.db_table
    column = model._meta.get_field("embedding").column
    conn = pgcopy.django_connection(using)
    index, metric = _vector_index(model, using, conf.distance())
    rows = pgcopy.count_rows(conn, table)
    if rows < k:
        raise InputError(f"{table} holds {rows} rows: too few to measure recall@{k}")
    stored = _sample(conn, table, column, queries, rows, seed)
    rng = np.random.default_rng(seed)
    vectors = []
    for v in stored:
        noise = rng.standard_normal(v.shape).astype(np.float32)
        vectors.append(v + noise * (NOISE * float(np.linalg.norm(v)) / float(np.linalg.norm(noise))))
    pk = model._meta.pk.column
    truth = _exact(using, table, pk, column, metric, np.stack(vectors), k)

    # A binary index's recall is the re-rank's: its candidates' count is what to tune (ef_search follows).
    if index.quantization == "binary":
        setting, steps, knob_name = "rerank", RERANK_STEPS, "rerank"
    elif index.method == "hnsw":
        setting, steps, knob_name = "hnsw.ef_search", EF_SEARCH_STEPS, "ef_search"
    else:
        setting, steps, knob_name = "ivfflat.probes", PROBES_STEPS, "probes"
    report = TuneReport(
        table, index.name, index.method, metric, setting, 0, 0.0, target_recall, False, k, len(vectors), rows
    )
    queryset = model._default_manager.using(using).all()
    candidates = [s for s in steps if setting != "hnsw.ef_search" or s >= k]
    goal = min(1.0, target_recall + margin)

    def measure(value: int) -> float:
        knob = {knob_name: value}
        found = 0
        # The index's own recall: on a small table the planner may scan it whole (recall 1 at any
        # setting), but the setting is for the table it grows into.
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            for v, expected in zip(vectors, truth, strict=True):
                result = search.search(vector=v, k=k, metric=metric, queryset=queryset, using=using, **knob)
                hits = result.hits
                found += len({h.values[model._meta.pk.attname] for h in hits} & expected)
        recall = found / (k * len(vectors))
        report.tried.append((value, recall))
        return recall

    # Walk from the default setting (where most corpora land) down while the goal still holds, or up until
    # it does: two or three measurements for a typical corpus, where a walk up from the smallest took five.
    default = {"rerank": conf.rerank(), "ef_search": conf.ef_search()}.get(knob_name, 1)
    i = next((n for n, value in enumerate(candidates) if value >= default), len(candidates) - 1)
    recall = measure(candidates[i])
    if recall >= goal:
        while i > 0 and (lower := measure(candidates[i - 1])) >= goal:
            i, recall = i - 1, lower
        report.reached = True
    else:
        while i + 1 < len(candidates):
            i += 1
            recall = measure(candidates[i])
            if recall >= goal:
                report.reached = True
                break
    report.value, report.recall = candidates[i], recall
    SearchTuning.objects.using(using).update_or_create(
        index_name=index.name,
        defaults={
            "db_table": table,
            "method": index.method,
            "ef_search": report.value if knob_name == "ef_search" else None,
            "probes": report.value if knob_name == "probes" else None,
            "rerank": report.value if knob_name == "rerank" else None,
            "recall": report.recall,
            "target_recall": target_recall,
            "k": k,
            "queries": len(vectors),
            "rows": rows,
        },
    )
    search.forget_tuning()
    report.seconds = time.perf_counter() - started
    return report


def retune(
    model: type[models.Model] | None = None, *, changed: int | None = None, using: str = "default"
) -> TuneReport | None:
    """Tune again after ``changed`` rows were written (None: the index itself was rebuilt), when that is
    a substantial change; None when it is not, or when there is nothing to tune.

    The target and k are those last stored for the index (else 0.95 and 10). ``bulk_copy`` and
    ``reindex`` call this, so a table loaded in bulk reaches the target recall without anyone tuning.
    """
    model = model or conf.document_model()
    table = model._meta.db_table
    conn = pgcopy.django_connection(using)
    try:
        index, _ = _vector_index(model, using, conf.distance())
    except InputError:
        return None
    if index.quantization == "binary":
        # The synthetic queries overstate the re-rank depth real ones need (benchmarks/README.md,
        # bench_scale: rerank 100 chosen where real queries reach 0.95 at about 16-24, at 2.5x the
        # search time): loads leave a binary index at RERANK; tune_search still tunes it when asked.
        return None
    rows = pgcopy.count_rows(conn, table)
    if rows < AUTO_TUNE_MIN_ROWS:
        return None
    stored = SearchTuning.objects.using(using).filter(index_name=index.name).first()
    if stored is not None and changed is not None and changed < AUTO_TUNE_CHANGE * stored.rows:
        return None
    return tune(
        model,
        target_recall=stored.target_recall if stored else DEFAULT_TARGET_RECALL,
        k=min(stored.k if stored else 10, rows),
        using=using,
    )


def _sample(conn: Any, table: str, column: str, n: int, rows: int, seed: int) -> list[np.ndarray]:
    """About ``n`` stored vectors chosen at random, repeatably for a seed.

    TABLESAMPLE SYSTEM reads a few random pages instead of the whole table (ORDER BY random() reads and
    sorts all of it: seconds at a million rows); it falls back to that when the pages hold too few.
    """
    percent = min(100.0, 100.0 * 4 * n / max(rows, 1))
    query = sql.SQL("SELECT {} FROM {} TABLESAMPLE SYSTEM (%s) REPEATABLE (%s) WHERE {} IS NOT NULL").format(
        sql.Identifier(column), sql.Identifier(table), sql.Identifier(column)
    )
    found = [r[0] for r in conn.execute(query, [percent, seed])]
    if len(found) < n:
        query = sql.SQL("SELECT {} FROM {} WHERE {} IS NOT NULL ORDER BY random() LIMIT %s").format(
            sql.Identifier(column), sql.Identifier(table), sql.Identifier(column)
        )
        found = [r[0] for r in conn.execute(query, [n])]
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(found), size=min(n, len(found)), replace=False)
    return [np.asarray(found[i].to_numpy(), dtype=np.float32) for i in sorted(chosen)]


# Rows per fetch of the exact scan: 20,000 x 384 float32 is 30 MB, whatever the table's size.
_EXACT_CHUNK = 20_000


def _exact(
    using: str, table: str, pk: str, column: str, metric: str, queries: np.ndarray, k: int
) -> list[set]:
    """The ids of each query's k nearest rows, exactly: one pass over the table for all the queries.

    An exact scan per query in SQL reads the whole table once per query (100 queries, 100 scans);
    streaming the vectors once and ranking them here with one matrix product per chunk costs one scan,
    so tuning stays a small part of the load that triggers it.
    """
    queries = queries.astype(np.float32)
    if metric == "cosine":
        queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-30)
    best_d = np.empty((len(queries), 0), dtype=np.float32)
    best_id = np.empty((len(queries), 0), dtype=np.int64)  # positions in ids, which any pk type fits
    ids: list = []
    conn = pgcopy.django_connection(using)
    query = sql.SQL("SELECT {}, {} FROM {} WHERE {} IS NOT NULL").format(
        sql.Identifier(pk), sql.Identifier(column), sql.Identifier(table), sql.Identifier(column)
    )
    with transaction.atomic(using=using), conn.cursor(name="vectorstore_tune_exact", binary=True) as cursor:
        # Vectors arrive as pgvector's binary bytes (uint16 dims, uint16 unused, float32 big-endian) and
        # are decoded a chunk at a time: a Vector object per row cost 1.5 s per 60,000 rows.
        cursor.adapters.register_loader("vector", ByteaBinaryLoader)
        cursor.execute(query)
        while batch := cursor.fetchmany(_EXACT_CHUNK):
            positions = np.arange(len(ids), len(ids) + len(batch), dtype=np.int64)
            ids.extend(r[0] for r in batch)
            raw = np.frombuffer(b"".join(r[1] for r in batch), dtype=">f4")
            matrix = raw.reshape(len(batch), -1)[:, 1:].astype(np.float32)
            dots = queries @ matrix.T
            if metric == "cosine":
                norms = np.linalg.norm(matrix, axis=1)
                with np.errstate(divide="ignore", invalid="ignore"):
                    dist = 1.0 - dots / norms
                dist[:, norms == 0] = np.inf  # pgvector: NaN distance, ranked last
            elif metric == "l2":
                dist = (matrix * matrix).sum(axis=1) - 2.0 * dots  # + |q|^2, the same for every row
            else:
                dist = -dots
            all_d = np.concatenate([best_d, dist], axis=1)
            all_id = np.concatenate([best_id, np.broadcast_to(positions, dist.shape)], axis=1)
            if all_d.shape[1] > k:
                keep = np.argpartition(all_d, k - 1, axis=1)[:, :k]
                all_d = np.take_along_axis(all_d, keep, axis=1)
                all_id = np.take_along_axis(all_id, keep, axis=1)
            best_d, best_id = all_d, all_id
    return [{ids[i] for i in row} for row in best_id.tolist()]
