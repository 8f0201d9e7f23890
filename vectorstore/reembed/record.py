"""The embedding model recorded with a table's vectors (``EmbeddingRecord``): read and cached per process,
and checked inside the transaction of every search, save and batch that embedded a text with it.

Why a check in the transaction and not only a fresh read: ``reembed`` swaps a table's vectors in one
transaction holding ACCESS EXCLUSIVE on the table, and every statement that reads or writes the table holds
a lock on it until its own transaction ends. So a transaction that has touched the table and then reads
the record's ``version`` sees the version its rows belong to: either the swap committed before it started
(new vectors, new version) or it waits for this transaction (old vectors, old version). A process whose
copy was older did its work with the wrong model: ``ModelChanged`` says so, and the work is done again with
the model the table now has (a search's answer is never computed across two models).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from threading import Lock
from typing import Any

from django.db import connections, models
from django.utils import timezone

from vectorstore import conf
from vectorstore.embedding import DEFAULT_MODEL_LABEL, Embedder, EmbeddingError, bundled_model_path

RECORD = "vectorstore_embeddingrecord"
GUARD_SQL = f"SELECT coalesce((SELECT version FROM {RECORD} WHERE db_table = %s), 0)"
# Files of a model's directory read whole up to this size; beyond, their size and both ends.
_WHOLE = 1 << 20


class ModelChanged(Exception):
    """The table's embedding model changed while this process worked with the one it had read: the work
    is to be done again (the process's copy of the record is forgotten already)."""


class ModelMismatch(EmbeddingError):
    """Vectors of one model offered to a table whose vectors another model made."""


@dataclass(frozen=True)
class Recorded:
    """A table's record; ``version`` 0 when none is stored yet. ``adopt``: the table holds no vector (or
    none recorded), so its record binds nothing and the configured model is used; the first write of
    vectors records it (``hold``)."""

    table: str
    model: str  # a name or path as configured; "" is the bundled default
    dimensions: int
    fingerprint: str
    version: int
    updated_at: datetime | None = None
    shadow_state: str = ""  # "" | filling | previous
    shadow_model: str = ""
    shadow_dimensions: int | None = None
    shadow_fingerprint: str = ""
    adopt: bool = False

    @property
    def label(self) -> str:
        return label(self.model)

    @property
    def shadow_label(self) -> str:
        return label(self.shadow_model)


def label(name: str) -> str:
    return name or DEFAULT_MODEL_LABEL


def configured(model: type[models.Model]) -> str:
    """The embedding model the site configures for a document model ("" for the bundled default)."""
    return getattr(model, "embedding_model", None) or conf.model_name() or ""


@lru_cache(maxsize=32)
def fingerprint(name: str) -> str:
    """A fingerprint of a model's files: their names, sizes and contents (the ends of files over 1 MiB,
    so that the weights are not read whole), the same wherever the directory lies. A name that is no
    directory here is fingerprinted by its name. Written by hand: sentence-transformers and the hub give
    no identity of a model's weights."""
    try:
        path = Path(name or bundled_model_path())
    except EmbeddingError:
        path = Path(DEFAULT_MODEL_LABEL)
    digest = hashlib.sha256()
    if not path.is_dir():
        digest.update(f"name:{name}".encode())
        return digest.hexdigest()[:32]
    files = sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and not any(part.startswith(".") or part == "__pycache__" for part in p.relative_to(path).parts)
        and not p.name.lower().startswith("readme")
    )
    for file in files:
        size = file.stat().st_size
        digest.update(f"{file.relative_to(path).as_posix()}\0{size}\0".encode())
        with file.open("rb") as handle:
            if size <= 2 * _WHOLE:
                digest.update(handle.read())
            else:
                digest.update(handle.read(_WHOLE))
                handle.seek(size - _WHOLE)
                digest.update(handle.read(_WHOLE))
    return digest.hexdigest()[:32]


_cache: dict[tuple[str, str], tuple[float, Recorded | None, bool]] = {}  # (read at, stored, holds vectors)
_lock = Lock()


def _document(model: type[models.Model]) -> type[models.Model]:
    # A passage model's vectors are its document model's (one record, moved by the same swap). Read
    # from the class as vectorstore.passages.document_of does, which this module cannot import (a circle).
    return model.__dict__.get("_passages_of") or model


def _assumed(model: type[models.Model], stored: Recorded | None = None) -> Recorded:
    """A table whose record binds nothing: the configured model, of the field's size, at the stored
    record's version (0 without one), to be recorded by its first write of vectors."""
    model = _document(model)
    name = configured(model)
    dims = model._meta.get_field("embedding").dimensions
    version = stored.version if stored is not None else 0
    return Recorded(model._meta.db_table, name, dims, fingerprint(name), version, adopt=True)


def _binding(model: type[models.Model], stored: Recorded | None, holds: bool) -> Recorded:
    return stored if stored is not None and holds else _assumed(model, stored)


def read_table(table: str, using: str = "default") -> Recorded | None:
    """The stored record of a table, read now; None without one."""
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT model, dimensions, fingerprint, version, updated_at, shadow_state, shadow_model,"
            f" shadow_dimensions, shadow_fingerprint FROM {RECORD} WHERE db_table = %s",
            [table],
        )
        row = cursor.fetchone()
    return Recorded(table, *row) if row else None


def read(model: type[models.Model], using: str = "default") -> Recorded:
    """The table's record read now (and kept as the process's copy); the configured model where the
    table holds no vector (``adopt``)."""
    model = _document(model)
    stored = read_table(model._meta.db_table, using)
    holds = holds_vectors(model, using)
    with _lock:
        _cache[(using, model._meta.db_table)] = (time.monotonic(), stored, holds)
    return _binding(model, stored, holds)


def cached(model: type[models.Model], using: str = "default") -> tuple[Recorded] | None:
    """``(current(model, using),)`` when the process's copy is fresh, else None (no I/O)."""
    model = _document(model)
    with _lock:
        found = _cache.get((using, model._meta.db_table))
    if found is None or time.monotonic() - found[0] >= conf.index_lookup_seconds():
        return None
    return (_binding(model, found[1], found[2]),)


def current(model: type[models.Model], using: str = "default") -> Recorded:
    """The table's record: the process's copy, read again at most every INDEX_LOOKUP_SECONDS (a stale
    copy is caught by ``check_version`` in the transaction that used it)."""
    found = cached(model, using)
    return found[0] if found is not None else read(model, using)


def forget(table: str | None = None) -> None:
    """Read the record(s) afresh at next use."""
    with _lock:
        for key in [k for k in _cache if table is None or k[1] == table]:
            del _cache[key]


def embedder(
    model: type[models.Model],
    using: str = "default",
    *,
    device: str | None = None,
    batch_size: int | None = None,
    recorded: Recorded | None = None,
) -> Embedder:
    """The Embedder of the model that made the table's vectors: the configured one where it is the same
    model (by fingerprint, wherever it lies), else the recorded name or path."""
    r = recorded or current(model, using)
    name = configured(_document(model))
    if fingerprint(name) != r.fingerprint:
        name = r.model
    # "" is the bundled model: named by its path, since Embedder(model=None) would follow the settings.
    embedder_ = Embedder(
        model=name or bundled_model_path(), device=device, batch_size=batch_size, dimensions=r.dimensions
    )
    embedder_.recorded = r
    return embedder_


def hold(model: type[models.Model], using: str, recorded: Recorded) -> None:
    """In a write's transaction, once it holds its lock on the table: vectors of ``recorded``'s model are
    the table's (a table that held none records their model now), or ModelChanged."""
    if recorded.adopt:
        _store(model, using, recorded.model, recorded.dimensions, recorded.fingerprint)
    with connections[using].cursor() as cursor:
        check_version(cursor, _document(model)._meta.db_table, recorded.version if not recorded.adopt else -1)


def moved(model: type[models.Model], using: str, recorded: Recorded, error: Exception) -> bool:
    """Whether a write's error means the table moved to another model since ``recorded`` was read
    (ModelChanged, or a database error where the record's version is no longer the one used)."""
    if isinstance(error, ModelChanged):
        return True
    return not recorded.adopt and read(model, using).version != recorded.version


def check_version(cursor: Any, table: str, version: int) -> None:
    """In the transaction that touched the table: ModelChanged unless its record is still at ``version``."""
    cursor.execute(GUARD_SQL, [table])
    now = cursor.fetchone()[0]
    if now != version and version != -1:
        forget(table)
        raise ModelChanged(f"{table}: embedding model version {version} became {now}")


def _store(model: type[models.Model], using: str, name: str, dims: int, print_: str) -> None:
    """The table's record set to this model (its version grows where the model is another)."""
    table = _document(model)._meta.db_table
    with connections[using].cursor() as cursor:
        cursor.execute(
            f"INSERT INTO {RECORD} AS r (db_table, model, dimensions, fingerprint, version, updated_at,"
            " shadow_state, shadow_model, shadow_fingerprint) VALUES (%s, %s, %s, %s, 1, %s, '', '', '')"
            " ON CONFLICT (db_table) DO UPDATE SET model = EXCLUDED.model, dimensions = EXCLUDED.dimensions,"
            " fingerprint = EXCLUDED.fingerprint, version = r.version + 1, updated_at = EXCLUDED.updated_at"
            " WHERE (r.fingerprint, r.dimensions)"
            " IS DISTINCT FROM (EXCLUDED.fingerprint, EXCLUDED.dimensions)",
            [table, name, dims, print_, timezone.now()],
        )
    forget(table)


def ensure(model: type[models.Model], using: str = "default") -> Recorded:
    """A table that holds vectors and no record (made before records were kept) is recorded with the
    configured model (``migrate`` does it); the table's record is returned."""
    model = _document(model)
    stored = read_table(model._meta.db_table, using)
    if stored is None and holds_vectors(model, using):
        assumed = _assumed(model)
        _store(model, using, assumed.model, assumed.dimensions, assumed.fingerprint)
    return read(model, using)


def accept(model: type[models.Model], using: str, name: str, dims: int, print_: str) -> Recorded:
    """Vectors made by ``name`` (``print_``, ``dims``) about to be written: the table's record where they
    are its model's; a table holding no vector yet takes their model as its own; else ModelMismatch naming
    both."""
    r = read(model, using)
    if print_ == r.fingerprint and dims == r.dimensions and not r.adopt:
        return r
    if r.adopt:
        _store(model, using, name, dims, print_)
        return replace(read(model, using), adopt=False)
    raise ModelMismatch(
        f"{r.table} holds vectors of {r.label} ({r.dimensions} dimensions); these were made by "
        f"{label(name)} ({dims} dimensions): embed them with {r.label}, or move the table to "
        f"{label(name)} first (manage.py reembed --embedding-model {name or '<path>'})"
    )


METADATA_KEY = b"vectorstore.embedding"


def file_metadata(embedder: Embedder) -> dict[bytes, bytes]:
    """A parquet file's schema metadata naming the model that made its vectors (``embed_parquet``)."""
    name = embedder.model_name or ""
    described = {"model": name, "dimensions": embedder.dimensions, "fingerprint": fingerprint(name)}
    return {METADATA_KEY: json.dumps(described).encode()}


def made_by(metadata: dict | None, embedder: Embedder | None) -> tuple[str, int, str] | None:
    """(name, dimensions, fingerprint) of the model whose vectors a load writes: the embedder's where the
    load embeds, else what the file's metadata says; None where neither tells (vectors made elsewhere)."""
    if embedder is not None:
        name = embedder.model_name or ""
        print_ = fingerprint(name)
        return ("" if print_ == fingerprint("") else name), embedder.dimensions, print_
    try:
        described = json.loads((metadata or {})[METADATA_KEY])
        return str(described["model"]), int(described["dimensions"]), str(described["fingerprint"])
    except (KeyError, TypeError, ValueError):
        return None


def holds_vectors(model: type[models.Model], using: str = "default") -> bool:
    """Whether any row of the table has a vector."""
    connection = connections[using]
    column = connection.ops.quote_name(model._meta.get_field("embedding").column)
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT EXISTS (SELECT 1 FROM {connection.ops.quote_name(model._meta.db_table)}"
            f" WHERE {column} IS NOT NULL)"
        )
        return cursor.fetchone()[0]
