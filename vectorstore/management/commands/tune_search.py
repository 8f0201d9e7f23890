"""Measure recall against exact search and store the smallest ef_search (or probes) that reaches a target."""

from __future__ import annotations

from vectorstore import tuning
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.validation import InputError


class Command(ServiceCommand):
    help = (
        "Measure recall@k of the document table's vector index against exact search, on stored vectors "
        "with noise added, and store the smallest hnsw.ef_search (or ivfflat.probes) that reaches the "
        "target; every search that sets neither then uses it."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--target-recall", type=float, default=0.95)
        parser.add_argument("--k", type=int, default=10, help="recall@k (default 10)")
        parser.add_argument("--queries", type=int, default=100, help="sample queries (default 100)")
        parser.add_argument("--margin", type=float, default=0.01, help="recall above the target to require")
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")

    def handle(self, *args, **o) -> None:
        model = self.document_model(o["model"])
        try:
            report = tuning.tune(
                model, target_recall=o["target_recall"], k=o["k"], queries=o["queries"], margin=o["margin"]
            )
        except InputError as exc:
            raise self.error(exc) from exc
        self.emit(report.summary(), report.as_dict(), o["json"])
