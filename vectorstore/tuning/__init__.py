"""Recall that holds by default: measure a table's recall@k against exact search on queries like the ones
users send, and store the smallest ``hnsw.ef_search`` (or ``ivfflat.probes``, or a binary index's
re-rank factor) that reaches a target, for every search that sets none.

    from vectorstore.tuning import tune
    report = tune(target_recall=0.95)        # manage.py tune_search --target-recall 0.95

The queries (``tuning_queries``): the query log once it is large enough, else pseudo-queries cut from
the documents' text and embedded with the table's model. The recall is an estimate: its spread over
the queries (a bootstrap) gives a lower bound, and a setting is chosen only where that bound reaches the
target; below pgvector's own default (ef_search 40; a binary index's RERANK) with a further margin.
Where neither can be had (no log yet, and the model stack not installed), nothing is measured: a load
stores UNMEASURED_EF_SEARCH for its size, a setting that met the target on the real queries of every
corpus measured, and says that no recall was measured (stored vectors moved by noise, the old fallback, are
easier than real queries: a table tuned on them said "~0.97" where real queries got 0.92).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import psycopg
from django.db import connections, models, transaction

from vectorstore import conf, pg
from vectorstore.embedding import EmbeddingError
from vectorstore.indexing import vector_indexes
from vectorstore.models import SearchTuning
from vectorstore.search import forget_tuning, plan, quantized, query_log, settings
from vectorstore.tuning import queries as tuning_queries
from vectorstore.tuning.queries import Queries
from vectorstore.validation import InputError

EF_SEARCH_STEPS = (10, 16, 24, 32, 40, 48, 64, 80, 100, 128, 160, 200, 256, 320, 400, 500, 640, 800, 1000)
RERANK_STEPS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20, 25, 32, 40, 50, 64, 80, 100)
PROBES_STEPS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024)
OPERATORS = {"cosine": "<=>", "l2": "<->", "inner_product": "<#>"}
DEFAULT_TARGET_RECALL = 0.95
DEFAULT_QUERIES = 200
# A setting below pgvector's default needs the estimate's lower bound this far above the target (and real
# or pseudo queries): chosen on two corpora, reported on the third (benchmarks/README.md: at 0 a log of
# one corpus's queries led to a setting its other queries got 0.942 at).
BELOW_DEFAULT_MARGIN = 0.01
CONFIDENCE = 0.90  # the estimate's two-sided interval; its lower end is what must reach the target
BOOTSTRAP = 500
# Loads and rebuilds tune again on their own (retune) when the table is at least this big and they wrote
# at least this share of it: below a thousand rows the graph is searched nearly whole at any setting.
AUTO_TUNE_MIN_ROWS = 1000
AUTO_TUNE_CHANGE = 0.2
# hnsw.ef_search stored where no recall can be measured, by table size (rows below, setting): hand-written
# queries' recall@10 reached 0.95 at 16-24 on the three benchmark corpora (50,000-60,000 rows), at 64-100
# on a held-out one of 63,000 (0.954 at 64, 0.973 at 100), and at 160 on a million rows (0.954): each
# bound the next step up of what was measured (benchmarks/README.md). Past 2,000,000 rows, not measured.
UNMEASURED_EF_SEARCH = ((250_000, 100), (2_000_000, 200), (None, 400))


@dataclass
class TuneReport:
    """What tune() measured and stored."""

    table: str
    index: str
    method: str
    metric: str
    setting: str  # hnsw.ef_search | ivfflat.probes | rerank
    value: int
    recall: float | None  # the estimate at the stored value (None: not measured)
    recall_low: float | None  # the lower end of its CONFIDENCE interval
    target_recall: float
    reached: bool
    k: int
    queries: int
    query_model: str  # log | pseudo | none (not measured)
    rows: int
    seconds: float = 0.0
    tried: list[tuple[int, float, float]] = field(default_factory=list)  # (value, recall, lower bound)
    note: str = ""
    # A first load's preparation, made while its indexes built: the model's loading, then the queries
    # and their exact answers (off the load's critical path where the build took longer).
    model_seconds: float | None = None
    prepare_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for name in ("seconds", "model_seconds", "prepare_seconds"):
            out[name] = None if out[name] is None else round(out[name], 3)
        for name in ("recall", "recall_low"):
            out[name] = None if out[name] is None else round(out[name], 4)
        out["tried"] = [(v, round(r, 4), round(lo, 4)) for v, r, lo in self.tried]
        return out

    def measured(self) -> str:
        """The recall as the user is told it: the estimate and the queries it was measured on, or that
        none was measured."""
        if self.recall is None:
            return "no recall measured"
        return f"recall@{self.k} ~{self.recall:.3f} on {self.queries} {self.query_model} queries"

    def summary(self) -> str:
        if self.recall is None:
            line = (
                f"{self.index} ({self.method}, {self.metric}, {self.rows:,} rows): {self.setting} ="
                f" {self.value}, no recall measured"
            )
            return f"{line}; {self.note}" if self.note else line
        verdict = "reached" if self.reached else "NOT reached (the largest setting tried is stored)"
        line = (
            f"{self.index} ({self.method}, {self.metric}, {self.rows:,} rows): {self.setting} = {self.value},"
            f" recall@{self.k} ~{self.recall:.3f} (>= {self.recall_low:.3f} at {CONFIDENCE:.0%}) over"
            f" {self.queries} {self.query_model} queries; target {self.target_recall} {verdict};"
            f" {self.seconds:.1f} s"
        )
        return f"{line}; {self.note}" if self.note else line


@dataclass
class Prepared:
    """Queries and their exact answers, made before the index they measure exists (a load overlaps this
    with its index build); ``kth`` holds each query's exact k-th distance."""

    queries: Queries
    kth: np.ndarray
    k: int
    metric: str


def _vector_index(
    model: type[models.Model], using: str, metric: str
) -> tuple[vector_indexes.FoundIndex, str]:
    """The vector index searches by ``metric`` use (else the table's newest), and the metric to tune for."""
    field = model._meta.get_field("embedding")
    table = model._meta.db_table
    found = [i for i in vector_indexes.table_indexes(table, field.column, using) if i.valid]
    if not found:
        raise InputError(f"{table} has no HNSW or IVFFlat index on a vector: searches are exact already")
    serving = [i for i in found if i.serves(metric)]
    index = serving[-1] if serving else found[-1]
    return index, index.metric or metric


def prepare(
    model: type[models.Model],
    using: str,
    metric: str,
    k: int,
    n: int,
    rows: int,
    seed: int = 0,
    query_model: str = "auto",
) -> Prepared:
    """Queries of the chosen model and their exact k-th distances over the table as it is."""
    queries = tuning_queries.choose(model, using, n, rows, seed, query_model)
    table, column = model._meta.db_table, model._meta.get_field("embedding").column
    kth = tuning_queries.kth_distances(using, table, column, metric, queries.vectors, k)
    return Prepared(queries, kth, k, metric)


def estimate(per_query: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """Mean recall and the lower end of its CONFIDENCE interval, by resampling the queries."""
    if not len(per_query):
        return 0.0, 0.0
    rng = np.random.default_rng(seed)
    means = per_query[rng.integers(0, len(per_query), size=(BOOTSTRAP, len(per_query)))].mean(axis=1)
    return float(per_query.mean()), float(np.quantile(means, (1 - CONFIDENCE) / 2))


def measure(model: type[models.Model], using: str, prepared: Prepared, knob: str, value: int) -> np.ndarray:
    """Each query's recall@k through the index at one setting: the statement search() sends, with that
    setting, all the queries in one pipelined round trip; a hit is right where its distance is within
    the query's exact k-th (ties count, whichever of them the index returns)."""
    k, metric = prepared.k, prepared.metric
    queryset = model._default_manager.using(using).all()
    pk = model._meta.pk.attname
    tuned = settings.Tuned()
    rerank = quantized.rerank_plan(model, metric, using, value if knob == "rerank" else None, tuned)
    statement = plan.nearest(queryset, [pk], metric, k, None, rerank)
    knobs = settings.index_settings(
        value if knob == "ef_search" else None, None, value if knob == "probes" else None, tuned
    )
    if rerank is not None:
        knobs = quantized.widened(knobs, k, rerank)
    # The index's own recall: on a small table the planner may scan it whole (recall 1 at any setting),
    # but the setting is for the table it grows into.
    knobs["enable_seqscan"] = "off"
    conn = pg.django_connection(using)
    vectors = [pg.binary_vector(v) for v in prepared.queries.vectors]
    with transaction.atomic(using=using), connections[using].wrap_database_errors:
        with conn.cursor() as control:
            for name, setting in knobs.items():
                control.execute("SELECT set_config(%s, %s, true)", [name, setting])
        cursors = [psycopg.Cursor(conn) for _ in vectors]
        try:
            with conn.pipeline():
                for cursor, vector in zip(cursors, vectors, strict=True):
                    cursor.execute(statement.sql, statement.bind(vector), prepare=False)
            found = [statement.rows(cursor.fetchall(), connections[using]) for cursor in cursors]
        finally:
            for cursor in cursors:
                cursor.close()
    tolerance = 1e-5 * np.maximum(1.0, np.abs(prepared.kth))
    return np.array(
        [
            min(k, sum(1 for row in rows if row[-1] is not None and row[-1] <= kth + tol)) / k
            for rows, kth, tol in zip(found, prepared.kth, tolerance, strict=True)
        ]
    )


def tune(
    model: type[models.Model] | None = None,
    *,
    target_recall: float = DEFAULT_TARGET_RECALL,
    k: int = 10,
    queries: int = DEFAULT_QUERIES,
    using: str = "default",
    seed: int = 0,
    query_model: str = "auto",
    prepared: Prepared | None = None,
    margin: float | None = None,
) -> TuneReport:
    """Find, store and return the smallest setting whose recall@k estimate reaches ``target_recall`` with
    CONFIDENCE (see the module docstring). ``query_model``: auto | log | pseudo. ``prepared``: queries
    and truth made already (a load's). ``margin`` replaces BELOW_DEFAULT_MARGIN."""
    started = time.perf_counter()
    if not 0 < target_recall <= 1:
        raise InputError(f"target_recall={target_recall}: must be above 0 and at most 1")
    if not 1 <= k <= 100:
        raise InputError(f"k={k}: must be from 1 to 100")
    if queries < 1:
        raise InputError(f"queries={queries}: must be at least 1")
    if query_model not in ("auto", *tuning_queries.QUERY_MODELS):
        raise InputError(
            f"query_model={query_model!r}: expected auto, {', '.join(tuning_queries.QUERY_MODELS)}"
        )
    model = model or conf.document_model()
    if prepared is None and query_model == "auto" and not tuning_queries.measurable(model, using):
        raise InputError(
            f"{model._meta.db_table}: no queries to measure recall with: the query log holds fewer than"
            f" {conf.tune_min_logged()} and pseudo-queries need the model stack"
            " (pip install 'vectorstore[embed]')"
        )
    table = model._meta.db_table
    conn = pg.django_connection(using)
    index, metric = _vector_index(model, using, conf.distance())
    rows = pg.count_rows(conn, table)
    if rows < k:
        raise InputError(f"{table} holds {rows} rows: too few to measure recall@{k}")
    if prepared is None or prepared.k != k or prepared.metric != metric:
        try:
            prepared = prepare(model, using, metric, k, queries, rows, seed, query_model)
        except ValueError as exc:
            raise InputError(str(exc)) from exc
    n = len(prepared.queries.vectors)
    if n == 0:
        raise InputError(f"{table}: no queries to measure with ({prepared.queries.model} model)")

    # A binary index's recall is the re-rank's: its candidates' count is what to tune (ef_search follows).
    if index.quantization == "binary":
        setting, steps, knob, default = "rerank", RERANK_STEPS, "rerank", conf.rerank()
    elif index.method == "hnsw":
        setting, steps, knob, default = "hnsw.ef_search", EF_SEARCH_STEPS, "ef_search", 40  # pgvector's
    else:
        setting, steps, knob, default = "ivfflat.probes", PROBES_STEPS, "probes", 1  # pgvector's
    candidates = [s for s in steps if knob != "ef_search" or s >= k]
    report = TuneReport(
        table, index.name, index.method, metric, setting, 0, 0.0, 0.0, target_recall, False, k, n,
        prepared.queries.model, rows,
    )  # fmt: skip
    margin = BELOW_DEFAULT_MARGIN if margin is None else margin
    # Noise queries (benchmarks only) are easier than real ones: never evidence for a lower setting.
    trusted = prepared.queries.model in ("log", "pseudo")
    cache: dict[int, tuple[float, float]] = {}

    def measured(value: int) -> tuple[float, float]:
        if value not in cache:
            cache[value] = estimate(measure(model, using, prepared, knob, value), seed)
            report.tried.append((value, *cache[value]))
        return cache[value]

    def good(value: int) -> bool:
        low = measured(value)[1]
        if value < default:  # below pgvector's default: only on real or pseudo queries, with margin
            return trusted and low >= min(1.0, target_recall + margin)
        return low >= target_recall

    # Walk from the default (where most corpora land) down while the rule holds, or up until it does.
    i = next((n for n, value in enumerate(candidates) if value >= default), len(candidates) - 1)
    if good(candidates[i]):
        # Noise queries are not measured below the default at all: nothing there could be stored.
        while i > 0 and (trusted or candidates[i - 1] >= default) and good(candidates[i - 1]):
            i -= 1
        report.reached = True
    else:
        while i + 1 < len(candidates):
            i += 1
            if good(candidates[i]):
                report.reached = True
                break
    report.value = candidates[i]
    report.recall, report.recall_low = measured(report.value)
    _store(report, knob, using)
    query_log.prune(model, using)
    report.seconds = time.perf_counter() - started
    return report


def _store(report: TuneReport, knob: str, using: str) -> None:
    SearchTuning.objects.using(using).update_or_create(
        index_name=report.index,
        defaults={
            "db_table": report.table,
            "method": report.method,
            "ef_search": report.value if knob == "ef_search" else None,
            "probes": report.value if knob == "probes" else None,
            "rerank": report.value if knob == "rerank" else None,
            "recall": report.recall,
            "recall_low": report.recall_low,
            "query_model": report.query_model,
            "target_recall": report.target_recall,
            "k": report.k,
            "queries": report.queries,
            "rows": report.rows,
        },
    )
    forget_tuning()


def unmeasured_ef_search(rows: int) -> int:
    """The ef_search stored for a table of ``rows`` where no recall can be measured."""
    return next(value for below, value in UNMEASURED_EF_SEARCH if below is None or rows < below)


def store_unmeasured(
    model: type[models.Model],
    reason: str,
    using: str = "default",
    target_recall: float = DEFAULT_TARGET_RECALL,
) -> TuneReport | None:
    """Where recall cannot be measured (``reason``): an HNSW index gets ``unmeasured_ef_search`` for its
    size, said to be unmeasured; other kinds keep pgvector's defaults (None)."""
    index, metric = _vector_index(model, using, conf.distance())
    if index.method != "hnsw" or index.quantization == "binary":
        return None
    rows = pg.count_rows(pg.django_connection(using), model._meta.db_table)
    value = unmeasured_ef_search(rows)
    report = TuneReport(
        model._meta.db_table, index.name, index.method, metric, "hnsw.ef_search", value,
        None, None, target_recall, False, 10, 0, "none", rows,
        note=f"{reason}; real queries reached recall@10 0.95 below this on every corpus measured of this size"
        " (benchmarks/README.md); tune_search measures this table's once it can",
    )  # fmt: skip
    _store(report, "ef_search", using)
    return report


def load_query_model(model: type[models.Model], using: str = "default", later: bool = False) -> str | None:
    """The queries a load's own tuning uses: the log when it is large enough; else pseudo-queries where
    the model stack is installed (``later``: only where this process has the table's model loaded
    already, as a load that embedded its texts has); else None: nothing measured now."""
    if tuning_queries.logged_queries(model, using, 1) is not None:
        return "log"
    if not tuning_queries.model_stack_installed():
        return None
    if later:
        from vectorstore import embedding
        from vectorstore.reembed import record

        return "pseudo" if embedding.is_loaded(record.embedder(model, using).model_name) else None
    return "pseudo"


def retune(
    model: type[models.Model] | None = None,
    *,
    changed: int | None = None,
    using: str = "default",
    prepared: Prepared | None = None,
    later: bool = False,
) -> TuneReport | None:
    """Tune again after ``changed`` rows were written (None: the index itself was rebuilt), when that is
    a substantial change; None when it is not, or when there is nothing to tune.

    The target and k are those last stored for the index (else 0.95 and 10). ``bulk_copy``,
    ``reindex`` and ``vector_index create`` call this, so a table loaded in bulk reaches the target
    recall without anyone tuning. ``later`` (a load's default): where measuring would mean loading the
    model (no query log, the model not loaded in this process), an unmeasured table gets the setting for
    its size and a measured one keeps its own, for the site to measure again (``vectorstore.tuning.autotune``)
    or ``tune_search``: loading the model and measuring cost a first load a third of its speed on two
    cores (benchmarks/README.md).
    """
    model = model or conf.document_model()
    table = model._meta.db_table
    conn = pg.django_connection(using)
    try:
        index, metric = _vector_index(model, using, conf.distance())
    except InputError:
        return None
    if index.quantization == "binary":
        # Noisy queries overstated the re-rank depth real ones need (benchmarks/README.md, bench_scale):
        # loads leave a binary index at RERANK; tune_search still tunes it when asked.
        return None
    rows = pg.count_rows(conn, table)
    if rows < AUTO_TUNE_MIN_ROWS:
        return None
    stored = SearchTuning.objects.using(using).filter(index_name=index.name).first()
    if stored is not None and changed is not None and changed < AUTO_TUNE_CHANGE * stored.rows:
        return None
    target = stored.target_recall if stored else DEFAULT_TARGET_RECALL
    k = min(stored.k if stored else 10, rows)
    if prepared is None:
        query_model = load_query_model(model, using, later)
        if query_model is None and not tuning_queries.model_stack_installed():
            return store_unmeasured(model, "the model stack is not installed", using, target)
        if query_model is None:  # later: measured by the site, or tune_search
            if stored is not None and stored.query_model not in ("none", "noise"):
                return None
            return store_unmeasured(
                model,
                "to be measured on pseudo-queries by the site (AUTO_TUNE) or tune_search",
                using,
                target,
            )
        try:
            prepared = prepare(model, using, metric, k, DEFAULT_QUERIES, rows, 0, query_model)
        except EmbeddingError as exc:
            return store_unmeasured(model, f"the table's model could not be loaded ({exc})", using, target)
    return tune(model, target_recall=target, k=k, using=using, prepared=prepared)
