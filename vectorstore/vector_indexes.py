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
"""

from __future__ import annotations

from typing import Any

from django.contrib.postgres.indexes import OpClass, PostgresIndex
from django.db.models import F, Func
from django.db.models.functions import Cast
from pgvector.django import BitField, HalfVectorField

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
            index_expression(field, quantization, dimensions), name=opclass(quantization, metric)
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
        params = {"m": self.m, "ef_construction": self.ef_construction, "lists": self.lists}
        return [f"{key} = {int(value)}" for key, value in params.items() if value is not None]
