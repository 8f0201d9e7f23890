"""Real-time ingestion, simulated: records arrive one at a time and are embedded and written as they come.

The notebook's two cells (one INSERT per record, one COPY per record) and the
micro-batching it recommends for Kafka-style streams, each record timed from
its arrival to its commit.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import psycopg
from django.db import InterfaceError, OperationalError, connections, models, transaction
from django.utils import timezone

from vectorstore import conf, passages
from vectorstore.loading import pgcopy
from vectorstore.loading.parquet import Source
from vectorstore.loading.writes import DocumentRows
from vectorstore.validation import InputError

if TYPE_CHECKING:
    from vectorstore.embedding import Embedder

MODES = ("insert", "copy", "batch")


def percentiles(values_ms: Sequence[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0, "mean": 0.0}
    a = np.asarray(values_ms)
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {
        "p50": round(float(p50), 3),
        "p95": round(float(p95), 3),
        "p99": round(float(p99), 3),
        "max": round(float(a.max()), 3),
        "mean": round(float(a.mean()), 3),
    }


@dataclass
class StreamReport:
    mode: str
    count: int = 0
    seconds: float = 0.0
    throughput_per_s: float = 0.0
    batch_size: int = 1
    rate: float | None = None
    retries: int = 0  # writes retried after the server went away
    outage_seconds: float = 0.0  # time spent retrying them
    latencies: list[float] = field(default_factory=list, repr=False)  # ms, arrival to commit
    embed: list[float] = field(default_factory=list, repr=False)
    write: list[float] = field(default_factory=list, repr=False)

    def as_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "count": self.count,
            "seconds": round(self.seconds, 3),
            "throughput_per_s": round(self.throughput_per_s, 1),
            "batch_size": self.batch_size,
            "rate": self.rate,
            "retries": self.retries,
            "outage_seconds": round(self.outage_seconds, 3),
            "latency_ms": percentiles(self.latencies),
            "embed_ms": percentiles(self.embed),
            "write_ms": percentiles(self.write),
        }

    def summary(self) -> str:
        lat = percentiles(self.latencies)
        return (
            f"{self.mode}: {self.count} records in {self.seconds:.2f} s ({self.throughput_per_s:,.1f}/s); "
            f"latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms, "
            f"max {lat['max']:.1f} ms (embed p50 {percentiles(self.embed)['p50']:.1f} ms, "
            f"write p50 {percentiles(self.write)['p50']:.1f} ms)"
        ) + (
            f"; the database was unreachable for {self.outage_seconds:.1f} s: {self.retries} retries"
            if self.retries
            else ""
        )


@dataclass
class Record:
    external_id: str
    text: str
    category: str
    metadata: dict[str, Any]


def read_records(source: str | Path, count: int, seed: int = 0, id_prefix: str = "") -> list[Record]:
    """A random sample of count records from a parquet file (the notebook's random.sample)."""
    src = Source(source)
    src.require("text", "text")
    rows = [
        r
        for batch in src.iter_batches(10_000)
        for r in batch.to_pylist()
        if isinstance(r.get("text"), str) and r["text"].strip()
    ]
    if not rows:
        raise InputError(f"{src.name}: no rows with text")
    picked = random.Random(seed).sample(rows, min(count, len(rows)))
    while len(picked) < count:  # a small file replays from the start
        picked.append(rows[len(picked) % len(rows)])
    records = []
    for i, row in enumerate(picked):
        ident = row.pop("id", None) or row.pop("external_id", None) or i
        text = row.pop("text")
        row.pop("embedding", None)
        row.pop("embeddings", None)
        category = row.pop("category", None) or ""
        meta = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in row.items()}
        records.append(Record(f"{id_prefix}{ident}#{i}", text, str(category), meta))
    return records


class Writer:
    """Writes records to the document table on Django's connection, each call its own transaction.

    A write that fails because the server went away (restart, failover, network)
    is retried with exponential backoff until ``max_outage`` seconds have passed.
    Retries are idempotent: an INSERT carries ON CONFLICT (external_id) DO NOTHING,
    and a COPY, whose commit may have landed before the connection broke, is
    retried as such an INSERT. So every record is stored exactly once.
    """

    def __init__(
        self,
        model: type[models.Model],
        using: str = "default",
        max_outage: float = 60.0,
        on_outage: Callable[[str], Any] | None = None,
        embedder: Embedder | None = None,
    ) -> None:
        self.model = model
        self.embedder = embedder  # for a model's passages
        self.on_outage = on_outage  # told once per outage, when its first write fails
        self.using = using
        self.max_outage = max_outage
        self.retries = 0
        self.outage_seconds = 0.0
        self.rows = DocumentRows(pgcopy.django_connection(using), model)
        self.target = self.rows.target
        self.insert = self.target.insert_sql(" ON CONFLICT (external_id) DO NOTHING")

    def _row(self, record: Record, vector: Any) -> tuple:
        return self.rows.row({**asdict(record), "created_at": timezone.now()}, vector)

    def _insert(self, records: Sequence[Record], vectors: np.ndarray) -> None:
        conn = pgcopy.django_connection(self.using)
        with transaction.atomic(using=self.using), conn.cursor() as cursor:
            cursor.executemany(self.insert, [self._row(r, v) for r, v in zip(records, vectors, strict=True)])
            self._passages(conn, records)

    def _copy(self, records: Sequence[Record], vectors: np.ndarray) -> None:
        conn = pgcopy.django_connection(self.using)
        encoded = pgcopy.encode_vectors(vectors)
        with transaction.atomic(using=self.using):
            pgcopy.copy_rows(
                conn, self.target, (self._row(r, v) for r, v in zip(records, encoded, strict=True))
            )
            self._passages(conn, records)

    def _passages(self, conn: psycopg.Connection, records: Sequence[Record]) -> None:
        """A model that keeps passages: the records' passages, in their transaction (a retry writes them
        for whichever records the retry stored)."""
        if self.embedder is not None and passages.enabled(self.model):
            ids = [r.external_id for r in records]
            passages.fill_missing(conn, self.model, self.embedder, external_ids=ids if all(ids) else None)

    def _with_retries(self, first, retry) -> None:
        started = None
        delay = 0.05
        attempt = first
        while True:
            try:
                attempt()
                if started is not None:
                    self.outage_seconds += time.perf_counter() - started
                return
            except (
                OperationalError,
                InterfaceError,
                psycopg.OperationalError,
                psycopg.InterfaceError,
            ) as exc:
                now = time.perf_counter()
                if started is None:
                    started = now
                    if self.on_outage is not None:
                        first_line = (str(exc).strip() or type(exc).__name__).splitlines()[0]
                        self.on_outage(
                            f"the database is unreachable ({first_line}); retrying for up to"
                            f" {self.max_outage:.0f} s"
                        )
                if now - started > self.max_outage:
                    raise
                self.retries += 1
                connections[self.using].close()  # a broken connection is not reused
                time.sleep(delay)
                delay = min(delay * 2, 2.0)
                attempt = retry

    def insert_one(self, record: Record, vector: np.ndarray) -> None:
        def run():
            return self._insert([record], np.asarray([vector]))

        self._with_retries(run, run)

    def copy(self, records: Sequence[Record], vectors: np.ndarray) -> None:
        self._with_retries(lambda: self._copy(records, vectors), lambda: self._insert(records, vectors))


SIMULATED_PREFIX = "stream-"  # the external ids of the records a simulation writes, unless told another


def remove_simulated(
    prefix: str = SIMULATED_PREFIX, model: type[models.Model] | None = None, using: str = "default"
) -> int:
    """Delete the documents a simulation wrote (external ids starting with ``prefix``; their passages go
    with them); returns how many. A simulation leaves the table as it found it unless told to keep them:
    its copies of real records otherwise answer searches beside the originals."""
    model = model or conf.document_model()
    rows = model._default_manager.using(using).filter(external_id__startswith=prefix)
    count = rows.count()
    if count:
        rows.delete()
    return count


def simulate(
    mode: str,
    records: Sequence[Record],
    embedder: Embedder,
    *,
    model: type[models.Model] | None = None,
    batch_size: int = 32,
    max_wait_ms: float = 50.0,
    rate: float | None = None,
    using: str = "default",
    on_outage: Callable[[str], Any] | None = None,
) -> StreamReport:
    """Replay records in one mode; each record's latency runs from its arrival to its commit.

    Without ``rate`` a record arrives as soon as the previous one is handled
    (batch mode: as soon as it is read); with it, records arrive every 1/rate s. ``on_outage(message)``
    is called when a write first finds the database gone (it is then retried, see Writer).
    """
    if mode not in MODES:
        raise InputError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    if rate is not None and rate <= 0:
        raise InputError(f"rate must be positive, not {rate}")
    writer = Writer(model or conf.document_model(), using, on_outage=on_outage, embedder=embedder)
    embedder.encode(["warm-up"])  # the first call pays for lazy initialisation; keep it out of the figures
    report = StreamReport(mode=mode, batch_size=batch_size if mode == "batch" else 1, rate=rate)
    start = time.perf_counter()
    interval = 1.0 / rate if rate else 0.0

    def arrival(i: int) -> float:
        return start + i * interval

    def wait_until(t: float) -> None:
        delay = t - time.perf_counter()
        if delay > 0:
            time.sleep(delay)

    if mode in ("insert", "copy"):
        for i, record in enumerate(records):
            if rate:
                wait_until(arrival(i))
            arrived = arrival(i) if rate else time.perf_counter()
            t0 = time.perf_counter()
            vectors = embedder.encode([record.text])
            t1 = time.perf_counter()
            if mode == "insert":
                writer.insert_one(record, vectors[0])
            else:
                writer.copy([record], vectors)
            t2 = time.perf_counter()
            report.embed.append((t1 - t0) * 1000)
            report.write.append((t2 - t1) * 1000)
            report.latencies.append((t2 - arrived) * 1000)
    else:
        pending: list[tuple[Record, float]] = []

        def flush() -> None:
            t0 = time.perf_counter()
            vectors = embedder.encode([r.text for r, _ in pending])
            t1 = time.perf_counter()
            writer.copy([r for r, _ in pending], vectors)
            t2 = time.perf_counter()
            for _, arrived in pending:
                report.embed.append((t1 - t0) * 1000)
                report.write.append((t2 - t1) * 1000)
                report.latencies.append((t2 - arrived) * 1000)
            pending.clear()

        for i, record in enumerate(records):
            if rate:
                # Flush a partial batch whose oldest record has waited max_wait_ms before this one arrives.
                while pending and pending[0][1] + max_wait_ms / 1000 < arrival(i):
                    wait_until(pending[0][1] + max_wait_ms / 1000)
                    flush()
                wait_until(arrival(i))
            pending.append((record, arrival(i) if rate else time.perf_counter()))
            if len(pending) >= batch_size:
                flush()
        if pending:
            if rate:
                wait_until(pending[0][1] + max_wait_ms / 1000)
            flush()

    report.retries = writer.retries
    report.outage_seconds = writer.outage_seconds
    report.count = len(records)
    report.seconds = time.perf_counter() - start
    report.throughput_per_s = report.count / report.seconds if report.seconds else 0.0
    return report


def _scale(axis: Any, values: np.ndarray) -> str:
    """A log scale where the values span a decade or more, else a linear one; either way tick labels
    that are plain numbers of milliseconds (matplotlib's log axis labels only powers of ten, so a
    range of 18-48 ms had no label at all, and 40 read as ``4 x 10^1``)."""
    import matplotlib.ticker as ticker

    positive = values[values > 0]
    if len(positive) and positive.max() / positive.min() >= 10:
        if axis is axis.axes.xaxis:
            axis.axes.set_xscale("log")
        else:
            axis.axes.set_yscale("log")
        axis.set_major_locator(ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_minor_locator(ticker.NullLocator())
        kind = "log scale"
    else:
        axis.set_major_locator(ticker.MaxNLocator(nbins=6))
        kind = "linear scale"
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    return kind


def figure(reports: Sequence[StreamReport]) -> Any:
    """The latency figure (matplotlib): arrival-to-commit per mode, and embed vs write time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for r in reports:
        values = np.sort(np.asarray(r.latencies))
        left.plot(
            values,
            np.arange(1, len(values) + 1) / len(values),
            label=f"{r.mode} (p50 {np.median(values):.1f} ms)",
        )
    every = np.concatenate([np.asarray(r.latencies, dtype=float) for r in reports])
    left.set_xlabel(f"latency, arrival to commit (ms, {_scale(left.xaxis, every)})")
    left.set_ylabel("fraction of records")
    left.set_title("Latency distribution per mode")
    left.grid(True, which="both", alpha=0.3)
    left.legend()
    data, labels = [], []
    for r in reports:
        data += [r.embed, r.write]
        labels += [f"{r.mode}\nembed", f"{r.mode}\nwrite"]
    right.boxplot(data, tick_labels=labels, showfliers=False)
    spent = np.concatenate([np.asarray(d, dtype=float) for d in data])
    right.set_ylabel(f"ms each record spent ({_scale(right.yaxis, spent)})")
    right.set_title("Where the time goes")
    right.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    return fig


def plot(reports: Sequence[StreamReport], path: str | Path) -> Path:
    """A PNG of the latency figure (``figure``)."""
    import matplotlib.pyplot as plt

    fig = figure(reports)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
