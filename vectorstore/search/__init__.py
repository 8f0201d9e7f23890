"""Vector, filtered, hybrid and text search: one service for the API, the admin and users' own code.

    from vectorstore.search import search
    result = search("tariffs on imported goods", k=5, filters={"category": "Whig", "year": {"$lt": 1850}})
    for hit in result.hits:
        print(hit.rank, round(hit.distance, 3), hit.document.text[:60])

Every vector query is ``ORDER BY distance LIMIT k`` through pgvector-python's distance functions, so
the index serves it; ``hnsw.ef_search``, ``hnsw.iterative_scan`` and ``ivfflat.probes`` are set with
``SET LOCAL`` in the query's own transaction. Django builds each query (filters become lookups and
parameters); ``statements`` runs it with the vector bound in binary, the settings and the query in one
round trip, and hands back rows: ``hit.values`` is the row, ``hit.document`` a model instance built
only when asked for.

One module a concept, data flowing one way (each imports only those above it):

    results        Hit, SearchResult
    statements     Django-compiled SQL run with a binary query vector, in one pipelined round trip
    aio            the same on psycopg's async connections, pooled per database and event loop
    steps          a search as steps, driven in a thread (search) or on an event loop (asearch)
    distances      metrics, the ORDER BY distance LIMIT k shape, scores
    query_vector   a text's vector (cached) or a given vector, checked
    settings       index knobs (query, stored tuning, settings), the statement timeout and its 503
    quantized      re-rank through a half-precision or binary index
    plan           the vector side: unfiltered, or filtered by exact scan or iterative scan
    text           the text side: ts_rank_cd, or BM25 where pg_textsearch is
    fusion         hybrid: weighted reciprocal rank fusion
    diversity      maximal marginal relevance
    service        search() and similar() (asearch(), asimilar()): check, plan, run, assemble

``asearch()`` takes the same arguments for async code: ``result = await asearch("tariffs", k=5)``.
"""

from vectorstore.search.aio import aclose
from vectorstore.search.distances import METRICS, distance_expression, score_of, vector_queryset
from vectorstore.search.filters import SearchError, build_filter
from vectorstore.search.query_vector import check_vector, embed_query, query_cache
from vectorstore.search.results import Hit, SearchResult
from vectorstore.search.service import asearch, asimilar, search, similar
from vectorstore.search.settings import (
    SearchTimeout,
    Tuned,
    bounded,
    forget_tuning,
    index_settings,
    tuned_settings,
)

__all__ = [
    "METRICS",
    "Hit",
    "SearchError",
    "SearchResult",
    "SearchTimeout",
    "Tuned",
    "aclose",
    "asearch",
    "asimilar",
    "bounded",
    "build_filter",
    "check_vector",
    "distance_expression",
    "embed_query",
    "forget_tuning",
    "index_settings",
    "query_cache",
    "score_of",
    "search",
    "similar",
    "tuned_settings",
    "vector_queryset",
]
