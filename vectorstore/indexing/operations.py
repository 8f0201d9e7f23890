"""Migration operations for vector indexes that Django's own AddIndex cannot size for you."""

from __future__ import annotations

import math
from typing import Any

from django.db import DatabaseError, NotSupportedError
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

    On a table that already has rows and traffic, pass ``concurrently=True`` (in a migration with
    ``atomic = False``): CREATE INDEX CONCURRENTLY lets searches and writes go on during the build,
    and a build that fails drops its INVALID leftover, which every write would otherwise maintain.
    (For an HNSW index, Django's own ``AddIndexConcurrently`` with pgvector's ``HnswIndex`` does this.)
    """

    reversible = True

    def __init__(
        self,
        model_name: str,
        name: str,
        field: str = "embedding",
        opclass: str = "vector_cosine_ops",
        lists: int | None = None,
        concurrently: bool = False,
    ) -> None:
        self.model_name = model_name
        self.name = name
        self.field = field
        self.opclass = opclass
        self.lists = lists
        self.concurrently = concurrently

    def deconstruct(self) -> tuple[str, list, dict[str, Any]]:
        kwargs: dict[str, Any] = {"model_name": self.model_name, "name": self.name}
        if self.field != "embedding":
            kwargs["field"] = self.field
        if self.opclass != "vector_cosine_ops":
            kwargs["opclass"] = self.opclass
        if self.lists is not None:
            kwargs["lists"] = self.lists
        if self.concurrently:
            kwargs["concurrently"] = True
        return self.__class__.__qualname__, [], kwargs

    def state_forwards(self, app_label: str, state: Any) -> None:
        pass  # database-only, see the class docstring

    def index(self, lists: int | None) -> IvfflatIndex:
        return IvfflatIndex(name=self.name, fields=[self.field], lists=lists, opclasses=[self.opclass])

    def database_forwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = to_state.apps.get_model(app_label, self.model_name)
        if not self.allow_migrate_model(schema_editor.connection.alias, model):
            return
        self._outside_transaction(schema_editor)
        lists = self.lists
        if lists is None:
            lists = ivfflat_lists(model._default_manager.using(schema_editor.connection.alias).count())
        if not self.concurrently:
            schema_editor.add_index(model, self.index(lists))
            return
        try:
            schema_editor.add_index(model, self.index(lists), concurrently=True)
        except DatabaseError:
            with schema_editor.connection.cursor() as cursor:
                cursor.execute(
                    "SELECT 1 FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid"
                    " WHERE c.relname = %s AND NOT i.indisvalid",
                    [self.name],
                )
                if cursor.fetchone():  # this build's own leftover, never an index that was there before
                    # Without the timeout that may have cut the build short, restored afterwards.
                    cursor.execute("SELECT current_setting('statement_timeout')")
                    (timeout,) = cursor.fetchone()
                    cursor.execute("SELECT set_config('statement_timeout', '0', false)")
                    cursor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {schema_editor.quote_name(self.name)}")
                    cursor.execute("SELECT set_config('statement_timeout', %s, false)", [timeout])
            raise

    def database_backwards(self, app_label: str, schema_editor: Any, from_state: Any, to_state: Any) -> None:
        model = from_state.apps.get_model(app_label, self.model_name)
        if self.allow_migrate_model(schema_editor.connection.alias, model):
            self._outside_transaction(schema_editor)
            schema_editor.remove_index(model, self.index(self.lists), concurrently=self.concurrently)

    def _outside_transaction(self, schema_editor: Any) -> None:
        if self.concurrently and schema_editor.connection.in_atomic_block:
            raise NotSupportedError(
                f"AddIvfflatIndex({self.name!r}, concurrently=True) cannot run inside a transaction:"
                " set atomic = False on the migration"
            )

    def describe(self) -> str:
        lists = self.lists if self.lists is not None else "sized from the rows"
        how = " concurrently" if self.concurrently else ""
        return f"Create IVFFlat index {self.name}{how} on {self.model_name}.{self.field} (lists: {lists})"

    @property
    def migration_name_fragment(self) -> str:
        return self.name.lower()
