"""What a load did (``ingest.load``'s answer): the counts, the time, the index rebuild, the warnings, and
the one-line summary and JSON the commands print."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class LoadReport:
    """What a load did. ``rows = inserted + updated + skipped + rejected``."""

    rows: int = 0
    inserted: int = 0
    updated: int = 0
    skipped: int = 0
    rejected: int = 0
    seconds: float = 0.0
    rows_per_s: float = 0.0
    method: str = "copy"
    table: str = ""
    embedded: int = 0
    truncated: int = 0
    index_strategy: str = "keep"
    index_seconds: float = 0.0
    workers: int = 1
    rejects_path: str | None = None
    ignored_columns: list[str] = field(default_factory=list)
    # Prepared transactions of earlier parallel loads that died, finished before this one began.
    recovered_committed: int = 0
    recovered_rolled_back: int = 0
    # What tuning.retune() stored after the load (None: the change was too small to tune again).
    tuned: dict[str, Any] | None = None
    index_memory: str | None = None  # maintenance_work_mem of the index builds
    warnings: list[str] = field(default_factory=list)  # a graph that would not fit in memory, say
    passages: int = 0  # passages written (a model that keeps them)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["seconds"] = round(self.seconds, 3)
        out["rows_per_s"] = round(self.rows_per_s, 1)
        out["index_seconds"] = round(self.index_seconds, 3)
        return out

    def summary(self) -> str:
        parts = [f"{self.rows} rows", f"{self.inserted} inserted"]
        if self.updated:
            parts.append(f"{self.updated} updated")
        parts += [f"{self.skipped} skipped", f"{self.rejected} rejected"]
        line = (
            f"{', '.join(parts)} into {self.table} in {self.seconds:.2f} s ({self.rows_per_s:,.0f} rows/s, "
            f"{self.method}"
        )
        if self.embedded:
            line += f", {self.embedded} embedded"
            if self.truncated:
                line += f", {self.truncated} truncated at the model's limit"
        if self.passages:
            line += f", {self.passages} passages"
        if self.index_strategy == "rebuild":
            line += f", indexes rebuilt in {self.index_seconds:.1f} s"
            if self.index_memory:
                line += f" with maintenance_work_mem {self.index_memory}"
        line += ")"
        if self.rejects_path:
            line += f"; rejects: {self.rejects_path}"
        if self.tuned:
            t = self.tuned
            measured = (
                f"no recall measured ({t['note'].split(';')[0]})"
                if t["recall"] is None
                else f"recall@{t['k']} ~{t['recall']:.3f} on {t['queries']} {t['query_model']} queries"
            )
            line += f"; search tuned: {t['setting']} {t['value']}, {measured} ({t['seconds']:.1f} s)"
        if self.recovered_committed or self.recovered_rolled_back:
            line += (
                f"; first finished an interrupted parallel load: {self.recovered_committed} streams"
                f" committed, {self.recovered_rolled_back} rolled back"
            )
        return line
