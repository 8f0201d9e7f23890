"""Measure recall against exact search and store the smallest ef_search (or probes) that reaches a target."""

from __future__ import annotations

from vectorstore import tuning
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.tuning import queries as tuning_queries
from vectorstore.tuning import status as tuning_status
from vectorstore.validation import InputError


class Command(ServiceCommand):
    help = (
        "Measure recall@k of the document table's vector index against exact search, on queries like the "
        "ones users send (the query log once it holds enough, else spans of the documents' text embedded "
        "with the table's model), and store the smallest hnsw.ef_search "
        "(ivfflat.probes, a binary index's re-rank) whose estimate reaches the target; every search that "
        "sets neither then uses it. --if-stale (for cron) tunes only when the table or its queries changed."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--target-recall", type=float, default=tuning.DEFAULT_TARGET_RECALL)
        parser.add_argument("--k", type=int, default=10, help="recall@k (default 10)")
        parser.add_argument(
            "--queries", type=int, default=tuning.DEFAULT_QUERIES, help="queries to measure with"
        )
        parser.add_argument(
            "--query-model",
            default="auto",
            choices=["auto", *tuning_queries.QUERY_MODELS],
            help="auto: log, else pseudo",
        )
        parser.add_argument(
            "--margin",
            type=float,
            default=tuning.BELOW_DEFAULT_MARGIN,
            help="how far above the target the estimate's lower bound must be for a setting below "
            "pgvector's default",
        )
        parser.add_argument(
            "--if-stale", action="store_true", help="only when the stored tuning is out of date"
        )
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")
        parser.add_argument(
            "--passages", action="store_true", help="the model's passage table (a model that keeps passages)"
        )

    def handle(self, *args, **o) -> None:
        model = self.document_model(o["model"], passages=o["passages"])
        if o["if_stale"]:
            reason = tuning_status.staleness(model)
            if reason is None:
                return self.emit(
                    f"{model._meta.db_table}: the stored tuning is current", {"tuned": False}, o["json"]
                )
            self.stderr.write(f"tuning {model._meta.db_table}: {reason}")
        try:
            report = tuning.tune(
                model,
                target_recall=o["target_recall"],
                k=o["k"],
                queries=o["queries"],
                query_model=o["query_model"],
                margin=o["margin"],
            )
        except InputError as exc:
            raise self.error(exc) from exc
        self.emit(report.summary(), {**report.as_dict(), "tuned": True}, o["json"])
