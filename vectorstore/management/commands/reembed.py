"""Move the document table (and its passages) to another embedding model while the site serves."""

from __future__ import annotations

from vectorstore.embedding import EmbeddingError
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.reembed import service


class Command(ServiceCommand):
    help = (
        "Embed every row and passage with another model (default: the configured VECTORSTORE MODEL) into "
        "a shadow column beside the old vectors, build its indexes, and swap them in one transaction while "
        "searches go on; then tune the new index. Any number of these (--workers, other machines) share "
        "the work; a killed run goes on where it stopped when run again. The old vectors are kept for "
        "--rollback until the next reembed or --drop-old."
    )

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument("--embedding-model", dest="target", help="the new model: a name or local path")
        parser.add_argument("--batch-size", type=int, help="texts per model call (default: BATCH_SIZE)")
        parser.add_argument("--workers", type=int, default=1, help="processes embedding here (default 1)")
        parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps (default: DEVICE)")
        parser.add_argument("--rollback", action="store_true", help="swap the previous model's vectors back")
        parser.add_argument("--drop-old", action="store_true", help="drop the previous model's vectors")
        parser.add_argument("--status", action="store_true", help="say which model the table has, and exit")
        parser.add_argument("--no-tune", action="store_true", help="leave the new index untuned")
        parser.add_argument("--model", help="app_label.Model (default: VECTORSTORE DOCUMENT_MODEL)")

    def handle(self, *args, **o) -> None:
        if o["batch_size"] is not None and o["batch_size"] < 1:
            raise self.error(ValueError(f"--batch-size must be at least 1, not {o['batch_size']}"))
        if sum(bool(o[k]) for k in ("rollback", "drop_old", "status")) > 1 or (
            o["target"] and (o["rollback"] or o["drop_old"])
        ):
            raise self.error(
                ValueError("--rollback, --drop-old, --status and --embedding-model exclude each other")
            )
        document = self.document_model(o["model"])
        if o["status"]:
            found = service.status(document)
            self.emit(", ".join(f"{k}: {v}" for k, v in found.items()), found, o["json"])
            return
        try:
            if o["drop_old"]:
                report = service.drop_old(document)
            else:
                report = service.reembed(
                    document,
                    model=o["target"],
                    rollback=o["rollback"],
                    batch_size=o["batch_size"],
                    workers=o["workers"],
                    device=o["device"],
                    tune=not o["no_tune"],
                )
        except EmbeddingError as exc:
            raise self.error(exc) from exc
        self.emit(report.summary(), report.as_dict(), o["json"])
