"""Change capture in the database: triggers on a document table that mark a row stale (a row of
``vectorstore_stalevector``) whenever its text changes and its vector does not change with it, or it
is written without a vector, whatever wrote it (``save()``, ``update()``, ``bulk_update()``, raw SQL, a
merge), and unmark it when a new vector arrives with the text it was made from.

``FreshVectors`` is declared in ``AbstractDocument.Meta.constraints``, so ``makemigrations`` writes it
for every document model, the host site's own included (``AddConstraint``, or ``CreateModel``'s
options): Django has no triggers of its own, and a constraint is the object its migrations create and
drop with the table. Its SQL is a function and two triggers per table:

- ``AFTER INSERT ... WHEN (written without a vector)``: a load that writes vectors (COPY, INSERT) never
  calls the function, and an AFTER trigger keeps COPY's multi-row inserts (a BEFORE row trigger turns
  them off), so a bulk load costs nothing measurable;
- ``AFTER UPDATE ... WHEN (text or embedding changed)``: stale where the vector is NULL or did not
  change with the text; fresh (the mark removed) where a vector arrived, so the worker's own write,
  ``save()`` that embeds and a load's merge clear what they fix.

The triggers name no column: a trigger that does (``UPDATE OF text``, ``WHEN (NEW.embedding ...)``)
makes PostgreSQL refuse ``ALTER COLUMN ... TYPE`` on it, so a migration that changes the vector's
dimension or the text's ``max_length`` would fail. Their conditions are small SQL functions of the whole
row instead, which the planner inlines into the same column tests (no cost per row) and which read the
columns by name whenever a statement starts.

The function also sends ``NOTIFY vectorstore_stale`` (delivered at commit), on which the embedding
worker waits instead of polling.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models.constraints import BaseConstraint

QUEUE = "vectorstore_stalevector"
CHANNEL = "vectorstore_stale"


def _names(model: type[models.Model], name: str, quote: Any) -> dict[str, str]:
    meta = model._meta
    return {
        "table": quote(meta.db_table),
        "table_literal": meta.db_table.replace("'", "''"),
        "function": quote(f"{name}_mark"[:63]),
        "insert": quote(f"{name}_ins"[:63]),
        "update": quote(f"{name}_upd"[:63]),
        "unembedded": quote(f"{name}_unembedded"[:63]),
        "changed": quote(f"{name}_changed"[:63]),
        "pk": quote(meta.pk.column),
        "text": quote(meta.get_field("text").column),
        "vector": quote(meta.get_field("embedding").column),
        "queue": quote(QUEUE),
        "queue_literal": quote(QUEUE).replace("'", "''"),
        "channel": CHANNEL,
    }


CREATE = """
CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$
BEGIN
    IF NEW.{vector} IS NULL
       OR (TG_OP = 'UPDATE' AND NEW.{text} IS DISTINCT FROM OLD.{text}
           AND NEW.{vector} IS NOT DISTINCT FROM OLD.{vector}) THEN
        INSERT INTO {queue} (db_table, row_id, marked_at, attempts, next_try, error)
        VALUES ('{table_literal}', NEW.{pk}, clock_timestamp(), 0, clock_timestamp(), '')
        ON CONFLICT (db_table, row_id) DO UPDATE
            SET marked_at = EXCLUDED.marked_at, attempts = 0, next_try = EXCLUDED.next_try, error = '';
        PERFORM pg_notify('{channel}', '{table_literal}');
    ELSIF TG_OP = 'UPDATE' THEN
        DELETE FROM {queue} WHERE db_table = '{table_literal}' AND row_id = NEW.{pk};
    END IF;
    RETURN NULL;
END
$body$;
CREATE OR REPLACE FUNCTION {unembedded}(r {table}) RETURNS boolean LANGUAGE sql IMMUTABLE
    AS $body$ SELECT r.{vector} IS NULL $body$;
CREATE OR REPLACE FUNCTION {changed}(o {table}, n {table}) RETURNS boolean LANGUAGE sql IMMUTABLE
    AS $body$ SELECT n.{text} IS DISTINCT FROM o.{text} OR n.{vector} IS DISTINCT FROM o.{vector} $body$;
CREATE TRIGGER {insert} AFTER INSERT ON {table}
    FOR EACH ROW WHEN ({unembedded}(NEW)) EXECUTE FUNCTION {function}();
CREATE TRIGGER {update} AFTER UPDATE ON {table}
    FOR EACH ROW WHEN ({changed}(OLD, NEW)) EXECUTE FUNCTION {function}();
"""

DROP = """
DROP TRIGGER IF EXISTS {insert} ON {table};
DROP TRIGGER IF EXISTS {update} ON {table};
DROP FUNCTION IF EXISTS {function}();
DROP FUNCTION IF EXISTS {unembedded}({table});
DROP FUNCTION IF EXISTS {changed}({table}, {table});
DO $body$ BEGIN
    -- A host app's migrations may be unapplied after vectorstore's, which dropped the queue already.
    IF to_regclass('{queue_literal}') IS NOT NULL THEN
        DELETE FROM {queue} WHERE db_table = '{table_literal}';
    END IF;
END $body$;
"""


class FreshVectors(BaseConstraint):
    """The freshness triggers of a document table, as a constraint its migrations create and drop (see
    the module's docstring). ``validate`` has nothing to check in Python: the database keeps it."""

    def constraint_sql(self, model: type[models.Model], schema_editor: Any) -> None:
        # Not a clause of CREATE TABLE: created once the table exists, with the migration's other
        # deferred statements.
        schema_editor.deferred_sql.append(self.create_sql(model, schema_editor))
        return None

    def create_sql(self, model: type[models.Model], schema_editor: Any) -> str:
        return CREATE.format(**_names(model, self.name, schema_editor.quote_name))

    def remove_sql(self, model: type[models.Model], schema_editor: Any) -> str:
        return DROP.format(**_names(model, self.name, schema_editor.quote_name))

    def validate(
        self, model: type[models.Model], instance: Any, exclude: Any = None, using: Any = None
    ) -> None:
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FreshVectors) and other.name == self.name

    def __hash__(self) -> int:
        return hash((type(self), self.name))
