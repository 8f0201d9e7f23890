"""Migration operations for vector indexes that Django's own AddIndex cannot size for you."""

from __future__ import annotations

import math
from typing import Any

from django.db.migrations.operations.base import Operation
from pgvector.django import IvfflatIndex


def ivfflat_lists(rows: int) -> int:
    """pgvector's advice for ``lists``: rows / 1000 up to 1M rows, sqrt(rows) above."""
    if rows <= 1_000_000:
        return max(1, rows // 1000)
    return int(math.sqrt(rows))


class AddIvfflatIndex(Operation):
    """Create an IVFFlat index in a migration, with ``lists`` sized from the rows present when it runs.

    IVFFlat learns its lists from the data, so it belongs after the data is
    loaded; pass ``lists`` to fix the number instead. The index is created in
    the database only, like ``RunSQL``: it is not part of the model's state, so
    ``makemigrations`` neither needs it in ``Meta.indexes`` nor tries to drop it.

        operations = [AddIvfflatIndex("document", name="doc_emb_ivfflat", opclass="vector_l2_ops")]
    """

    reversible = True

    def __init__(
        self,
        model_name: str,
        name: str,
        field: str = "embedding",
        opclass: str = "vector_cosine_ops",
        lists: int | None = None,
    ) -> None:
        self.model_name = model_name
        self.name = name
        self.field = field
        self.opclass = opclass
        self.lists = lists

    def deconstruct(self) -> tuple[str, list, dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_name": self.model_name, "name": self.name}
        if self.field != "embedding":
            kwargs["field"] = self.field
        if self.opclass != "vector_cosine_ops":
            kwargs["opclass"] = self.opclass
        if self.lists is not None:
            kwargs["lists"] = self.lists
        return self.__class__.__qualname__, [], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # database-only, see the class docstring

    def index(self, lists: int | None) -> IvfflatIndex:
        return IvfflatIndex(name=self.name, fields=[self.field], lists=lists, opclasses=[self.opclass])

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        lists = self.lists
        if lists is None:
            lists = ivfflat_lists(model._default_manager.using(schema_editor.connection.alias).count())
        schema_editor.add_index(model, self.index(lists))

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            schema_editor.remove_index(model, self.index(self.lists))

    def describe(self) -> str:
        lists = self.lists if self.lists is not None else "sized from the rows"
        return f"Create IVFFlat index {self.name} on {self.model_name}.{self.field} (lists: {lists})"

    @property
    def migration_name_fragment(self) -> str:
        return self.name.lower()
