"""Load fixtures/*.parquet into the document table on a site's first start (and not again)."""

from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from vectorstore import conf
from vectorstore.loading import ingest
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
            self.stdout.write(f"loading {path.name} (embedding its texts: about a minute on a CPU) ...")
            try:
                report = ingest.load(path, on_conflict="skip")
            except InputError as exc:
                raise CommandError(str(exc)) from exc
            self.stdout.write(report.summary())
