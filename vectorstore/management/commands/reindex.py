"""Rebuild a document table's vector indexes without stopping searches or writes (REINDEX CONCURRENTLY)."""

from __future__ import annotations

import time

import psycopg
from django.core.management.base import CommandError

from vectorstore import tuning
from vectorstore.indexing import indexes
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.progress import index_progress_bar


class Command(ServiceCommand):
    help = (
        "Rebuild the vector indexes (or --all indexes) of the document table with REINDEX CONCURRENTLY; "
        "a failed rebuild leaves no INVALID index behind."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")
        parser.add_argument(
            "--all", action="store_true", help="every secondary index, not only the vector ones"
        )
        parser.add_argument(
            "--maintenance-work-mem",
            help="e.g. 2GB (default: sized for the largest graph, within VECTORSTORE BUILD_MEMORY_LIMIT)",
        )
        parser.add_argument(
            "--no-tune", action="store_true", help="do not measure recall and store ef_search/probes again"
        )
        parser.add_argument("--timeout", help="give up after this long, e.g. '30min' (PostgreSQL interval)")

    def handle(self, *args, **o) -> None:
        model = self.document_model(o["model"])
        bar, progress = index_progress_bar("reindex")

        started = time.perf_counter()
        warnings: list[str] = []
        try:
            with bar:
                names = indexes.reindex_concurrently(
                    model._meta.db_table,
                    vector_only=not o["all"],
                    maintenance_work_mem=o["maintenance_work_mem"],
                    timeout=o["timeout"],
                    progress=progress,
                    model=model,
                    warnings=warnings,
                )
        except psycopg.Error as exc:
            raise CommandError(
                f"reindex of {model._meta.db_table} failed: {exc.diag.message_primary or exc}; "
                "the old indexes are intact and no INVALID index was left"
            ) from exc
        for warning in warnings:
            self.stderr.write(f"warning: {warning}")
        # A rebuilt graph is a new graph: the ef_search that reached the target before may not now.
        tuned = tuning.retune(model) if names and not o["no_tune"] else None
        seconds = time.perf_counter() - started
        table = model._meta.db_table
        line = f"rebuilt {', '.join(names) or 'no index'} on {table} concurrently in {seconds:.1f} s"
        if tuned:
            line += f"; search tuned: {tuned.setting} {tuned.value}, {tuned.measured()}"
        self.emit(
            line,
            {
                "table": model._meta.db_table,
                "indexes": names,
                "seconds": round(seconds, 3),
                "tuned": tuned.as_dict() if tuned else None,
                "warnings": warnings,
            },
            o["json"],
        )
