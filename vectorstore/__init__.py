"""vectorstore: PostgreSQL + pgvector as a store for sentence-transformer embeddings.

The app's modules live in packages by concept (``loading``, ``indexing``, ``tuning``, ``search``,
``passages``, ``replicas``, ``api``). Their old top-level paths (0.1, before the packages) still import,
with a DeprecationWarning naming the new one, until 1.0: a site's settings (``vectorstore.routers``),
its migrations (``vectorstore.vector_indexes.VectorIndex``) and its code keep working meanwhile.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings
from importlib.machinery import ModuleSpec
from types import ModuleType

__version__ = "0.1.0"

MOVED = {
    "ingest": "loading.ingest",
    "parquet": "loading.parquet",
    "rows": "loading.rows",
    "rejects": "loading.rejects",
    "writes": "loading.writes",
    "pgcopy": "loading.pgcopy",
    "twophase": "loading.twophase",
    "load_report": "loading.report",
    "embed_parquet": "loading.embed_parquet",
    "stream": "loading.stream",
    "indexes": "indexing.indexes",
    "vector_indexes": "indexing.vector_indexes",
    "live_index": "indexing.live_index",
    "build_memory": "indexing.build_memory",
    "operations": "indexing.operations",
    "metadata_keys": "indexing.metadata_keys",
    "bm25": "indexing.bm25",
    "tuning_queries": "tuning.queries",
    "tuning_status": "tuning.status",
    "load_tuning": "tuning.first_load",
    "autotune": "tuning.autotune",
    "query_log": "search.query_log",
    "filters": "search.filters",
    "routers": "replicas.routers",
    "passage_split": "passages.split",
    "passage_files": "passages.files",
    "schemas": "api.schemas",
    "status": "api.status",
}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports ``vectorstore.<old>`` as the module it moved to (the same module object, so classes
    compare equal and a migration's reference resolves), warning once per old path."""

    def find_spec(self, fullname: str, path: object, target: object = None) -> ModuleSpec | None:
        prefix, _, name = fullname.partition(".")
        if prefix == __name__ and name in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec: ModuleSpec) -> ModuleType:
        new = f"{__name__}.{MOVED[spec.name.partition('.')[2]]}"
        warnings.warn(
            f"{spec.name} moved to {new}; the old path goes in 1.0", DeprecationWarning, stacklevel=2
        )
        return importlib.import_module(new)

    def exec_module(self, module: ModuleType) -> None:
        pass  # the module it moved to is imported already


if not any(isinstance(finder, _MovedModules) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModules())
