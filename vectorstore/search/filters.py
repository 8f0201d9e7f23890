"""The filter language: a JSON document of fields and operators (langchain-postgres's set, and
LlamaIndex's ``contains``), turned into a Django ``Q`` of lookups and parameters, never into SQL text.

    build_filter({"category": "Whig", "year": {"$between": [1800, 1850]},
                  "$not": {"tags": {"$contains": "war"}}})

Keys ``category``, ``external_id``, ``created_at`` and ``id`` filter those columns; any other key
filters that key of ``metadata``. The README's Filters section states the semantics exactly.
"""

from __future__ import annotations

import math
import operator
from functools import reduce
from typing import Any

from django.db import models
from django.db.models import F, Func, Lookup, Q, Value
from django.db.models.fields.json import KeyTransform
from django.db.models.lookups import Exact, GreaterThan, GreaterThanOrEqual, LessThan, LessThanOrEqual
from django.utils.dateparse import parse_datetime

from vectorstore.indexing import metadata_keys
from vectorstore.limits import MAX_FILTER_DEPTH, MAX_FILTER_LIST, MAX_FILTER_TERMS
from vectorstore.validation import storable_text

COLUMN_FILTERS = {
    "category": "category",
    "external_id": "external_id",
    "created_at": "created_at",
    "id": "pk",
}
OPERATORS = (
    "$eq",
    "$ne",
    "$lt",
    "$lte",
    "$gt",
    "$gte",
    "$between",
    "$in",
    "$nin",
    "$exists",
    "$like",
    "$ilike",
    "$contains",
)
LOGICAL = ("$and", "$or", "$not")
TEXT_COLUMNS = ("category", "external_id")


class SearchError(ValueError):
    """A bad search request; ``field`` names the input at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def storable(value: str, where: str) -> str:
    """The string, if PostgreSQL can store it; else a SearchError naming ``where``."""
    try:
        return storable_text(value)
    except ValueError as exc:
        raise SearchError(where, f"strings {exc}") from None


def _scalar(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return storable(value, where)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SearchError(where, "numbers must be finite")
        return value
    raise SearchError(where, f"expected a string, number, boolean or null, not {type(value).__name__}")


def _list(value: Any, where: str) -> list:
    if not isinstance(value, list | tuple):
        raise SearchError(where, "expected a list")
    if len(value) > MAX_FILTER_LIST:
        raise SearchError(where, f"at most {MAX_FILTER_LIST} values")
    return [_scalar(v, where) for v in value]


def _column_value(column: str, value: Any, where: str) -> Any:
    value = _scalar(value, where)
    if value is None:
        return value
    if column == "created_at":
        parsed = parse_datetime(value) if isinstance(value, str) else None
        if parsed is None:
            raise SearchError(where, "expected an ISO 8601 date and time, such as 2024-01-31T00:00:00Z")
        return parsed
    if column == "pk" and not (isinstance(value, int) and not isinstance(value, bool)):
        raise SearchError(where, "expected an integer")
    if column in ("category", "external_id") and not isinstance(value, str):
        raise SearchError(where, "expected a string")
    return value


_LOOKUPS = {
    "$eq": "exact",
    "$ne": "exact",
    "$lt": "lt",
    "$lte": "lte",
    "$gt": "gt",
    "$gte": "gte",
    "$like": "like",
    "$ilike": "ilike",
    "$contains": "contains",
}
_NOTHING = Q(pk__in=[])


class Like(Lookup):
    """``lhs LIKE pattern``, the pattern a parameter: ``%`` and ``_`` are wildcards, ``\\`` escapes.

    Written here because Django's own ``contains``/``startswith`` escape the wildcards (they take a
    literal, not a pattern) and a lookup registered on CharField would change every host model's fields.
    """

    lookup_name = "vectorstore_like"
    operator = "LIKE"
    prepare_rhs = False

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        rhs, rhs_params = self.process_rhs(compiler, connection)
        return f"{lhs} {self.operator} {rhs}", (*lhs_params, *rhs_params)


class ILike(Like):
    lookup_name = "vectorstore_ilike"
    operator = "ILIKE"


_PATTERNS = {"like": Like, "ilike": ILike}


def _pattern(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise SearchError(where, "expected a string pattern (% any characters, _ one, \\ escapes)")
    trailing = len(value) - len(value.rstrip("\\"))
    if trailing % 2:  # PostgreSQL refuses a pattern that ends in a lone escape character
        raise SearchError(where, "a pattern cannot end with a lone \\ (write \\\\ for a backslash)")
    return storable(value, where)


def _conditions(spec: Any, where: str, value_of, make, exists) -> Q:
    """One field's filter: a bare value means $eq; a dict holds operators.

    ``value_of(value, where)`` checks a value, ``make(lookup, value)`` builds a condition,
    ``exists()`` the condition that the field is present. A document without the field matches
    no comparison ($ne and $nin included), only ``$exists: false``.
    """
    if not isinstance(spec, dict):
        return make("exact", value_of(spec, where))
    if not spec:
        raise SearchError(where, f"expected a value or at least one operator of {', '.join(OPERATORS)}")
    q = Q()
    for op, value in spec.items():
        at = f"{where}.{op}"
        if op not in OPERATORS:
            raise SearchError(at, f"unknown operator; expected one of {', '.join(OPERATORS)}")
        if op == "$exists":
            if not isinstance(value, bool):
                raise SearchError(at, "expected true or false")
            cond = exists()
            q &= cond if value else ~cond
        elif op == "$between":
            bounds = _list(value, at)
            if len(bounds) != 2:
                raise SearchError(at, "expected [low, high]")
            low, high = (value_of(v, at) for v in bounds)
            if low is None or high is None or (type(low) is not type(high) and not _both_numbers(low, high)):
                raise SearchError(at, "expected two numbers, two strings or two booleans")
            q &= make("gte", low) & make("lte", high)
        elif op in ("$like", "$ilike"):
            q &= make(_LOOKUPS[op], _pattern(value, at))
        elif op == "$contains":
            q &= make("contains", _scalar(value, at))
        elif op in ("$in", "$nin"):
            values = [value_of(v, at) for v in _list(value, at)]
            if not values:  # nothing to be in: $in matches nothing, $nin every document with the field
                q &= _NOTHING if op == "$in" else exists()
                continue
            cond = make("in", values)
            q &= (exists() & ~cond) if op == "$nin" else cond
        else:
            value = value_of(value, at)
            if value is None and op not in ("$eq", "$ne"):
                raise SearchError(at, "null can only be compared with $eq, $ne, $in and $nin")
            cond = make(_LOOKUPS[op], value)
            q &= (exists() & ~cond) if op == "$ne" else cond
    return q


def _both_numbers(a: Any, b: Any) -> bool:
    return all(isinstance(v, int | float) and not isinstance(v, bool) for v in (a, b))


def _column_condition(column: str, spec: Any, where: str) -> Q:
    def make(lookup: str, value: Any) -> Q:
        if lookup in _PATTERNS:
            if column not in TEXT_COLUMNS:
                raise SearchError(where, "patterns match text: category, external_id or a metadata key")
            # IS NOT NULL first: the condition is true or false, never NULL, so $not is its complement.
            return Q(**{f"{column}__isnull": False}) & Q(_PATTERNS[lookup](F(column), Value(value)))
        if lookup == "contains":
            raise SearchError(where, "$contains tests a list, which only a metadata key holds")
        if lookup == "in" and None in value:
            rest = [v for v in value if v is not None]
            return Q(**{f"{column}__isnull": True}) | (Q(**{f"{column}__in": rest}) if rest else _NOTHING)
        return Q(**{f"{column}__{lookup}": value})

    return _conditions(
        spec,
        where,
        lambda value, at: _column_value(column, value, at),
        make,
        lambda: Q(**{f"{column}__isnull": False}),
    )


_RANGES = {"lt": LessThan, "lte": LessThanOrEqual, "gt": GreaterThan, "gte": GreaterThanOrEqual}
_JSON_TYPES = {bool: "boolean", int: "number", float: "number", str: "string"}


class MetadataKey(KeyTransform):
    """``metadata -> 'key'`` with the key always sent as text.

    Django's KeyTransform sends a key that int() accepts ("0", "-1", " 7", "1_0") as an
    integer, which PostgreSQL reads as an array index: {"0": 5} would not match key "0".
    """

    operator = "->"

    def as_postgresql(self, compiler, connection):
        lhs, params = compiler.compile(self.lhs)
        return f"({lhs} {self.operator} %s)", (*params, self.key_name)


class MetadataKeyText(MetadataKey):
    """``metadata ->> 'key'``: the value as text, the key sent as text (see MetadataKey)."""

    operator = "->>"
    output_field = models.TextField()


def _metadata_condition(key: str, spec: Any, where: str) -> Q:
    # The key reaches SQL only as a parameter of the -> operator, never as a lookup path:
    # a key such as "a__b" or "x'); DROP" is just a (strange) JSON key.
    transform = MetadataKey(key, "metadata")

    def make(lookup: str, value: Any) -> Q:
        # Equality is containment, metadata @> '{"key": value}', which the GIN index on metadata serves
        # (metadata -> 'key' = value it cannot). For the scalars a filter holds the two agree exactly:
        # numbers compare as numbers (1 = 1.0), JSON null matches a stored null, and a scalar neither
        # equals nor is contained in a stored list or object under the key.
        if lookup == "in":
            return reduce(operator.or_, (Q(metadata__contains={key: v}) for v in value))
        if lookup == "exact":
            return Q(metadata__contains={key: value})
        if lookup == "contains":  # a JSON array under the key holds the value: still containment
            return Q(metadata__contains={key: [value]})
        # Each condition below starts with `metadata ? key` (GIN-served) and the value's type, so it is
        # true or false and never NULL: a missing key would otherwise make NOT (...) NULL as well, and
        # $not would not be the complement it is documented to be.
        present = Q(metadata__has_key=key)
        if lookup in _PATTERNS:
            text = MetadataKeyText(key, "metadata")
            return present & Q(_is(transform, "string")) & Q(_PATTERNS[lookup](text, Value(value)))
        declared_type = metadata_keys.declared().get(key)
        if declared_type is not None:
            typed = metadata_keys.comparable(declared_type, value)
            if typed is not None:  # a declared key's B-tree index serves the range
                range_ = _RANGES[lookup](metadata_keys.expression(key, declared_type), Value(typed))
                return present & Q(_is(transform, declared_type)) & Q(range_)
        # Values go in as JSON, as Django's own metadata__key__lt=value would send them.
        cond = Q(transform.get_lookup(lookup)(transform, Value(value, output_field=models.JSONField())))
        # jsonb orders every string below every number (and null below both): a range compares like
        # with like, so {"$lt": 5} never matches "abc".
        return present & Q(_is(transform, _JSON_TYPES[type(value)])) & cond

    return _conditions(spec, where, _scalar, make, lambda: Q(metadata__has_key=key))


def _is(transform: KeyTransform, json_type: str) -> Exact:
    """``jsonb_typeof(metadata -> 'key') = json_type``."""
    typeof = Func(transform, function="jsonb_typeof", output_field=models.TextField())
    return Exact(typeof, json_type)


def filter_terms(spec: Any, limit: int = MAX_FILTER_TERMS) -> int:
    """The filter's fields, operators and values across the whole tree; counting stops once past
    ``limit`` (a huge filter is refused without walking all of it)."""
    count, stack = 0, [spec]
    while stack and count <= limit:
        item = stack.pop()
        if isinstance(item, dict):
            count += len(item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            count += len(item)
            stack.extend(item)
    return count


def build_filter(spec: Any, where: str = "filters", depth: int = 0) -> Q:
    """Translate a filter document (the langchain-postgres operator set) into a Q, never into SQL text.

    Keys ``category``, ``external_id``, ``created_at`` and ``id`` filter those columns;
    any other key filters that key of ``metadata``. ``$and`` / ``$or`` take lists of filters, ``$not``
    a filter (or a list of filters, none of which may match).
    """
    if spec is None:
        return Q()
    if not isinstance(spec, dict):
        raise SearchError(where, "expected an object")
    if depth > MAX_FILTER_DEPTH:
        raise SearchError(where, "nested too deeply")
    if depth == 0 and filter_terms(spec) > MAX_FILTER_TERMS:
        raise SearchError(
            where,
            f"too large: at most {MAX_FILTER_TERMS} fields, operators and values in all (MAX_FILTER_TERMS)",
        )
    q = Q()
    for key, value in spec.items():
        at = f"{where}.{key}"
        if not isinstance(key, str) or not key or len(key) > 255:
            raise SearchError(at, "keys are non-empty strings of at most 255 characters")
        storable(key, at)
        if key == "$not":
            # The complement: every document the filter does not match, those without its keys
            # included. A list negates each: {"$not": [a, b]} is neither a nor b.
            parts = value if isinstance(value, list) else [value]
            if not parts:
                raise SearchError(at, "expected a filter or a non-empty list of filters")
            for i, part in enumerate(parts):
                part_at = f"{at}[{i}]" if isinstance(value, list) else at
                if part == {}:  # an empty filter matches every document: its complement is a mistake
                    raise SearchError(part_at, "expected a non-empty filter")
                q &= ~build_filter(part, part_at, depth + 1)
        elif key in ("$and", "$or"):
            parts = value if isinstance(value, list) else None
            if not parts:
                raise SearchError(at, "expected a non-empty list of filters")
            subs = [build_filter(p, f"{at}[{i}]", depth + 1) for i, p in enumerate(parts)]
            combined = subs[0]
            for sub in subs[1:]:
                combined = combined & sub if key == "$and" else combined | sub
            q &= combined
        elif key.startswith("$"):
            raise SearchError(at, "unknown operator at this level; expected $and, $or, $not or a field name")
        elif key in COLUMN_FILTERS:
            q &= _column_condition(COLUMN_FILTERS[key], value, at)
        else:
            q &= _metadata_condition(key, value, at)
    return q
