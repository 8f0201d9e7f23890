"""Parquet (and in-memory tables) read and written in bounded-memory batches, with pyarrow."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from vectorstore.validation import InputError

__all__ = ["AtomicParquetWriter", "InputError", "Source", "use_system_allocator"]


def use_system_allocator() -> None:
    """Make pyarrow allocate with the C library's malloc in this process.

    Its default allocator (mimalloc) keeps freed pages, so a long load's peak
    memory crept up with the file's size (1M rows: 1.25x the peak of 100k;
    with malloc: 1.08x, measured in benchmarks/). The commands call this; code
    that calls the loaders from Python keeps its own choice.
    """
    pa.set_memory_pool(pa.system_memory_pool())


class Source:
    """Batches of rows from a parquet file, an Arrow table or a pandas DataFrame.

    Only the file is read lazily (``iter_batches``), so memory is bounded by
    the batch size, not by the file.
    """

    def __init__(self, data: str | os.PathLike | pa.Table | Any, name: str | None = None) -> None:
        self.path: Path | None = None
        self._table: pa.Table | None = None
        self._file: pq.ParquetFile | None = None
        if isinstance(data, str | os.PathLike):
            self.path = Path(data)
            self.name = name or str(self.path)
            if not self.path.exists():
                raise InputError(f"{self.name}: no such file")
            if self.path.is_dir():
                raise InputError(f"{self.name}: is a folder, not a parquet file")
            try:
                self._file = pq.ParquetFile(self.path)
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{self.name}: not a parquet file ({exc})") from exc
            self.schema: pa.Schema = self._file.schema_arrow
            self.num_rows: int = self._file.metadata.num_rows
        else:
            if isinstance(data, pa.RecordBatch):
                data = pa.Table.from_batches([data])
            elif not isinstance(data, pa.Table):
                try:
                    data = pa.Table.from_pandas(data, preserve_index=False)
                except (TypeError, pa.ArrowException) as exc:
                    raise InputError(f"cannot read {type(data).__name__} as a table: {exc}") from exc
            self._table = data
            self.name = name or f"<{type(data).__name__}>"
            self.schema = data.schema
            self.num_rows = data.num_rows

    @property
    def columns(self) -> list[str]:
        return self.schema.names

    def require(self, column: str, what: str) -> pa.DataType:
        """The column's type, or an InputError naming the file, the column and what it was for."""
        if column not in self.schema.names:
            raise InputError(
                f"{self.name}: no {what} column {column!r} (columns: {', '.join(self.schema.names)})"
            )
        return self.schema.field(column).type

    def iter_batches(self, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
        if self._file is not None:
            # One row group at a time, handing freed memory back after each: pyarrow's
            # iter_batches over a whole file keeps what it has read, so a 1M-row file
            # would cost 10x the memory of a 100k one (measured in benchmarks/).
            pool = pa.default_memory_pool()
            try:
                for group in range(self._file.metadata.num_row_groups):
                    yield from self._file.iter_batches(
                        batch_size=batch_size, columns=columns, row_groups=[group]
                    )
                    pool.release_unused()
            except (pa.ArrowInvalid, OSError) as exc:
                raise InputError(f"{self.name}: unreadable parquet data ({exc})") from exc
        else:
            table = self._table if columns is None else self._table.select(columns)
            yield from table.to_batches(max_chunksize=batch_size)


class AtomicParquetWriter:
    """Writes a parquet file batch by batch; it appears under its name only when complete.

    A failed or interrupted run leaves no half-written output behind.
    """

    def __init__(self, path: str | os.PathLike, schema: pa.Schema, compression: str = "zstd") -> None:
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.schema = schema
        self._writer = pq.ParquetWriter(self.tmp, schema, compression=compression)
        self.rows = 0

    def write(self, batch: pa.RecordBatch | pa.Table) -> None:
        self._writer.write(batch)
        self.rows += batch.num_rows

    def close(self) -> None:
        self._writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> AtomicParquetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
