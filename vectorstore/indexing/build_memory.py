"""``maintenance_work_mem`` for a vector index build, sized for the graph about to be built.

pgvector builds an HNSW graph in memory while it fits in ``maintenance_work_mem`` and then finishes by
inserting into the on-disk graph, an order of magnitude slower per row (its notice: "hnsw graph no
longer fits into maintenance_work_mem after N tuples"). A fixed 1 GB is too little for a million
full-precision 384-dimension rows and far too much for a small table. Here the need is computed from the
rows and the index's kind, capped by the memory this machine can spare (or VECTORSTORE
``BUILD_MEMORY_LIMIT``), and a build that cannot fit is announced with the numbers before it starts.

Bytes per element, measured with pgvector 0.8.5 from the tuple count of its notice at a known setting
(384 dimensions; m 16: full 2,251, half 1,483, binary 762; m 32: full 2,765): the value itself plus
about 190 + 32 x m bytes of element and neighbour lists.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connections

from vectorstore import conf

ELEMENT_BYTES = 190  # an element's own bookkeeping, beyond its value and neighbour lists (measured)
NEIGHBOUR_BYTES_PER_M = 32  # 2m neighbours on level 0 at 16 bytes each, and the upper levels' share
HEADROOM = 1.1  # allocation slack on top of the estimate
FLOOR = 64 * 1024**2  # PostgreSQL's default maintenance_work_mem: never go below it
MACHINE_SHARE = 0.5  # of this machine's memory, when the server runs on it
REMOTE_CAP = 1024**3  # a server elsewhere: its memory is unknown here; the old fixed setting
_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3, "tb": 1024**4}


def parse_bytes(value: str | int) -> int:
    """'1GB', '512MB', '65536kB' (PostgreSQL's units) or a number of bytes."""
    if isinstance(value, int):
        return value
    found = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT]?[bB])?\s*", str(value))
    if not found:
        raise ValueError(f"{value!r}: expected a size such as '512MB' or '2GB'")
    return int(found[1]) * _UNITS[(found[2] or "b").lower()]


def pretty(size: int) -> str:
    for unit, scale in (("GB", 1024**3), ("MB", 1024**2), ("kB", 1024)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


def value_bytes(dimensions: int, quantization: str | None) -> int:
    """One element's indexed value: a vector (4 bytes a dimension), a halfvec (2) or a bit string."""
    if quantization == "binary":
        data = (dimensions + 7) // 8
    else:
        data = dimensions * (2 if quantization == "half" else 4)
    return 8 + data


def hnsw_graph_bytes(rows: int, dimensions: int, quantization: str | None, m: int = 16) -> int:
    """Memory an in-memory HNSW build of ``rows`` elements takes."""
    per = value_bytes(dimensions, quantization) + ELEMENT_BYTES + NEIGHBOUR_BYTES_PER_M * m
    return int(rows * per * HEADROOM)


@dataclass(frozen=True)
class BuildIndex:
    """What sizing needs of one index: its name, method, kind, dimensions and m."""

    name: str
    method: str
    quantization: str | None
    dimensions: int
    m: int = 16


@dataclass(frozen=True)
class MemoryPlan:
    """The setting chosen for a build, what the graph needs, and the cap that bounded it."""

    needed: int  # bytes the largest graph needs (0: nothing to size)
    chosen: int  # bytes maintenance_work_mem is set to
    cap: int
    cap_reason: str
    index: str = ""
    rows: int = 0
    kind: str = ""
    requested: bool = False  # chosen by the caller (--maintenance-work-mem), not sized

    @property
    def setting(self) -> str:
        return f"{max(1024, self.chosen // 1024)}kB"

    @property
    def fits(self) -> bool:
        return self.chosen >= self.needed

    def warning(self) -> str | None:
        """The numbers, when the graph will not fit in memory (None when it will)."""
        if self.fits:
            return None
        why = "as asked" if self.requested else f"capped by {self.cap_reason}"
        return (
            f"the HNSW graph of {self.index} ({self.rows:,} rows, {self.kind}) needs about"
            f" {pretty(self.needed)}; maintenance_work_mem is {pretty(self.chosen)} ({why}): pgvector will"
            " finish the build on disk, several times slower per row. A half-precision or binary index"
            " needs less (manage.py vector_index create --quantization half)"
        )

    def as_dict(self) -> dict:
        return {
            "maintenance_work_mem": self.setting,
            "needed_bytes": self.needed,
            "cap_bytes": self.cap,
            "cap": self.cap_reason,
            "fits": self.fits,
        }


def _local(using: str) -> bool:
    host = connections[using].settings_dict.get("HOST") or ""
    return str(host).startswith("/") or host in ("", "localhost", "127.0.0.1", "::1")


def memory_cap(using: str = "default", parallel: bool = False) -> tuple[int, str]:
    """The most a build may take, and why: VECTORSTORE BUILD_MEMORY_LIMIT if set; else, for a server on
    this machine, half its memory (and, for a parallel build, whose graph lives in shared memory, what
    /dev/shm has free); else 1 GB, since a remote server's memory is not known here."""
    limit = conf.build_memory_limit()
    if limit:
        return parse_bytes(limit), "VECTORSTORE BUILD_MEMORY_LIMIT"
    if not _local(using):
        return REMOTE_CAP, "the default for a server on another machine (set VECTORSTORE BUILD_MEMORY_LIMIT)"
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return REMOTE_CAP, "the default (this machine's memory is unknown)"
    cap, reason = int(total * MACHINE_SHARE), f"half this machine's {pretty(total)}"
    if parallel:
        try:
            shm = os.statvfs("/dev/shm")
            free = shm.f_bavail * shm.f_frsize
        except OSError:
            free = None
        if free is not None and free < cap:
            cap, reason = (
                int(free * 0.9),
                f"/dev/shm's {pretty(free)} free (a parallel build's graph lives there)",
            )
    return cap, reason


def plan(
    builds: Iterable[BuildIndex],
    rows: int,
    *,
    using: str = "default",
    requested: str | None = None,
    parallel: bool = False,
) -> MemoryPlan:
    """The maintenance_work_mem for building ``builds`` over ``rows`` rows: the largest HNSW graph's need
    (at least PostgreSQL's default), within the cap; or ``requested`` as given."""
    cap, reason = memory_cap(using, parallel)
    needed, name, kind = 0, "", ""
    for build in builds:
        if build.method != "hnsw":
            continue  # IVFFlat keeps only its k-means sample in memory
        need = hnsw_graph_bytes(rows, build.dimensions, build.quantization, build.m)
        if need > needed:
            needed, name = need, build.name
            kind = {None: "full precision", "half": "half precision", "binary": "binary"}[build.quantization]
    if requested:
        chosen = parse_bytes(requested)
        return MemoryPlan(needed, chosen, cap, reason, name, rows, kind, requested=True)
    chosen = min(cap, max(FLOOR, needed))
    return MemoryPlan(needed, chosen, cap, reason, name, rows, kind)
