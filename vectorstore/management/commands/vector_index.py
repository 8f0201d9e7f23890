"""List a document table's vector indexes, or build one of another kind on the live table (concurrently)."""

from __future__ import annotations

import psycopg
from django.core.management.base import CommandError
from django.db import DatabaseError

from vectorstore import conf
from vectorstore.indexing import build_memory, live_index, vector_indexes
from vectorstore.indexing.operations import ivfflat_lists
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.progress import index_progress_bar
from vectorstore.tuning import status as tuning_status


class Command(ServiceCommand):
    help = (
        "'list' shows the document table's vector indexes (kind, size, valid, which one searches use); "
        "'create --method hnsw --quantization half --replace' builds one concurrently, with memory sized "
        "for its graph, and with --replace then drops the others: searches go on throughout."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("action", nargs="?", default="list", choices=["list", "create"])
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")
        parser.add_argument(
            "--passages", action="store_true", help="the model's passage table (a model that keeps passages)"
        )
        parser.add_argument("--method", default="hnsw", choices=vector_indexes.METHODS)
        parser.add_argument(
            "--quantization",
            choices=["full", "half", "binary"],
            default="full",
            help="what the index holds: the vectors (full), halfvec copies (half) or sign bits (binary)",
        )
        parser.add_argument(
            "--metric", choices=list(vector_indexes.OPS), help="default: VECTORSTORE DISTANCE"
        )
        parser.add_argument("--m", type=int, help="HNSW: neighbours per element (pgvector's default 16)")
        parser.add_argument(
            "--ef-construction", type=int, help="HNSW: candidates while building (default 64)"
        )
        parser.add_argument(
            "--lists", type=int, help="IVFFlat: lists (default: rows / 1000 up to 1M rows, sqrt(rows) above)"
        )
        parser.add_argument("--name", help="the index's name (default: <table>_<method>_<kind>)")
        parser.add_argument(
            "--replace", action="store_true", help="then drop the table's other vector indexes (concurrently)"
        )
        parser.add_argument("--maintenance-work-mem", help="e.g. 2GB (default: sized for the graph)")
        parser.add_argument(
            "--grace",
            type=float,
            help="seconds between the new index and dropping the old (default: INDEX_LOOKUP_SECONDS)",
        )
        parser.add_argument("--no-tune", action="store_true", help="do not measure recall and store settings")

    def handle(self, *args, **o) -> None:
        model = self.document_model(o["model"], passages=o["passages"])
        if o["action"] == "list":
            return self.list(model, o["json"])
        quantization = None if o["quantization"] == "full" else o["quantization"]
        lists = o["lists"]
        if o["method"] == "ivfflat" and lists is None:
            lists = max(10, ivfflat_lists(model._default_manager.count()))  # pgvector's advice
        bar, progress = index_progress_bar("vector_index")
        try:
            with bar:
                report = live_index.create_index(
                    model,
                    method=o["method"],
                    quantization=quantization,
                    metric=o["metric"],
                    m=o["m"],
                    ef_construction=o["ef_construction"],
                    lists=lists,
                    name=o["name"],
                    replace=o["replace"],
                    maintenance_work_mem=o["maintenance_work_mem"],
                    progress=progress,
                    tune=not o["no_tune"],
                    grace=o["grace"],
                )
        except ValueError as exc:
            raise self.error(exc) from exc
        except (DatabaseError, psycopg.Error) as exc:
            message = getattr(getattr(exc, "diag", None), "message_primary", None) or exc
            raise CommandError(
                f"vector_index create on {model._meta.db_table} failed: {message}; the table's indexes are"
                " as they were and no INVALID index was left"
            ) from exc
        for warning in report.warnings:
            self.stderr.write(f"warning: {warning}")
        self.emit(report.summary(), report.as_dict(), o["json"])

    def list(self, model, as_json: bool) -> None:
        field = model._meta.get_field("embedding")
        found = vector_indexes.table_indexes(model._meta.db_table, field.column)
        vector_indexes.forget()
        serving = vector_indexes.serving(model, conf.distance())
        lines = [f"{model._meta.db_table}: {len(found)} vector index(es)"]
        rows = []
        estimates = {e["index"]: e for e in tuning_status.stored_estimates(model)}
        for index in found:
            used = serving is not None and index.name == serving.name
            lines.append(
                f"  {index.name}: {index.method}, {index.kind}, {index.metric or 'hamming'},"
                f" {build_memory.pretty(index.size_bytes)}, {'valid' if index.valid else 'INVALID'}"
                f"{', used by searches' if used else ''}"
            )
            if index.name in estimates:
                lines.append(f"    tuned: {tuning_status.describe(estimates[index.name])}")
            rows.append(
                {
                    "name": index.name,
                    "method": index.method,
                    "kind": index.kind,
                    "metric": index.metric,
                    "size_bytes": index.size_bytes,
                    "valid": index.valid,
                    "serving": used,
                    "tuning": estimates.get(index.name),
                }
            )
        if serving is None:
            lines.append(f"  searches by {conf.distance()} scan the table exactly (no index serves them)")
        self.emit("\n".join(lines), {"table": model._meta.db_table, "indexes": rows}, as_json)
