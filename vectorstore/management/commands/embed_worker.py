"""Embed the rows whose text changed without their vector (by any path), and their passages, in batches."""

from __future__ import annotations

from vectorstore.embedding import EmbeddingError
from vectorstore.freshness import backlog, worker
from vectorstore.management.commands._base import ServiceCommand


class Command(ServiceCommand):
    help = (
        "Embed the document table's stale rows (marked by its freshness triggers whatever wrote them), and "
        "their passages, in batches; any number of workers on any number of machines share one backlog. "
        "Runs until stopped, waiting for new work between batches; --once drains the backlog and exits."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--once", action="store_true", help="drain the backlog, then exit")
        parser.add_argument("--batch-size", type=int, default=64, help="rows a batch (default 64)")
        parser.add_argument("--max-seconds", type=float, help="stop after this long")
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")

    def handle(self, *args, **o) -> None:
        if o["batch_size"] < 1:
            raise self.error(ValueError(f"--batch-size must be at least 1, not {o['batch_size']}"))
        if o["max_seconds"] is not None and o["max_seconds"] <= 0:
            raise self.error(ValueError(f"--max-seconds must be positive, not {o['max_seconds']}"))
        model = self.document_model(o["model"])
        try:
            report = worker.run(
                model, batch_size=o["batch_size"], once=o["once"], max_seconds=o["max_seconds"]
            )
        except EmbeddingError as exc:
            raise self.error(exc) from exc
        for error in report.errors:
            self.stderr.write(f"could not embed {error}")
        left = backlog(model)
        data = {**report.as_dict(), "table": model._meta.db_table, "backlog": left}
        line = (
            f"embedded {report.embedded} rows of {model._meta.db_table} ({report.passages} passages) in"
            f" {report.seconds:.1f} s ({data['rows_per_s']:,.1f} rows/s); {report.changed} changed meanwhile"
            f" (embedded again later), {report.gone} deleted, {report.failed} failed; backlog"
            f" {left['stale']} ({left['failed']} failed for good)"
        )
        self.emit(line, data, o["json"])
