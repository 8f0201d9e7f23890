"""Progress bars for long jobs (loads, embedding, index builds): on a terminal only, with tqdm."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

IndexProgressCallback = Callable[[str, str, int, int], None]


def progress_enabled() -> bool:
    """Progress bars go to a terminal only; logs and pipes get the one-line summary."""
    return sys.stderr.isatty()


def make_bar(total: int | None, desc: str, unit: str = "rows", enabled: bool | None = None) -> Any:
    """A tqdm bar on stderr (rows, rows/s, ETA), disabled off a terminal unless ``enabled``."""
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        unit_scale=True,
        dynamic_ncols=True,
        disable=not (progress_enabled() if enabled is None else enabled),
        file=sys.stderr,
    )


def index_progress_bar(desc: str, enabled: bool | None = None) -> tuple[Any, IndexProgressCallback]:
    """A bar for index builds, and the callback ``indexes.build_indexes`` / ``reindex_concurrently`` feed."""
    bar = make_bar(None, desc, unit="blocks", enabled=enabled)

    def on_progress(name: str, phase: str, done: int, total: int) -> None:
        bar.set_description(f"index {name}: {phase}")
        if total:
            bar.total = total
        bar.n = done
        bar.refresh()

    return bar, on_progress
