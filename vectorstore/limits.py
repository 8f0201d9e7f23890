"""The app's vocabularies and bounds, written once: the API's schemas, search, the settings and the
system checks all check against these."""

from __future__ import annotations

# Distance metrics (pgvector's <=>, <->, <#>), search modes and pgvector 0.8's iterative index scans.
METRICS = ("cosine", "l2", "inner_product")
SEARCH_MODES = ("vector", "hybrid", "text")
ITERATIVE_SCANS = ("off", "strict_order", "relaxed_order")
DEVICES = ("auto", "cpu", "cuda", "mps")
EMBED_ON_SAVE = ("inline", "deferred")

# pgvector's largest vector (and an HNSW index's limit is lower: 2,000 dimensions for vector).
MAX_DIMENSIONS = 16_000
MAX_K = 1000  # results of one search
MAX_QUERY_CHARS = 2000  # characters of a query text
MAX_FILTER_LIST = 1000  # values of one $in / $nin list
MAX_FILTER_DEPTH = 8  # nesting of $and / $or
# Fields, operators and values in one filter, across the whole tree: planning a query costs time in
# its number of conditions (10,000 metadata conditions took 46 s), so a filter's size is bounded.
MAX_FILTER_TERMS = 2000
EF_SEARCH_RANGE = (1, 1000)  # pgvector's bounds for hnsw.ef_search
RERANK_RANGE = (1, 100)  # a quantized index's candidates, as a multiple of k
PROBES_RANGE = (1, 10_000)  # ivfflat.probes (pgvector's bound is the index's lists)
MAX_TEXT = 100_000  # characters of one document's text written through the API
MAX_BATCH = 1000  # documents in one POST /api/documents
MAX_PAGE = 100  # documents in one page of GET /api/documents

# The text search configuration of the generated tsvector column, and of queries against it.
TEXT_SEARCH_CONFIG = "english"

# HNSW build parameters, explicit so that a migration records them (pgvector's defaults).
HNSW_M = 16
HNSW_EF_CONSTRUCTION = 64
