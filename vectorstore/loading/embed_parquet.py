"""Embed a table's texts into a parquet file: every input column kept, plus ``embedding``.

from vectorstore.loading.embed_parquet import embed_parquet
report = embed_parquet("texts.parquet", "embedded.parquet")   # or a DataFrame / Arrow table
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from dataclasses import asdict, dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from vectorstore.embedding import Embedder
from vectorstore.loading.parquet import AtomicParquetWriter, Source
from vectorstore.loading.rows import is_string, prefetch
from vectorstore.passages import files as passage_files
from vectorstore.passages import passage_vectors, split_texts
from vectorstore.progress import make_bar
from vectorstore.reembed import record
from vectorstore.validation import InputError


@dataclass
class EmbedReport:
    rows: int = 0  # rows read
    embedded: int = 0
    skipped: int = 0  # null or empty text: not written, as the notebook drops them
    truncated: int = 0
    passages: int = 0  # passages written beside the vectors (``passages=True``)
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
        if self.passages:
            line += f"; {self.passages} passages (none cut short)"
        elif self.truncated:
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
    passages: bool = False,
) -> EmbedReport:
    """Embed a table's texts into OUTPUT: every input column kept, plus ``embedding`` (float32 lists).

    ``passages``: also each text's passages (``vectorstore.passages.files``: a ``passages`` column, cut
    by this site's PASSAGE_WINDOW and PASSAGE_OVERLAP), which a load into a model that keeps passages
    takes as they are.

    Reads and writes in batches (memory bounded by the batch); the output appears only once complete.
    Batches are large because sentence-transformers sorts each call's texts by length: the
    more texts per call, the less padding (on a GPU, 2,048 per call cost 15% against one call).
    """
    src = Source(data)
    text_type = src.require(text_column, "text")
    if not is_string(text_type):
        raise InputError(f"{src.name}: column {text_column!r} must hold strings, not {text_type}")
    embedder = embedder or Embedder()
    loading = time.perf_counter()
    model = embedder.model  # load (and check) before opening the output
    dims = embedder.dimensions
    started = time.perf_counter()
    fields = [f for f in src.schema if f.name not in ("embedding", passage_files.COLUMN)]
    added = [pa.field("embedding", pa.list_(pa.float32()))]
    meta = dict(src.schema.metadata or {})
    meta.update(record.file_metadata(embedder))  # which model made the vectors: bulk_copy checks it
    if passages:
        added.append(pa.field(passage_files.COLUMN, passage_files.COLUMN_TYPE))
        meta.update(passage_files.metadata(embedder))
    schema = pa.schema([*fields, *added], metadata=meta or None)
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
                columns = [*(batch.column(f.name) for f in fields), vectors.cast(pa.list_(pa.float32()))]
                if passages:
                    parts = split_texts(texts, embedder)
                    columns.append(
                        passage_files.column(parts, passage_vectors(parts, result.vectors, embedder))
                    )
                    report.passages += sum(len(ps) for ps in parts)
                out = pa.RecordBatch.from_arrays(columns, schema=schema)
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
