"""Bad input, caught before it reaches the database: what PostgreSQL can store (so bad input is a
4xx, not a 500), and the error that loaders raise for input they cannot load."""

from __future__ import annotations

import math
from typing import Any

MAX_METADATA_DEPTH = 32


class InputError(ValueError):
    """Input that cannot be loaded; the message names the file, the column and the first bad row.

    Messages speak of parameters (``on_conflict='skip'``); commands translate them to their flags.
    """


def storable_text(value: str) -> str:
    """PostgreSQL's text holds neither NUL nor half a surrogate pair (which JSON can escape)."""
    if "\x00" in value:
        raise ValueError("cannot hold NUL characters")
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise ValueError("must be valid Unicode (a lone surrogate is not)") from None
    return value


def storable_json(value: Any, depth: int = 0) -> Any:
    """What jsonb can store: text as above, finite numbers, nesting at most MAX_METADATA_DEPTH."""
    if depth > MAX_METADATA_DEPTH:
        raise ValueError(f"nested more than {MAX_METADATA_DEPTH} levels")
    if isinstance(value, str):
        storable_text(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (JSON has no NaN or Infinity)")
    elif isinstance(value, dict):
        for key, item in value.items():
            storable_text(key)
            storable_json(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            storable_json(item, depth + 1)
    return value
