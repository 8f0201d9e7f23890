"""``VectorIndex``: an HNSW or IVFFlat index on a vector field at full precision, half precision or as
sign bits, with the expression and operator class each kind needs, declared in ``Meta.indexes``:

    class Passage(AbstractDocument):
        class Meta(AbstractDocument.Meta):
            indexes = [
                *AbstractDocument.Meta.indexes,
                VectorIndex(name="passage_half", dimensions=384, quantization="half"),
            ]

It is pgvector-python's ``HnswIndex`` / ``IvfflatIndex`` on the expression pgvector's documentation
gives for each kind (the cast to ``halfvec(n)``, or ``binary_quantize(...)::bit(n)``, with
``halfvec_*_ops`` or ``bit_hamming_ops``), written once here because those casts, dimensions and
operator classes are what users of pgvector-python get wrong; ``makemigrations`` writes it with the
same arguments (``deconstruct``).

Searches follow whichever vector index the table has (``serving``): the index's own expression in
``ORDER BY``, candidates re-ranked by the full-precision distance for a quantized one
(``vectorstore.search``). ``manage.py vector_index`` lists the indexes and switches kinds on a live table.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from threading import Lock
from typing import Any

from django.contrib.postgres.indexes import OpClass, PostgresIndex
from django.db import connections, models
from django.db.models import F, Func
from django.db.models.functions import Cast
from pgvector.django import (
    BitField,
    CosineDistance,
    HalfVectorField,
    HammingDistance,
    L2Distance,
    MaxInnerProduct,
)

from vectorstore import conf

METHODS = ("hnsw", "ivfflat")
QUANTIZATIONS = (None, "half", "binary")
# pgvector's operator class suffixes, by the app's metric names (limits.METRICS).
OPS = {"cosine": "cosine_ops", "l2": "l2_ops", "inner_product": "ip_ops"}


class BinaryQuantize(Func):
    """pgvector's ``binary_quantize(vector)``: one bit per dimension, set where the value is positive."""

    function = "binary_quantize"
    output_field = BitField()


def index_expression(field: str, quantization: str | None, dimensions: int | None) -> Any:
    """What the index holds: the column, its ``halfvec(n)`` cast, or ``binary_quantize(...)::bit(n)``.
    Searches order by the same expression, so that the planner matches it to the index."""
    if quantization is None:
        return F(field)
    if quantization == "half":
        return Cast(F(field), HalfVectorField(dimensions=dimensions))
    return Cast(BinaryQuantize(F(field)), BitField(length=dimensions))


def order_expression(
    field: str,
    quantization: str | None,
    dimensions: int | None,
    metric: str,
    query: Any,
) -> Any:
    """The distance an index of this kind orders by, between the column and ``query`` (an expression):
    the same cast on both sides for half precision, Hamming distance between sign bits for binary."""
    if quantization == "binary":
        return HammingDistance(
            index_expression(field, "binary", dimensions),
            Cast(BinaryQuantize(query), BitField(length=dimensions)),
        )
    distance = {
        "cosine": CosineDistance,
        "l2": L2Distance,
        "inner_product": MaxInnerProduct,
    }[metric]
    if quantization == "half":
        return distance(
            index_expression(field, "half", dimensions),
            Cast(query, HalfVectorField(dimensions=dimensions)),
        )
    return distance(F(field), query)


def opclass(quantization: str | None, metric: str) -> str:
    if quantization == "binary":
        return "bit_hamming_ops"  # sign bits compare by Hamming distance, whatever the metric re-ranks
    return f"{'halfvec' if quantization == 'half' else 'vector'}_{OPS[metric]}"


class VectorIndex(PostgresIndex):
    """An HNSW (``m``, ``ef_construction``) or IVFFlat (``lists``) index on ``field`` for ``metric``,
    at full precision (``quantization=None``), half precision (``"half"``) or binary (``"binary"``,
    for a search that re-ranks by the full vectors). ``dimensions`` is the field's, needed by the casts.
    """

    def __init__(
        self,
        *,
        name: str,
        field: str = "embedding",
        dimensions: int | None = None,
        method: str = "hnsw",
        quantization: str | None = None,
        metric: str = "cosine",
        m: int | None = None,
        ef_construction: int | None = None,
        lists: int | None = None,
        **kwargs: Any,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"VectorIndex method={method!r}: expected one of {', '.join(METHODS)}")
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"VectorIndex quantization={quantization!r}: expected None, 'half' or 'binary'")
        if metric not in OPS:
            raise ValueError(f"VectorIndex metric={metric!r}: expected one of {', '.join(OPS)}")
        if quantization is not None and not (isinstance(dimensions, int) and dimensions > 0):
            raise ValueError(f"VectorIndex quantization={quantization!r} needs dimensions= (the field's)")
        if method == "ivfflat" and (m is not None or ef_construction is not None):
            raise ValueError("VectorIndex: m and ef_construction are HNSW's; IVFFlat takes lists")
        if method == "hnsw" and lists is not None:
            raise ValueError("VectorIndex: lists is IVFFlat's; HNSW takes m and ef_construction")
        self.field, self.dimensions, self.method = field, dimensions, method
        self.quantization, self.metric = quantization, metric
        self.m, self.ef_construction, self.lists = m, ef_construction, lists
        self.suffix = method  # PostgresIndex writes USING <suffix>
        expression = OpClass(
            index_expression(field, quantization, dimensions),
            name=opclass(quantization, metric),
        )
        super().__init__(expression, name=name, **kwargs)

    def deconstruct(self) -> tuple[str, tuple, dict[str, Any]]:
        path, _, kwargs = super().deconstruct()  # the expression is rebuilt from the options below
        options = {
            "field": (self.field, "embedding"),
            "dimensions": (self.dimensions, None),
            "method": (self.method, "hnsw"),
            "quantization": (self.quantization, None),
            "metric": (self.metric, "cosine"),
            "m": (self.m, None),
            "ef_construction": (self.ef_construction, None),
            "lists": (self.lists, None),
        }
        kwargs.update({key: value for key, (value, default) in options.items() if value != default})
        return path, (), kwargs

    def get_with_params(self) -> list[str]:
        params = {
            "m": self.m,
            "ef_construction": self.ef_construction,
            "lists": self.lists,
        }
        return [f"{key} = {int(value)}" for key, value in params.items() if value is not None]


# --------------------------------------------------------------------------- the indexes a table has

_METRIC_OF = {"cosine_ops": "cosine", "l2_ops": "l2", "ip_ops": "inner_product"}


@dataclass(frozen=True)
class FoundIndex:
    """A vector index on a table, read from the catalog: its kind, what it serves, its size."""

    name: str
    method: str  # hnsw | ivfflat
    quantization: str | None  # None | half | binary
    metric: str | None  # the metric its operator class orders by; None for bit_hamming_ops
    dimensions: int | None
    valid: bool
    size_bytes: int
    oid: int

    @property
    def kind(self) -> str:
        return self.quantization or "full"

    def serves(self, metric: str, dimensions: int | None = None) -> bool:
        """Whether a search by ``metric`` can order by this index: a full or half index of that metric, or
        a binary one (its Hamming order only picks candidates; the re-rank uses the metric). ``dimensions``:
        also of that size (None: the column's, which every index on it has)."""
        if not self.valid or (None not in (self.dimensions, dimensions) and self.dimensions != dimensions):
            return False
        return self.quantization == "binary" or self.metric == metric


def _kind_of(key: str, opclass_name: str, column: str) -> tuple[str | None, str | None, int | None] | None:
    """(quantization, metric, dimensions) from an index's key expression and operator class, as
    pg_get_indexdef prints them (with or without its extra parentheses); None for a shape the searches
    do not send (a subvector, say)."""
    col = rf'\(?"?{re.escape(column)}"?\)?'
    if opclass_name == "bit_hamming_ops":
        found = re.fullmatch(rf"\(\(?binary_quantize\({col}\)\)?::bit\((\d+)\)\)", key)
        return ("binary", None, int(found[1])) if found else None
    suffix = re.fullmatch(r"(vector|halfvec)_(cosine_ops|l2_ops|ip_ops)", opclass_name)
    if suffix is None:
        return None
    metric = _METRIC_OF[suffix[2]]
    if suffix[1] == "vector":
        return (None, metric, None) if re.fullmatch(col, key) else None
    found = re.fullmatch(rf"\({col}::halfvec\((\d+)\)\)", key)
    return ("half", metric, int(found[1])) if found else None


_DEFINITION = re.compile(r"USING (hnsw|ivfflat) \((.*) (\w+)\)(?: WITH \((.*)\))?(?: WHERE .*)?$")


def kind_from_definition(
    definition: str, column: str
) -> tuple[str, str | None, int | None, int | None] | None:
    """(method, quantization, dimensions, m) of a ``CREATE INDEX`` statement as pg_get_indexdef writes
    it, None when it is not an HNSW or IVFFlat index of a kind searches use on ``column``."""
    found = _DEFINITION.search(definition)
    if found is None:
        return None
    kind = _kind_of(found[2], found[3], column)
    if kind is None:
        return None
    m = re.search(r"\bm='?(\d+)", found[4] or "")
    return found[1], kind[0], kind[2], int(m[1]) if m else None


# The functions each quantized kind's key expression may call (pgvector's casts and binary_quantize).
_EXPRESSION_FUNCTIONS = {
    "half": {"vector_to_halfvec"},
    "binary": {"binary_quantize", "bit"},
}


def table_indexes(
    table: str, column: str = "embedding", using: str = "default", sizes: bool = True
) -> list[FoundIndex]:
    """The HNSW and IVFFlat indexes on ``column`` of ``table`` that searches can use, oldest first
    (valid or not: a concurrent build in progress, or one that failed, is listed as not valid).

    Read from the catalog without taking a lock on the table: pg_get_indexdef and pg_get_expr wait for
    one, so a search would hang behind an ACCESS EXCLUSIVE lock before its own statement (which runs
    under the search timeout) was even sent. The kind comes from the operator class, the key's type and
    its expression tree (the column it reads, the functions it calls). Sizes (``sizes``) are read with
    pg_relation_size, which waits for an index that a load holds dropped: searches read none."""
    connection = connections[using]
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT c.relname, am.amname, opc.opcname, format_type(ka.atttypid, ka.atttypmod), i.indisvalid,"
            " c.oid, i.indkey[0] = col.attnum, i.indkey[0] = 0, i.indexprs::text, col.attnum,"
            " CASE WHEN %s THEN pg_relation_size(c.oid) END"
            " FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid JOIN pg_am am ON am.oid = c.relam"
            " JOIN pg_opclass opc ON opc.oid = i.indclass[0]"
            " JOIN pg_attribute ka ON ka.attrelid = i.indexrelid AND ka.attnum = 1"
            " JOIN pg_attribute col ON col.attrelid = i.indrelid AND col.attname = %s"
            " WHERE i.indrelid = to_regclass(%s) AND am.amname IN ('hnsw', 'ivfflat') AND i.indnatts = 1"
            " ORDER BY c.oid",
            [sizes, column, connection.ops.quote_name(table)],
        )
        rows = cursor.fetchall()
        functions: dict[int, str] = {}
        wanted = {int(f) for row in rows if row[8] for f in re.findall(r":funcid (\d+)", row[8])}
        if wanted:
            cursor.execute("SELECT oid, proname FROM pg_proc WHERE oid = ANY(%s)", [list(wanted)])
            functions = {int(oid): name for oid, name in cursor.fetchall()}
    found = []
    for (
        name,
        method,
        opc,
        key_type,
        valid,
        oid,
        on_column,
        on_expression,
        expression,
        attnum,
        size,
    ) in rows:
        kind = _kind_of_catalog(opc, key_type, on_column, on_expression, expression or "", attnum, functions)
        if kind is not None:
            found.append(FoundIndex(name, method, *kind, valid, size or 0, oid))
    return found


def _kind_of_catalog(
    opc: str,
    key_type: str,
    on_column: bool,
    on_expression: bool,
    expression: str,
    attnum: int,
    functions: dict[int, str],
) -> tuple[str | None, str | None, int | None] | None:
    if opc == "bit_hamming_ops":
        quantization, metric = "binary", None
    else:
        suffix = re.fullmatch(r"(vector|halfvec)_(cosine_ops|l2_ops|ip_ops)", opc)
        if suffix is None:
            return None
        quantization, metric = (
            (None if suffix[1] == "vector" else "half"),
            _METRIC_OF[suffix[2]],
        )
    if quantization is None:
        return (None, metric, None) if on_column else None
    dims = re.fullmatch(rf"{'bit' if quantization == 'binary' else 'halfvec'}\((\d+)\)", key_type)
    if not on_expression or dims is None:
        return None
    reads = re.findall(r"\{VAR :varno \d+ :varattno (\d+)", expression)
    calls = {functions.get(int(f)) for f in re.findall(r":funcid (\d+)", expression)}
    allowed = _EXPRESSION_FUNCTIONS[quantization]
    if reads != [str(attnum)] or not calls or not calls <= allowed:
        return None
    if quantization == "binary" and "binary_quantize" not in calls:
        return None
    return quantization, metric, int(dims[1])


_found: dict[tuple[str, str], tuple[float, list[FoundIndex]]] = {}
_lock = Lock()


def serving(model: type[models.Model], metric: str, using: str = "default") -> FoundIndex | None:
    """The vector index a search of ``model`` by ``metric`` orders by: the valid one added last that
    serves it (so that, while ``vector_index create --replace`` builds a new index beside the old,
    searches move to the new one before the old is dropped; bulk loads and ``reindex`` rebuild indexes
    oldest first, which keeps that order). The table's indexes are read at most every
    ``INDEX_LOOKUP_SECONDS`` (VECTORSTORE setting) per process; None when none serves the metric
    (the search is then an exact scan)."""
    found = cached_serving(model, metric, using)
    if found is not None:
        return found[0]
    field = model._meta.get_field("embedding")
    entries = table_indexes(model._meta.db_table, field.column, using, sizes=False)
    with _lock:
        _found[(using, model._meta.db_table)] = (time.monotonic(), entries)
    return _serving_among(entries, model, metric)


def cached_serving(model: type[models.Model], metric: str, using: str = "default") -> tuple | None:
    """``(serving(model, metric, using),)`` when the process's list of the table's indexes is fresh,
    else None (no I/O)."""
    with _lock:
        cached = _found.get((using, model._meta.db_table))
    if cached is None or time.monotonic() - cached[0] >= conf.index_lookup_seconds():
        return None
    return (_serving_among(cached[1], model, metric),)


def _serving_among(entries: list[FoundIndex], model: type[models.Model], metric: str) -> FoundIndex | None:
    # Of the column's size, whatever the field says: a swap (reembed) may run ahead of the field.
    usable = [i for i in entries if i.serves(metric)]
    return usable[-1] if usable else None


def forget() -> None:
    """Read the tables' indexes afresh at the next search (after this process changed them)."""
    with _lock:
        _found.clear()
