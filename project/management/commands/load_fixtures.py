"""Load fixtures/*.parquet into the document table on a site's first start (and not again)."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vectorstore import conf
from vectorstore.loading import ingest
from vectorstore.reembed import record
from vectorstore.validation import InputError


class Command(BaseCommand):
    help = "Load the fixtures (embedding them) when the document table is empty."

    def add_arguments(self, parser) -> None:
        parser.add_argument("folder", nargs="?", help="where the parquet files are (default: fixtures/)")

    def handle(self, *args, folder: str | None = None, **options):
        model = conf.document_model()
        count = model.objects.count()
        if count:
            self.stdout.write(f"{model._meta.label}: {count} documents stored; fixtures not loaded again")
            return
        for path in sorted(Path(folder or settings.BASE_DIR / "fixtures").glob("*.parquet")):
            self.stdout.write(f"loading {path.name}: {self._estimate(path, model)} ...")
            try:
                report = ingest.load(path, on_conflict="skip")
            except InputError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(report.summary())

    def _estimate(self, path: Path, model: type) -> str:
        """How long embedding the file's texts will take here: measured on its first texts (the model
        loaded first), said before the minutes begin."""
        import time

        import pyarrow.parquet as pq

        texts = pq.read_table(path, columns=["text"]).column("text").to_pylist()
        embedder = record.embedder(model)
        embedder.encode(["warm-up"])  # the model's loading is not the rate
        sample = [t for t in texts[:64] if t]
        started = time.perf_counter()
        embedder.encode(sample)
        rate = len(sample) / max(time.perf_counter() - started, 1e-6)
        seconds = len(texts) / rate
        took = f"{seconds / 60:.0f} minutes" if seconds >= 90 else f"{seconds:.0f} seconds"
        return (
            f"embedding its {len(texts):,} texts takes about {took} here ({rate:.0f} texts/s on"
            f" {embedder.device}, measured on its first {len(sample)}); once, on a site's first start"
        )
