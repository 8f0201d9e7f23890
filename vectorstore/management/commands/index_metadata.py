"""Create the indexes of the declared metadata keys (VECTORSTORE METADATA_KEYS) on a live table."""

from __future__ import annotations

import time

import psycopg
from django.core.management.base import CommandError
from django.db import DatabaseError

from vectorstore.indexing import metadata_keys
from vectorstore.management.commands._base import ServiceCommand


class Command(ServiceCommand):
    help = (
        "Create a B-tree expression index for each metadata key declared in VECTORSTORE['METADATA_KEYS'] "
        "that the document table lacks, with CREATE INDEX CONCURRENTLY (searches and writes go on)."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")

    def handle(self, *args, **o) -> None:
        model = self.document_model(o["model"])
        if not metadata_keys.declared():
            raise CommandError("no metadata keys are declared: set VECTORSTORE['METADATA_KEYS'] first")
        started = time.perf_counter()
        try:
            created = metadata_keys.ensure_indexes(model, concurrently=True)
        except (DatabaseError, psycopg.Error) as exc:
            raise CommandError(f"index_metadata on {model._meta.db_table} failed: {exc}") from exc
        seconds = time.perf_counter() - started
        self.emit(
            f"{len(created)} metadata index(es) created on {model._meta.db_table} in {seconds:.1f} s"
            + (f": {', '.join(created)}" if created else " (all declared keys were indexed already)"),
            {"table": model._meta.db_table, "created": created, "seconds": round(seconds, 3)},
            o["json"],
        )
