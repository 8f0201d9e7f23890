"""Simulate real-time ingestion: embed and write records one at a time (or in micro-batches), timed."""

from __future__ import annotations

import json
import time

from django.core.management.base import CommandError

from vectorstore import conf
from vectorstore.embedding import Embedder, EmbeddingError
from vectorstore.loading import stream
from vectorstore.management.commands._base import ServiceCommand
from vectorstore.reembed import record
from vectorstore.validation import InputError


class Command(ServiceCommand):
    help = "Replay records from a parquet file as a stream: embed, then write, each record timed."

    def add_arguments(self, parser) -> None:
        super().add_arguments(parser)
        parser.add_argument(
            "--source", help="a parquet file with a text column (default: VECTORSTORE STREAM_SOURCE)"
        )
        parser.add_argument("--count", type=int, default=100)
        parser.add_argument(
            "--mode", choices=stream.MODES, action="append", help="insert, copy or batch; repeat for several"
        )
        parser.add_argument("--batch-size", type=int, default=32, help="batch mode: records per micro-batch")
        parser.add_argument(
            "--max-wait-ms", type=float, default=50.0, help="batch mode: flush a partial batch"
        )
        parser.add_argument("--rate", type=float, help="arrivals per second (default: as fast as handled)")
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--id-prefix", help="external_id prefix (default: stream-<time>-)")
        parser.add_argument(
            "--keep",
            action="store_true",
            help="keep the records in the table (by default the run removes them at its end: they are "
            "copies of real records and would answer searches beside them)",
        )
        parser.add_argument(
            "--clean",
            action="store_true",
            help="only remove the records earlier runs kept (external ids starting with stream-), and exit",
        )
        parser.add_argument("--plot", help="write a PNG of the latency distributions here")
        parser.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
        parser.add_argument("--embedding-model", help="sentence-transformers path or name")

    def handle(self, *args, **o) -> None:
        if o["clean"]:
            removed = stream.remove_simulated()
            return self.emit(
                f"removed {removed} simulated records ({stream.SIMULATED_PREFIX}...)",
                {"removed": removed},
                o["json"],
            )
        source = o["source"] or conf.stream_source()
        if source is None:
            raise CommandError("--source: give a parquet file (no VECTORSTORE['STREAM_SOURCE'] is set)")
        if o["count"] < 1:
            raise CommandError(f"--count must be at least 1, not {o['count']}")
        if o["batch_size"] < 1:
            raise CommandError(f"--batch-size must be at least 1, not {o['batch_size']}")
        if o["plot"]:
            try:  # said before any record is written, not after
                import matplotlib  # noqa: F401
            except ImportError as exc:
                raise CommandError("--plot needs matplotlib: pip install 'vectorstore[plot]'") from exc
        modes = o["mode"] or ["insert"]
        prefix = o["id_prefix"]
        if prefix is None:
            prefix = f"{stream.SIMULATED_PREFIX}{time.strftime('%Y%m%dT%H%M%S')}-"
        try:
            embedder = (
                Embedder.for_model(conf.document_model(), model=o["embedding_model"], device=o["device"])
                if o["embedding_model"]
                else record.embedder(conf.document_model(), device=o["device"])
            )
            reports = []
            for mode in modes:
                records = stream.read_records(
                    source, o["count"], seed=o["seed"], id_prefix=f"{prefix}{mode}-"
                )
                report = stream.simulate(
                    mode,
                    records,
                    embedder,
                    batch_size=o["batch_size"],
                    max_wait_ms=o["max_wait_ms"],
                    rate=o["rate"],
                    on_outage=self.stderr.write,
                )
                reports.append(report)
                self.stdout.write(report.summary())
        except (InputError, EmbeddingError) as exc:
            raise self.error(exc) from exc
        finally:
            # Removed however the run ended (a failed mode leaves none of its records behind either).
            removed = None if o["keep"] or not prefix else stream.remove_simulated(prefix)
        if o["plot"]:
            self.stdout.write(f"plot: {stream.plot(reports, o['plot'])}")
        if removed is not None:
            self.stdout.write(
                f"removed the {removed} records this run wrote ({prefix}...; --keep keeps them)"
            )
        else:
            self.stdout.write(
                f"kept the records this run wrote ({prefix}...; stream_sim --clean removes them)"
            )
        if o["json"]:
            data = reports[0].as_dict() if len(reports) == 1 else {"runs": [r.as_dict() for r in reports]}
            data["removed"] = removed
            self.stdout.write(json.dumps(data))
