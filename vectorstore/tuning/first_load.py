"""A first load's tuning, prepared while its indexes build: the queries (the query log's, or pseudo-
queries cut from the input's texts and embedded with the table's model, which the thread loads) and
their exact answers (one pass over the input's vectors) need no index, so they are made in a thread
during the build, and only the measurement through the new index is left for after it.

It applies to a load into an empty table that rebuilds the vector index: the table then holds exactly
the rows the load wrote, whose vectors the load hands over batch by batch (``feed``, up to KEEP_BYTES;
beyond, the thread reads the input's vector column again), so they are the truth. Any other load tunes
from the table itself.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.db import models
from psycopg import sql

from vectorstore import conf, tuning
from vectorstore.indexing import vector_indexes
from vectorstore.loading.parquet import Source
from vectorstore.loading.rows import ColumnMap
from vectorstore.search import query_log
from vectorstore.tuning import Prepared
from vectorstore.tuning import queries as tuning_queries
from vectorstore.tuning.queries import KthDistances, Queries

logger = logging.getLogger(__name__)
K = 10
# The written vectors a load keeps for the truth (50,673 x 384 float32 is 78 MB): reading a parquet's
# vector column again took 0.35 s of a 10 s load, the truth itself 0.05 s.
KEEP_BYTES = 256 * 2**20


class LoadTuning:
    """Makes a load's queries and their truth in a thread (``start``), handed to ``tuning.retune``."""

    def __init__(self, model: type[models.Model], src: Source, cmap: ColumnMap, query_model: str) -> None:
        self.model, self.src, self.cmap, self.query_model = model, src, cmap, query_model
        self.metric = conf.distance()
        self.n = tuning.DEFAULT_QUERIES
        self.model_seconds: float | None = None  # loading the model, in the thread
        self.prepare_seconds: float | None = None  # the whole preparation, the model's loading included
        self._thread: threading.Thread | None = None
        self._result: Prepared | None = None
        self._error: BaseException | None = None
        self._logged: np.ndarray | None = None
        self._kept: list[np.ndarray] | None = []
        self._kept_bytes = 0

    @classmethod
    def for_load(cls, conn: Any, src: Source, cmap: ColumnMap, dropped: list, tune: str) -> LoadTuning | None:
        """The preparation a load can overlap with its index build, or None (the table is not empty, the
        input has no vectors, it is too small to tune, no HNSW/IVFFlat index is rebuilt, or there is
        nothing to measure with that costs the load nothing: ``tune="auto"`` measures on the query log,
        or on pseudo-queries where this process has the table's model loaded; ``"now"`` loads it)."""
        if tune == "off" or src.num_rows < tuning.AUTO_TUNE_MIN_ROWS:
            return None
        column = cmap.model._meta.get_field(cmap.vector_field).column
        kinds = [vector_indexes.kind_from_definition(i.definition, column) for i in dropped]
        if not any(kind is not None and kind[1] != "binary" for kind in kinds):
            return None
        table = sql.Identifier(cmap.model._meta.db_table)
        if conn.execute(sql.SQL("SELECT EXISTS (SELECT 1 FROM {})").format(table)).fetchone()[0]:
            return None
        query_model = tuning.load_query_model(cmap.model, later=tune == "auto")
        if query_model is None:
            return None
        prepared = cls(cmap.model, src, cmap, query_model)
        if query_model == "log":  # read here, on the load's connection's thread, not in the worker
            prepared._logged = query_log.vectors(cmap.model, prepared.n)
        return prepared

    def feed(self, vectors: np.ndarray) -> None:
        """A written batch's vectors, kept for the truth while they fit in KEEP_BYTES."""
        if self._kept is None:
            return
        if self._kept_bytes + vectors.nbytes > KEEP_BYTES:
            self._kept = None  # too many: the thread reads the input's vector column instead
            return
        self._kept.append(vectors)
        self._kept_bytes += vectors.nbytes

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vectorstore-load-tuning", daemon=True)
        self._thread.start()

    def result(self) -> Prepared | None:
        """The queries and truth (None if making them failed: the load then tunes from the table)."""
        if self._thread is None:
            return None
        self._thread.join()
        if self._error is not None:
            logger.warning("tuning's preparation failed, measured from the table instead: %s", self._error)
            return None
        return self._result

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            self._result = self._prepare()
        except BaseException as exc:  # reported by result(); the load goes on
            self._error = exc
        self.prepare_seconds = time.perf_counter() - started

    def _rows(self, positions: np.ndarray, column: str) -> list:
        """The values of ``column`` at the given (sorted) row positions of the input."""
        out, start = [], 0
        for batch in self.src.iter_batches(65_536, columns=[column]):
            end = start + batch.num_rows
            inside = positions[(positions >= start) & (positions < end)] - start
            if len(inside):
                out += batch.column(0).take(pa.array(inside)).to_pylist()
            start = end
        return out

    def _matrices(self):
        """The written vectors (kept, else the input's, a batch at a time), as float32 matrices."""
        if self._kept is not None:
            yield from self._kept
            return
        if self.cmap.embedding_column is None:
            raise ValueError("the written vectors were too many to keep and the input has none")
        dims = self.cmap.dimensions
        for batch in self.src.iter_batches(65_536, columns=[self.cmap.embedding_column]):
            col = batch.column(0)
            lengths = pc.fill_null(pc.list_value_length(col), -1).to_numpy(zero_copy_only=False)
            ok = lengths == dims
            flat = pc.list_flatten(col.filter(pa.array(ok)) if not ok.all() else col)
            yield flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dims)

    def _queries(self) -> Queries:
        if self.query_model == "log" and self._logged is not None:
            return Queries("log", self._logged)
        from vectorstore.reembed import record

        started = time.perf_counter()
        embedder = record.embedder(self.model)
        embedder.model  # noqa: B018 (loaded here, timed on its own)
        self.model_seconds = time.perf_counter() - started
        rng = np.random.default_rng(0)
        positions = np.sort(rng.choice(self.src.num_rows, size=min(self.n, self.src.num_rows), replace=False))
        texts = [t[: tuning_queries.TEXT_CHARS] for t in self._rows(positions, self.cmap.text_column) if t]
        return tuning_queries.from_texts(self.model, texts, self.n, 0, embedder)

    def _prepare(self) -> Prepared:
        queries = self._queries()
        truth = KthDistances(queries.vectors, self.metric, K)
        for matrix in self._matrices():
            truth.add(matrix)
        return Prepared(queries, truth.kth(), K, self.metric)
