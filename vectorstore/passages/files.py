"""Passages in a parquet file: ``embed_parquet --passages`` writes each row's passages beside its vector,
and a load (``bulk_copy``) takes them rather than running the model again.

The column ``passages`` holds, for each row, a list of ``{start, end, embedding}`` (the ordinal is the
place in the list; ``text[start:end]`` is the passage), and the file's schema metadata says how they were
cut (window, overlap, model). A load COPYs them into a staging table keyed by the MD5 of the text they
were cut from, then one INSERT ... SELECT gives them to the documents of the table that have none and
hold that text: passages are a function of the text, so rows are matched without ids and whatever the
load did with them (inserted, updated, skipped, rejected). Documents the file has no passages for are
then embedded as before (``passages.fill_missing``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from django.db import models
from psycopg import sql

from vectorstore import conf
from vectorstore import passages as passages_mod
from vectorstore.indexing import indexes
from vectorstore.loading import pgcopy
from vectorstore.loading.parquet import Source
from vectorstore.passages.split import Passage
from vectorstore.progress import make_bar
from vectorstore.validation import InputError

COLUMN = "passages"
METADATA_KEY = b"vectorstore.passages"
PASSAGE_TYPE = pa.struct([("start", pa.int32()), ("end", pa.int32()), ("embedding", pa.list_(pa.float32()))])
COLUMN_TYPE = pa.list_(PASSAGE_TYPE)
_STAGE = "vectorstore_file_passages"


def is_passage_column(data_type: pa.DataType) -> bool:
    """Whether a column's type is that of ``embed_parquet --passages``' column."""
    if not (pa.types.is_list(data_type) or pa.types.is_large_list(data_type)):
        return False
    item = data_type.value_type
    return pa.types.is_struct(item) and {item.field(i).name for i in range(item.num_fields)} >= {
        "start",
        "end",
        "embedding",
    }


def column(parts: Sequence[list[Passage]], vectors: Sequence[np.ndarray]) -> pa.Array:
    """The ``passages`` column of a batch: each row's passages and their vectors."""
    counts = np.array([len(ps) for ps in parts], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(counts)]).astype(np.int32))
    flat = [p for ps in parts for p in ps]
    stacked = np.concatenate([v for v in vectors if len(v)]) if flat else np.zeros((0, 1), np.float32)
    embedding = pa.FixedSizeListArray.from_arrays(
        pa.array(stacked.astype(np.float32).reshape(-1)), stacked.shape[1]
    ).cast(pa.list_(pa.float32()))
    items = pa.StructArray.from_arrays(
        [
            pa.array([p.start for p in flat], pa.int32()),
            pa.array([p.end for p in flat], pa.int32()),
            embedding,
        ],
        fields=list(PASSAGE_TYPE),
    )
    return pa.ListArray.from_arrays(offsets, items)


def metadata(embedder: Any) -> dict[bytes, bytes]:
    """The schema metadata recording how the file's passages were cut."""
    size, overlap = passages_mod.cut(embedder)
    described = {"window": size, "overlap": overlap, "model": embedder.label}
    return {METADATA_KEY: json.dumps(described).encode()}


def described(src: Source) -> dict[str, Any] | None:
    """How a file's passages were cut (its schema metadata), where it says."""
    raw = (src.schema.metadata or {}).get(METADATA_KEY)
    try:
        return json.loads(raw) if raw else None
    except ValueError:
        return None


def _stage_rows(
    src: Source, batch: pa.RecordBatch, text_column: str, first_row: int, dims: int
) -> list[tuple[bytes, int, int, int, bytes]]:
    """(digest, ordinal, start, end, vector) of a batch's passages, checked against their texts. Rows
    with no passages are left to the load (it embeds them)."""
    texts = batch.column(text_column).to_pylist()
    lists = batch.column(COLUMN)
    counts = pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False)
    starts, ends, vectors = _fields(lists.flatten())
    lengths = pc.fill_null(pc.list_value_length(vectors), -1).to_numpy(zero_copy_only=False)
    out: list[tuple[bytes, int, int, int, bytes]] = []
    item = 0
    for i, (text, count) in enumerate(zip(texts, counts, strict=True)):
        where = f"{src.name}: column {COLUMN!r}, row {first_row + i}"
        for ordinal in range(count):
            start, end = starts[item + ordinal], ends[item + ordinal]
            if text is None or start < 0 or not start < end <= len(text):
                size = "no" if text is None else f"a {len(text)}-character"
                raise InputError(f"{where}: passage {ordinal} spans [{start}:{end}] of {size} text")
            if lengths[item + ordinal] != dims:
                got = "no vector" if lengths[item + ordinal] < 0 else f"{lengths[item + ordinal]} numbers"
                raise InputError(f"{where}: passage {ordinal} has {got}, not {dims} numbers")
        if count:  # (a row with passages and no text was refused above)
            digest = hashlib.md5(text.encode()).digest()  # a key, not a secret
            out += [(digest, o, int(starts[item + o]), int(ends[item + o]), None) for o in range(count)]
        item += count
    if out:
        values = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, dims)
        out = [(*row[:4], vector) for row, vector in zip(out, pgcopy.encode_vectors(values), strict=True)]
    return out


def _fields(items: pa.StructArray) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """start, end (-1 where null) and the embedding lists of the passages."""
    start, end, embedding = (items.field(name) for name in ("start", "end", "embedding"))
    if items.offset:  # StructArray.field ignores a slice's offset
        start, end, embedding = (a.slice(items.offset, len(items)) for a in (start, end, embedding))
    numbers = [pc.fill_null(a, -1).to_numpy(zero_copy_only=False) for a in (start, end)]
    return numbers[0], numbers[1], embedding


def copy_file_passages(
    conn: Any,
    document: type[models.Model],
    src: Source,
    text_column: str,
    batch_size: int = 4096,
    on_batch: Callable[[int], None] | None = None,
) -> int:
    """Write the file's passages for the documents of the table that have none and hold their text (in the
    caller's transaction); returns how many were written. Raises InputError naming the row of a passage
    whose span or vector is wrong (nothing is written)."""
    model = passages_mod.passage_model(document)
    dims = model._meta.get_field("embedding").dimensions
    with conn.cursor() as cursor:
        cursor.execute(
            sql.SQL(
                'CREATE TEMP TABLE {} (digest bytea, ordinal int4, start int4, "end" int4, embedding vector)'
                " ON COMMIT DROP"
            ).format(sql.Identifier(_STAGE))
        )
    target = pgcopy.Target.introspect(conn, _STAGE, ["digest", "ordinal", "start", "end", "embedding"])

    def rows() -> Iterator[tuple[bytes, int, int, int, bytes]]:
        first = 0
        for batch in src.iter_batches(batch_size, columns=[text_column, COLUMN]):
            yield from _stage_rows(src, batch, text_column, first, dims)
            first += batch.num_rows
            if on_batch is not None:
                on_batch(batch.num_rows)

    pgcopy.copy_rows(conn, target, rows())
    fields = {name: model._meta.get_field(name).column for name in ("document", "ordinal", "start", "end")}
    statement = sql.SQL(
        "INSERT INTO {p} ({fk}, {ordinal}, {start}, {end}, embedding)"
        ' SELECT d.{pk}, s.ordinal, s.start, s."end", s.embedding FROM {d} d'
        " JOIN (SELECT DISTINCT ON (digest, ordinal) * FROM {stage} ORDER BY digest, ordinal) s"
        " ON s.digest = decode(md5(d.{text}), 'hex')"
        " WHERE NOT EXISTS (SELECT FROM {p} p WHERE p.{fk} = d.{pk})"
    ).format(
        p=sql.Identifier(model._meta.db_table),
        fk=sql.Identifier(fields["document"]),
        ordinal=sql.Identifier(fields["ordinal"]),
        start=sql.Identifier(fields["start"]),
        end=sql.Identifier(fields["end"]),
        pk=sql.Identifier(document._meta.pk.column),
        d=sql.Identifier(document._meta.db_table),
        stage=sql.Identifier(_STAGE),
        text=sql.Identifier(document._meta.get_field("text").column),
    )
    with conn.cursor() as cursor:
        cursor.execute(statement)
        written = cursor.rowcount
        cursor.execute(sql.SQL("DROP TABLE {}").format(sql.Identifier(_STAGE)))
    return written


def write_missing(
    conn: Any,
    src: Source,
    document: type[models.Model],
    text_column: str,
    passage_column: str | None,
    embedder: Any,
    changed: int,
    progress: bool | None,
    rebuild: bool,
    warnings: list[str],
) -> tuple[int, list[indexes.IndexDef]]:
    """A load's last step for a model that keeps passages: the passages of the documents that have none,
    the file's own (``passage_column``) where it has them for their text, the rest cut and embedded
    here (``passages.fill_missing``; ``changed``, the documents the load wrote, sizes its progress bar).
    With ``rebuild`` (the load's index strategy) and an empty passage table, its vector and other
    secondary indexes are dropped first, for the load to build after the rows, as the document table's.
    Returns how many passages were written and the indexes dropped. A file cut otherwise than this site
    would cut is taken as it is, and said in ``warnings``."""
    table = passages_mod.passage_model(document)._meta.db_table
    dropped = []
    if rebuild and not pgcopy.table_size_at_least(conn, table, 1):
        dropped = indexes.rebuildable_indexes(conn, table)
        indexes.drop_indexes(conn, dropped)
    written = 0
    if passage_column:
        cut = described(src) or {}
        mine = {"model": embedder.label, "overlap": conf.passage_overlap(), "window": conf.passage_window()}
        differ = [
            f"{k} {cut.get(k)!r} (here {v!r})" for k, v in mine.items() if v is not None and cut.get(k) != v
        ]
        if differ:
            warnings.append(f"{src.name}: its passages were cut with {', '.join(differ)}; taken as they are")
        with make_bar(src.num_rows, "passages from file", enabled=progress) as bar:
            written = copy_file_passages(conn, document, src, text_column, on_batch=bar.update)
    total = None if passage_column else changed  # how many the file left is not known
    with make_bar(total, "passages", unit="documents", enabled=progress) as bar:
        written += passages_mod.fill_missing(conn, document, embedder, on_batch=bar.update)
    if dropped:
        # The passages' foreign key is checked at commit (Django's are DEFERRABLE INITIALLY DEFERRED),
        # and PostgreSQL builds no index on a table with checks pending: switching the constraint to
        # IMMEDIATE runs them now, and back to DEFERRED leaves none pending.
        for (name,) in conn.execute(
            "SELECT conname FROM pg_constraint WHERE conrelid = to_regclass(%s) AND condeferred",
            [sql.Identifier(table).as_string(conn)],
        ).fetchall():
            for mode in ("IMMEDIATE", "DEFERRED"):
                conn.execute(sql.SQL("SET CONSTRAINTS {} {}").format(sql.Identifier(name), sql.SQL(mode)))
    return written, dropped
