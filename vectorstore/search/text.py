"""The text side: full-text matches of the generated tsvector, ranked by BM25 where the table has a
pg_textsearch index (``vectorstore.indexing.bm25``), else by PostgreSQL's ``ts_rank_cd``."""

from __future__ import annotations

import operator
import re
from functools import reduce

from django.contrib.postgres.search import SearchQuery, SearchRank
from django.db import models
from django.db.models import Count, ExpressionWrapper, F, Q, Window

from vectorstore.indexing import bm25
from vectorstore.limits import TEXT_SEARCH_CONFIG
from vectorstore.search.distances import METRICS
from vectorstore.search.statements import QueryVector, Statement

MAX_QUERY_WORDS = 32  # words of a hybrid query's partial-match side (each one a term of an OR query)


def ranking_for(model: type[models.Model], using: str, query: str) -> tuple[str, str] | None:
    """(query, bm25 index) where the table has a valid bm25 index, else None (ts_rank_cd ranks)."""
    index = bm25.index_for(model, using)
    return (query, index) if index else None


def text_query(text: str) -> SearchQuery:
    """Mode text: web search syntax (every word, "quoted phrases", -excluded, or), as PostgreSQL's
    websearch_to_tsquery reads it."""
    return SearchQuery(text, search_type="websearch", config=TEXT_SEARCH_CONFIG)


def any_words(text: str) -> SearchQuery | None:
    """Hybrid's text side when partial matches count (``partial_weight`` > 0): documents holding any of
    the query's words, those with more (and closer) of them ranked higher, so that a natural-language
    query that no text matches word for word still has a text side. Each word is a parameter of its
    own plainto_tsquery; None when the text has no word."""
    words = list(dict.fromkeys(w.lower() for w in re.findall(r"\w+", text)))[:MAX_QUERY_WORDS]
    if not words:
        return None
    return reduce(
        operator.or_, (SearchQuery(w, search_type="plain", config=TEXT_SEARCH_CONFIG) for w in words)
    )


def text_query_set(
    queryset: models.QuerySet,
    fields: list[str],
    tsquery: SearchQuery,
    metric: str | None,
    k: int,
    ranking: tuple[str, str] | None = None,
    every_word: SearchQuery | None = None,
    count_all_words: SearchQuery | None = None,
) -> models.QuerySet:
    """Full-text matches, best first: the rows' fields, their rank, and (for hybrid) whether they hold
    ``every_word``, how many documents hold all of ``count_all_words`` (a window count over the
    matches, which ts_rank_cd's ordering reads whole anyway), and their distance.

    ``ranking`` (the query text and a bm25 index) ranks the matches by BM25, in the order the index
    scans (``ORDER BY text <@> to_bm25query(...)``, negative scores); else by ``ts_rank_cd``, the
    matches holding ``every_word`` first.
    """
    matches = queryset.filter(search_vector=tsquery)
    if ranking is not None:
        ranked = matches.annotate(text_rank=bm25.BM25Score("text", *ranking))
        order = ["text_rank"]  # no tie-break column: it would keep the index from giving the order
    else:
        ranked = matches.annotate(text_rank=SearchRank(F("search_vector"), tsquery, cover_density=True))
        order = ["-text_rank", "pk"]
    columns = [*fields, "text_rank"]
    if every_word is not None:
        holds = ExpressionWrapper(Q(search_vector=every_word), output_field=models.BooleanField())
        ranked = ranked.annotate(every_word=holds)
        columns.append("every_word")
        if ranking is None:
            order.insert(0, "-every_word")
    if count_all_words is not None:
        holds = Q(search_vector=count_all_words) if every_word is not None else None
        ranked = ranked.annotate(matches=Window(Count("pk", filter=holds)))
        columns.append("matches")
    if metric is not None:
        ranked = ranked.annotate(distance=METRICS[metric]("embedding", QueryVector()))
        columns.append("distance")
    return ranked.order_by(*order).values_list(*columns)[:k]


def all_words_count(queryset: models.QuerySet, every_word: SearchQuery, cap: int) -> Statement:
    """How many documents hold every word, counted up to ``cap`` through the full-text index: the BM25
    path's matches come in the index's order, so a window count would read all of them."""
    matching = Statement.compile(queryset.filter(search_vector=every_word).values_list("pk")[:cap])
    if matching.empty:
        return matching
    return Statement(f"SELECT count(*) FROM ({matching.sql}) AS matches", matching.params, ())


def text_score(value: float, ranking: tuple[str, str] | None) -> float:
    """A text match's score, higher is better: BM25's (the index gives it negated) or ts_rank_cd's."""
    return -float(value) if ranking is not None else float(value)
