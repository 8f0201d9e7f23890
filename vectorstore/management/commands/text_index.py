"""Create, show or drop the BM25 index (pg_textsearch) that text and hybrid search rank with."""

from __future__ import annotations

import time

import psycopg
from django.core.management.base import CommandError
from django.db import DatabaseError

from vectorstore.indexing import bm25
from vectorstore.management.commands._base import ServiceCommand


class Command(ServiceCommand):
    help = (
        "BM25 ranking for text and hybrid search: 'create' makes the pg_textsearch extension (where the "
        "server has it) and a bm25 index on the document table's text, concurrently; 'status' says "
        "which ranking searches use; 'drop' goes back to PostgreSQL's full text ranking."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("action", choices=["create", "status", "drop"])
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")

    def handle(self, *args, **o) -> None:
        model = self.document_model(o["model"])
        table = model._meta.db_table
        started = time.perf_counter()
        try:
            if o["action"] == "create":
                name = bm25.create_index(model)
                summary = f"bm25 index {name} on {table} ready in {time.perf_counter() - started:.1f} s"
            elif o["action"] == "drop":
                dropped = bm25.drop_index(model)
                name = None
                summary = f"bm25 index on {table} {'dropped' if dropped else 'was absent'}"
            else:
                bm25.forget()
                name = bm25.index_for(model)
                has = bm25.server_has_extension()
                summary = (
                    f"{table}: text ranked by BM25 through {name}"
                    if name
                    else f"{table}: text ranked by ts_rank_cd (no bm25 index; the server "
                    f"{'has' if has else 'lacks'} {bm25.EXTENSION})"
                )
        except bm25.BM25Unavailable as exc:
            raise CommandError(str(exc)) from exc
        except (DatabaseError, psycopg.Error) as exc:
            raise CommandError(f"text_index {o['action']} on {table} failed: {exc}") from exc
        self.emit(summary, {"table": table, "action": o["action"], "index": name}, o["json"])
