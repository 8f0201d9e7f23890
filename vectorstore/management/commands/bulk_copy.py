"""Load a parquet file of texts (with or without vectors) and metadata into PostgreSQL with binary COPY."""

from __future__ import annotations

from vectorstore.embedding import Embedder, EmbeddingError
from vectorstore.loading import ingest
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.reembed import record
from vectorstore.validation import InputError


class Command(ServiceCommand):
    help = (
        "Load texts, vectors and every other column (as metadata) from a parquet file, with binary COPY, "
        "in one transaction. A file without vectors is embedded on the way in."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("input", help="a parquet file")
        parser.add_argument("--method", choices=ingest.METHODS, default="copy")
        parser.add_argument("--batch-size", type=int, help="rows per batch (copy: 5000, insert: 1000)")
        parser.add_argument("--text-column", default="text")
        parser.add_argument("--embedding-column", help="default: 'embedding' or 'embeddings' if present")
        parser.add_argument("--id-column", help="loaded into external_id; default: 'external_id' or 'id'")
        parser.add_argument(
            "--on-conflict", choices=ingest.ON_CONFLICT, default="error", help="ids already stored"
        )
        parser.add_argument(
            "--on-error",
            choices=ingest.ON_ERROR,
            default="abort",
            help="abort: a bad row loads nothing; skip: bad rows go to INPUT.rejects.parquet",
        )
        parser.add_argument(
            "--index-strategy",
            choices=ingest.INDEX_STRATEGIES,
            default="auto",
            help="rebuild: drop indexes, load, build them; auto: rebuild when the load outsizes the table",
        )
        parser.add_argument(
            "--workers",
            type=int,
            default=1,
            help="parallel COPY streams into a populated table (not used when indexes are rebuilt)",
        )
        parser.add_argument("--rejects", help="where --on-error skip writes bad rows")
        parser.add_argument(
            "--model", help="target model as app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)"
        )
        parser.add_argument("--text-field", default="text")
        parser.add_argument("--vector-field", default="embedding")
        parser.add_argument(
            "--embedding-model", help="sentence-transformers path or name, for files without vectors"
        )
        parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (embedding only)")
        parser.add_argument(
            "--maintenance-work-mem",
            help="for index builds, e.g. 2GB (default: sized for the graph, within BUILD_MEMORY_LIMIT)",
        )
        parser.add_argument(
            "--tune",
            choices=["auto", "now", "off"],
            default="auto",
            help="after a load that changed the table substantially: auto measures recall where it costs "
            "the load nothing (the query log, or the model loaded to embed) and else stores the setting for "
            "an unmeasured table of its size, measured later by the site or tune_search; now loads the "
            "model to measure on pseudo-queries; off keeps the stored tuning",
        )
        parser.add_argument("--no-tune", action="store_true", help="the same as --tune off")

    def handle(self, *args, **o) -> None:
        try:
            embedder = None
            if o["embedding_model"] or o["device"]:
                target = ingest.resolve_model(o["model"])
                embedder = (
                    Embedder.for_model(target, model=o["embedding_model"], device=o["device"])
                    if o["embedding_model"]
                    else record.embedder(target, device=o["device"])
                )
            report = ingest.load(
                o["input"],
                model=o["model"],
                text_column=o["text_column"],
                embedding_column=o["embedding_column"],
                id_column=o["id_column"],
                text_field=o["text_field"],
                vector_field=o["vector_field"],
                method=o["method"],
                batch_size=o["batch_size"],
                on_conflict=o["on_conflict"],
                on_error=o["on_error"],
                index_strategy=o["index_strategy"],
                workers=o["workers"],
                embedder=embedder,
                rejects_path=o["rejects"],
                maintenance_work_mem=o["maintenance_work_mem"],
                tune="off" if o["no_tune"] else o["tune"],
            )
        except (InputError, EmbeddingError) as exc:
            raise self.error(exc) from exc
        for warning in report.warnings:
            self.stderr.write(f"warning: {warning}")
        self.emit(report.summary(), report.as_dict(), o["json"])
