"""Embed a parquet file's texts with sentence-transformers, writing every column plus `embedding`."""

from __future__ import annotations

from vectorstore.embedding import Embedder, EmbeddingError
from vectorstore.loading.embed_parquet import embed_parquet
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.validation import InputError


class Command(ServiceCommand):
    help = "Embed INPUT's texts into OUTPUT (every input column kept, plus `embedding` as float32 lists)."

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("input")
        parser.add_argument("output")
        parser.add_argument("--text-column", default="text")
        parser.add_argument(
            "--batch-size", type=int, help="texts per model batch (default: VECTORSTORE BATCH_SIZE)"
        )
        parser.add_argument("--device", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
        parser.add_argument(
            "--embedding-model",
            help="a sentence-transformers path or name (default: bundled all-MiniLM-L6-v2)",
        )
        parser.add_argument(
            "--passages",
            action="store_true",
            help="also each text's passages and their vectors (a `passages` column bulk_copy takes for a"
            " model that keeps passages; cut by PASSAGE_WINDOW and PASSAGE_OVERLAP)",
        )
        # --model means the Django model in every other command; here it was the embedding model.
        parser.add_argument("--model", dest="old_model", help="deprecated: use --embedding-model")

    def handle(self, *args, **o) -> None:
        if o["old_model"]:
            self.stderr.write("embed_parquet --model is deprecated: use --embedding-model (the same meaning)")
        try:
            model = o["embedding_model"] or o["old_model"]
            embedder = Embedder(model=model, device=o["device"], batch_size=o["batch_size"])
            report = embed_parquet(
                o["input"],
                o["output"],
                text_column=o["text_column"],
                embedder=embedder,
                passages=o["passages"],
            )
        except (InputError, EmbeddingError) as exc:
            raise self.error(exc) from exc
        self.emit(report.summary(), report.as_dict(), o["json"])
