"""psycopg beside Django: the connection under a Django alias (or a fresh one like it) ready for
vectors, pgvector's binary format built with numpy, and a table's row count.

pgvector-python registers the vector type with psycopg; what it does not give is a way to hand COPY or a
pipeline a whole batch of vectors encoded at once, so ``encode_vectors`` builds pgvector's binary format
with numpy (one pass per batch instead of one Python object per row) and ``VectorBytesDumper`` passes
those bytes through.
"""

from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import psycopg
from django.db import connections
from pgvector.psycopg import register_vector
from psycopg import sql
from psycopg.adapt import Dumper
from psycopg.pq import Format

_registered: weakref.WeakSet = weakref.WeakSet()


class VectorBytesDumper(Dumper):
    """Binary dumper for the vector oid: pre-encoded bytes pass through; anything else via pgvector."""

    format = Format.BINARY

    def dump(self, obj: Any) -> Any:
        if isinstance(obj, bytes | memoryview):
            return obj
        from pgvector import Vector

        return (obj if isinstance(obj, Vector) else Vector(obj)).to_binary()


class _EncodedVector(bytes):
    """Marker type under which VectorBytesDumper is registered."""


def prepare_connection(conn: psycopg.Connection) -> psycopg.Connection:
    """Register pgvector's types (and the pass-through dumper) on a psycopg connection, once."""
    if conn not in _registered:
        register_vector(conn)
        register_encoded_vectors(conn)
        _registered.add(conn)
    return conn


def register_encoded_vectors(conn: psycopg.Connection | psycopg.AsyncConnection) -> None:
    """The pass-through dumper for ``binary_vector``'s bytes, on a connection that knows the vector type."""
    info = conn.adapters.types["vector"]
    conn.adapters.register_dumper(_EncodedVector, type("", (VectorBytesDumper,), {"oid": info.oid}))


def django_connection(using: str = "default") -> psycopg.Connection:
    """Django's own psycopg connection for ``using``, ready for vectors."""
    wrapper = connections[using]
    wrapper.ensure_connection()
    return prepare_connection(wrapper.connection)


def new_connection(using: str = "default", **kwargs: Any) -> psycopg.Connection:
    """A separate connection with the same parameters as Django's (for workers and progress polling)."""
    params = connections[using].get_connection_params()
    params.pop("cursor_factory", None)
    params.update(kwargs)
    return prepare_connection(psycopg.connect(**params))


def encode_vectors(vectors: np.ndarray) -> list[bytes]:
    """pgvector's binary format (uint16 dim, uint16 0, float32 big-endian values) for each row."""
    n, dims = vectors.shape
    width = 4 + 4 * dims
    buf = np.empty((n, width), dtype=np.uint8)
    buf[:, :4] = np.array([dims, 0], dtype=">u2").view(np.uint8)
    buf[:, 4:] = np.ascontiguousarray(vectors, dtype=">f4").view(np.uint8).reshape(n, 4 * dims)
    data = buf.tobytes()
    return [data[i : i + width] for i in range(0, n * width, width)]


def binary_vector(vector: np.ndarray) -> bytes:
    """One vector in pgvector's binary format, as a parameter psycopg sends as a binary ``vector``
    (on a connection from ``prepare_connection``)."""
    return _EncodedVector(encode_vectors(np.asarray(vector, dtype=np.float32)[None, :])[0])


def count_rows(conn: psycopg.Connection, table: str) -> int:
    return conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()[0]
