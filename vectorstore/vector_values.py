"""A vector field's value however it arrived (a list, a numpy array, a pgvector object, a form's
text), made what Django's validation takes, and checked: its size, NaN and infinity."""

from __future__ import annotations

from typing import Any

import numpy as np
from django.core.exceptions import ValidationError
from django.db import models
from pgvector import HalfVector, Vector
from pgvector.django import BitField, HalfVectorField, VectorField


def python_vector(field: models.Field, value: Any) -> Any:
    """A vector field's value as its ``to_python`` takes it: pgvector's fields take a list or text, while
    save(), the loaders and users leave numpy arrays and pgvector objects on instances (pgvector 0.5's
    ``to_python`` calls ``.split`` on an array, so ``full_clean()`` after such a save raised)."""
    if isinstance(field, VectorField | HalfVectorField):
        if isinstance(value, Vector | HalfVector):
            return value.to_list()
        if isinstance(value, np.ndarray):
            return value.astype(np.float64).tolist()
    elif isinstance(field, BitField) and isinstance(value, np.ndarray):
        return "".join("1" if bit else "0" for bit in value.ravel())
    return value


class VectorValues(models.Model):
    """Validation that takes every value a vector field holds (a list, a numpy array, a pgvector object,
    the database's) and says what is wrong with one by field: its size, or a NaN or infinity."""

    class Meta:
        abstract = True

    def clean_fields(self, exclude: Any = None) -> None:
        errors: dict[str, list[str]] = {}
        for field in self._meta.concrete_fields:
            if not isinstance(field, VectorField | HalfVectorField | BitField) or field.name in (
                exclude or ()
            ):
                continue
            value = python_vector(field, getattr(self, field.attname))
            if isinstance(value, str) and not isinstance(field, BitField):
                try:  # a form's text: pgvector's parser raises ValueError, which would be a 500
                    value = field.to_python(value)
                except (ValueError, TypeError):
                    errors[field.name] = ["not a vector: expected numbers as [1.0, 2.0, ...]"]
                    continue
            setattr(self, field.attname, value)
            if not isinstance(value, list):
                continue  # None or bits: the field's own checks read them
            dims = getattr(field, "dimensions", None)
            if dims is not None and len(value) != dims:
                errors[field.name] = [f"expected {dims} dimensions, got {len(value)}"]
            elif not np.isfinite(np.asarray(value, dtype=np.float64)).all():
                errors[field.name] = ["holds NaN or infinity, which PostgreSQL cannot store"]
        try:  # a field already refused is not parsed again (pgvector's parser raises ValueError)
            super().clean_fields(exclude={*(exclude or ()), *errors})
        except ValidationError as exc:
            for name, messages in exc.message_dict.items():
                errors.setdefault(name, []).extend(m for m in messages if m not in errors.get(name, []))
        if errors:
            raise ValidationError(errors)
