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

import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from django.db import connections, models, transaction
from pgvector import Vector
from psycopg import sql

from vectorstore import conf, indexes, pgcopy, search
from vectorstore.models import SearchTuning
from vectorstore.validation import InputError

EF_SEARCH_STEPS = (10, 16, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400, 500, 640, 800, 1000)
PROBES_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
OPERATORS = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
_OPCLASS = re.compile(r"(?:vector|halfvec)_(cosine|l2|ip)_ops")
# Noise as long as the vector: a query about as far from its source (cosine ~0.7) as real queries are
# from their nearest stored texts. With 0.3 (cosine ~0.96) the queries were too easy: ef_search 10
# measured 0.97 on a corpus where real queries need about 40 for 0.98.
NOISE = 1.0


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


def _vector_index(conn: Any, table: str, metric: str) -> tuple[indexes.IndexDef, str]:
    """The table's vector index for ``metric`` (else its first), and that index's metric."""
    found = []
    for index in indexes.rebuildable_indexes(conn, table):
        if index.method in indexes.VECTOR_METHODS:
            match = _OPCLASS.search(index.definition)
            if match:
                found.append((index, {"ip": "inner_product"}.get(match[1], match[1])))
    if not found:
        raise InputError(f"{table} has no HNSW or IVFFlat index on a vector: searches are exact already")
    return next(((i, m) for i, m in found if m == metric), found[0])


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
    index, metric = _vector_index(conn, table, conf.distance())
    rows = pgcopy.count_rows(conn, table)
    if rows < k:
        raise InputError(f"{table} holds {rows} rows: too few to measure recall@{k}")
    stored = [
        np.asarray(r[0].to_numpy(), dtype=np.float32)
        for r in conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY random() LIMIT %s").format(
                sql.Identifier(column), sql.Identifier(table)
            ),
            [queries],
        )
    ]
    rng = np.random.default_rng(seed)
    vectors = []
    for v in stored:
        noise = rng.standard_normal(v.shape).astype(np.float32)
        vectors.append(v + noise * (NOISE * float(np.linalg.norm(v)) / float(np.linalg.norm(noise))))
    pk = model._meta.pk.column
    truth = [_exact(using, table, pk, column, metric, v, k) for v in vectors]

    setting, steps = (
        ("hnsw.ef_search", EF_SEARCH_STEPS) if index.method == "hnsw" else ("ivfflat.probes", PROBES_STEPS)
    )
    report = TuneReport(
        table, index.name, index.method, metric, setting, 0, 0.0, target_recall, False, k, len(vectors), rows
    )
    queryset = model._default_manager.using(using).all()
    for value in (s for s in steps if setting != "hnsw.ef_search" or s >= k):
        knob = {"ef_search": value} if index.method == "hnsw" else {"probes": value}
        found = 0
        # The index's own recall: on a small table the planner may scan it whole (recall 1 at any
        # setting), but the setting is for the table it grows into.
        with transaction.atomic(using=using), connections[using].cursor() as cursor:
            cursor.execute("SET LOCAL enable_seqscan = off")
            for v, expected in zip(vectors, truth, strict=True):
                hits = search.search(
                    vector=v, k=k, metric=metric, queryset=queryset, using=using, **knob
                ).hits
                found += len({h.values[model._meta.pk.attname] for h in hits} & expected)
        recall = found / (k * len(vectors))
        report.tried.append((value, recall))
        report.value, report.recall = value, recall
        if recall >= min(1.0, target_recall + margin):
            report.reached = True
            break
    SearchTuning.objects.using(using).update_or_create(
        index_name=index.name,
        defaults={
            "db_table": table,
            "method": index.method,
            "ef_search": report.value if index.method == "hnsw" else None,
            "probes": report.value if index.method == "ivfflat" else None,
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


def _exact(using: str, table: str, pk: str, column: str, metric: str, vector: np.ndarray, k: int) -> set:
    """The ids of the k nearest rows by an exact scan (the planner kept off the index)."""
    with transaction.atomic(using=using), connections[using].cursor() as cursor:
        cursor.execute("SET LOCAL enable_indexscan = off")
        cursor.execute("SET LOCAL enable_bitmapscan = off")
        query = sql.SQL("SELECT {} FROM {} ORDER BY {} {} %s::vector LIMIT %s").format(
            sql.Identifier(pk), sql.Identifier(table), sql.Identifier(column), sql.SQL(OPERATORS[metric])
        )
        cursor.execute(query.as_string(pgcopy.django_connection(using)), [Vector(vector).to_text(), k])
        return {r[0] for r in cursor.fetchall()}
