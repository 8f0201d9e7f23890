"""The app's REST API: a django-ninja Router that a site mounts (see vectorstore/urls.py).

Reads are open; writes need a user with the document model's add/delete
permission, authenticated by a Django session (with CSRF) or a bearer token
from ``manage.py create_api_token``.

``router`` is built when this module loads (``build_router``): its search and similar endpoints are async
views (``vectorstore.search.asearch``) where the site is served by an ASGI server (``conf.async_views``),
plain views otherwise; both answer the same.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import psycopg
from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.serializers.json import DjangoJSONEncoder
from django.db import IntegrityError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404
from ninja import Query, Router, Schema, Status
from ninja.errors import HttpError
from ninja.errors import ValidationError as RequestInvalid
from ninja.security import HttpBearer, SessionAuth

from vectorstore import conf, search
from vectorstore.api.schemas import (
    CreatedOut,
    ErrorOut,
    SearchIn,
    document_in_for,
    document_out_for,
    page_out_for,
    search_out_for,
)
from vectorstore.api.status import HealthOut, health
from vectorstore.embedding import ModelStackMissing
from vectorstore.limits import MAX_BATCH, MAX_PAGE
from vectorstore.loading.writes import extra_fields, insert_documents
from vectorstore.models import ApiToken
from vectorstore.replicas import routers


class BearerToken(HttpBearer):
    def authenticate(self, request: HttpRequest, token: str):
        user = ApiToken.user_for(token)
        if user is not None:
            request.user = user
        return user


class LoggedInSession(SessionAuth):
    """Django's session, CSRF-checked; with neither a bearer token nor a logged-in session, a 401 that
    says what is needed (ninja's own would be a 403 "CSRF check Failed" for an anonymous client)."""

    def __call__(self, request: HttpRequest):
        if not request.user.is_authenticated:
            raise HttpError(
                401,
                "authentication: send 'Authorization: Bearer <token>' (manage.py create_api_token) or log in",
            )
        return super().__call__(request)


WRITE_AUTH = [BearerToken(), LoggedInSession(csrf=True)]


def reader_for(key: str) -> Any | None:
    """The active user a bearer token belongs to, for a read (SEARCH_AUTH): looked up, never written to
    (``ApiToken.user_for`` records each use, a write per search)."""
    if not key.startswith(ApiToken.PREFIX) or len(key) > 200:
        return None
    token = ApiToken.objects.select_related("user").filter(key_hash=ApiToken.digest(key)).first()
    return token.user if token is not None and token.user.is_active else None


class ReadToken(HttpBearer):
    """A bearer token for the API's reads, where VECTORSTORE SEARCH_AUTH asks for one."""

    def authenticate(self, request: HttpRequest, token: str):
        return reader_for(token)


def _require(request: HttpRequest, action: str) -> None:
    model = conf.document_model()
    perm = f"{model._meta.app_label}.{action}_{model._meta.model_name}"
    user = getattr(request, "auth", None) or request.user
    if not user.has_perm(perm):
        raise HttpError(403, f"permission {perm} is needed")


def _invalid(field: str, message: str, where: str = "body") -> RequestInvalid:
    """A 422 in the shape of django-ninja's own validation errors, ``{"detail": [{type, loc, msg}]}``, the
    field's path in ``loc``: one shape for every 422 the API answers (the checks a schema cannot make
    included), so that a client reads them one way."""
    parts = [int(p) if p.isdigit() else p for p in re.split(r"[.\[\]]+", field) if p and p != where]
    loc = ["body", "payload", *parts] if where == "body" else [where, *parts]
    return RequestInvalid([{"type": "value_error", "loc": loc, "msg": message}])


def _field_error(exc: search.SearchError, where: str = "body") -> RequestInvalid:
    return _invalid(exc.field, exc.message, where)


def _timed_out(exc: search.SearchTimeout) -> HttpResponse:
    """503 with Retry-After: the database stopped a query at the search timeout; the worker is free."""
    response = HttpResponse(json.dumps({"detail": str(exc)}), status=503, content_type="application/json")
    response["Retry-After"] = exc.retry_after
    return response


def _no_model_stack(exc: ModelStackMissing) -> HttpError:
    # Installed without the [embed] extra: searching by vector works, embedding a text cannot.
    return HttpError(501, f"query: {exc}")


# The configured model's own fields are written and read too: its schemas are built once, when the API
# loads (the model is named in settings, which cannot change under a running site).
try:
    _MODEL = conf.document_model()
except ImproperlyConfigured:  # the system check (E004) says why; the routes answer with the app's own model
    from vectorstore.models import Document as _MODEL
DocumentInModel = document_in_for(_MODEL)
DocumentOutModel = document_out_for(_MODEL)
PageOutModel = page_out_for(_MODEL)
SearchOutModel = search_out_for(_MODEL)
_EXTRA = [(name, _MODEL._meta.get_field(name).attname) for name in extra_fields(_MODEL)]


def _hit(hit: search.Hit) -> dict:
    v = hit.values  # straight from the row: no model instance per hit
    return {
        "id": v[hit.model._meta.pk.attname],
        "external_id": v["external_id"],
        "text": v["text"],
        "category": v["category"],
        "metadata": v["metadata"],
        "created_at": v["created_at"],
        "rank": hit.rank,
        "score": hit.score,
        "distance": hit.distance,
        "passage": hit.passage,
        "stale": hit.stale,
        **{name: v[attname] for name, attname in _EXTRA},
    }


_django_json = DjangoJSONEncoder()


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        # As pydantic writes it (microseconds kept, UTC as Z), so the schema's examples still hold.
        text = value.isoformat()
        return text[:-6] + "Z" if text.endswith("+00:00") else text
    return _django_json.default(value)  # a host model's own fields: dates, decimals, UUIDs


def search_body(result: search.SearchResult) -> dict[str, Any]:
    """SearchOut as a dict, straight from the rows: validating ten hits again through the response schema
    cost more than the search (the rows come from typed columns, and tests check the schema)."""
    return {
        "results": [_hit(h) for h in result.hits],
        "took_ms": round(result.took_ms, 3),
        "mode": result.mode,
        "metric": result.metric,
        "exact": result.exact,
        "database": result.database,
    }


def _search_out(result: search.SearchResult) -> HttpResponse:
    response = HttpResponse(
        json.dumps(search_body(result), default=_json_default, ensure_ascii=False),
        content_type="application/json",
    )
    response[routers.HEADER] = result.database
    return response


def _search_arguments(payload: SearchIn) -> dict[str, Any]:
    return {
        "query": payload.query,
        "vector": payload.vector,
        "k": payload.k,
        "filters": payload.filters,
        "mode": payload.mode,
        "metric": payload.metric,
        "ef_search": payload.ef_search,
        "iterative_scan": payload.iterative_scan,
        "probes": payload.probes,
        "rerank": payload.rerank,
        "mmr": payload.mmr.dict(exclude_none=True) if payload.mmr is not None else None,
        "hybrid": payload.hybrid.dict(exclude_none=True) if payload.hybrid is not None else None,
    }


SEARCH_ERRORS = (search.SearchError, search.SearchTimeout, ModelStackMissing)


def _failed(exc: Exception, where: str = "body") -> HttpResponse:
    """A search's error as the API answers it: a 422 naming the field (in the body, or the ``query``
    string), a 503 with Retry-After, a 501."""
    if isinstance(exc, search.SearchTimeout):
        return _timed_out(exc)
    if isinstance(exc, search.SearchError):
        raise _field_error(exc, where) from exc
    if isinstance(exc, ModelStackMissing):
        raise _no_model_stack(exc) from exc
    raise exc


@routers.replica_reads
def search_documents(request, payload: SearchIn):
    """Nearest documents to a text (embedded server-side) or a vector; `mode` hybrid fuses full text."""
    try:
        return _search_out(search.search(**_search_arguments(payload)))
    except SEARCH_ERRORS as exc:
        return _failed(exc)


@routers.replica_reads
async def search_documents_async(request, payload: SearchIn):
    try:
        return _search_out(await search.asearch(**_search_arguments(payload)))
    except SEARCH_ERRORS as exc:
        return _failed(exc)


search_documents_async.__doc__ = search_documents.__doc__


class ListParams(Schema):
    category: str | None = None
    external_id: str | None = None
    created_after: str | None = None
    created_before: str | None = None
    limit: int = 20
    offset: int = 0


@routers.replica_reads
def list_documents(request, params: Query[ListParams]):
    if not 1 <= params.limit <= MAX_PAGE:
        raise _invalid("limit", f"must be from 1 to {MAX_PAGE}", "query")
    if params.offset < 0:
        raise _invalid("offset", "must be 0 or more", "query")
    spec: dict = {}
    if params.category is not None:
        spec["category"] = params.category
    if params.external_id is not None:
        spec["external_id"] = params.external_id
    created = {}
    if params.created_after is not None:
        created["$gte"] = params.created_after
    if params.created_before is not None:
        created["$lt"] = params.created_before
    if created:
        spec["created_at"] = created
    try:
        condition = search.build_filter(spec, where="query")
    except search.SearchError as exc:
        raise _field_error(exc, "query") from exc
    model = conf.document_model()
    queryset = model._default_manager.filter(condition).order_by("pk").defer("embedding", "search_vector")
    try:
        # The timeout is set on the database the rows come from (a replica, with the replica router).
        with search.bounded(queryset.db):
            rows = list(queryset[params.offset : params.offset + params.limit + 1])
    except search.SearchTimeout as exc:
        return _timed_out(exc)
    more = len(rows) > params.limit
    return {
        "items": rows[: params.limit],
        "limit": params.limit,
        "offset": params.offset,
        "next_offset": params.offset + params.limit if more else None,
    }


@routers.replica_reads
def get_document(request, doc_id: int):
    model = conf.document_model()
    return get_object_or_404(model._default_manager.defer("embedding", "search_vector"), pk=doc_id)


@routers.replica_reads
def similar_documents(request, doc_id: int, k: int = 10):
    """The k documents nearest to a stored one (itself left out)."""
    model = conf.document_model()
    document = get_object_or_404(model._default_manager.all(), pk=doc_id)
    try:
        return _search_out(search.similar(document, k=k))
    except SEARCH_ERRORS as exc:
        return _failed(exc, "query")


@routers.replica_reads
async def similar_documents_async(request, doc_id: int, k: int = 10):
    model = conf.document_model()
    # Django's async ORM (its one sync thread): one short read by primary key.
    document = await model._default_manager.filter(pk=doc_id).afirst()
    if document is None:
        raise Http404(f"No {model._meta.object_name} matches the given query.")
    try:
        return _search_out(await search.asimilar(document, k=k))
    except SEARCH_ERRORS as exc:
        return _failed(exc, "query")


similar_documents_async.__doc__ = similar_documents.__doc__


def _check_extra_fields(items: list) -> None:
    """The model's own fields checked by Django's field validation (max_length, URLs, choices...): a
    422 naming the field, where the database would otherwise refuse the COPY with a 500."""
    fields = [_MODEL._meta.get_field(name) for name, _ in _EXTRA]
    for i, item in enumerate(items):
        for field in fields:
            name = field.name
            value = getattr(item, name, None)
            if value is None:
                continue
            try:
                field.clean(value, None)
            except ValidationError as exc:
                where = f"[{i}].{name}" if len(items) > 1 else name
                raise _invalid(where, "; ".join(exc.messages)) from exc


def create_documents(request, payload: list[DocumentInModel] | DocumentInModel):  # type: ignore[valid-type]
    """One document or a list of up to 1,000: embedded in one batch, written in one COPY, all or none."""
    _require(request, "add")
    items = payload if isinstance(payload, list) else [payload]
    if not items:
        raise _invalid("", "give at least one document")
    if len(items) > MAX_BATCH:
        raise _invalid("", f"at most {MAX_BATCH} documents per request")
    _check_extra_fields(items)
    ids = [i.external_id for i in items if i.external_id is not None]
    if len(ids) != len(set(ids)):
        raise _invalid("external_id", "the same id twice in one request")
    started = time.perf_counter()
    try:
        created = insert_documents([i.dict() for i in items])
    except ModelStackMissing as exc:
        raise HttpError(501, f"text: {exc}") from exc
    except (IntegrityError, psycopg.errors.UniqueViolation) as exc:
        # PostgreSQL's own detail ("Key (external_id)=(x) already exists."), without its CONTEXT lines.
        cause = exc.__cause__ if isinstance(exc, IntegrityError) else exc
        detail = getattr(getattr(cause, "diag", None), "message_detail", None) or "an id is stored already"
        raise HttpError(409, f"external_id: already stored ({detail})") from exc
    return Status(201, {"ids": created, "took_ms": round((time.perf_counter() - started) * 1000, 3)})


def delete_document(request, doc_id: int):
    _require(request, "delete")
    model = conf.document_model()
    deleted, _ = model._default_manager.filter(pk=doc_id).delete()
    if not deleted:
        raise HttpError(404, f"no document {doc_id}")
    return Status(204, None)


def build_router(async_views: bool | None = None) -> Router:
    """The API's router; ``async_views`` (default ``conf.async_views()``) serves search and similar as
    async views. Operation ids and schemas are the same either way."""
    async_views = conf.async_views() if async_views is None else async_views
    api = Router(tags=["vectorstore"])
    read_auth = [ReadToken()] if conf.get("SEARCH_AUTH") else None  # None: reads open, as the docs show
    add = api.add_api_operation

    def read(path: str, methods: list[str], view: Any, response: dict, **kwargs: Any) -> None:
        if read_auth:
            response = {**response, 401: ErrorOut}
        add(path, methods, view, auth=read_auth, response=response, **kwargs)

    add(
        "/health",
        ["GET"],
        health,
        response={200: HealthOut, 503: HealthOut},
        summary="Database and pgvector status",
    )
    read(
        "/search",
        ["POST"],
        search_documents_async if async_views else search_documents,
        response={200: SearchOutModel, 422: ErrorOut, 503: ErrorOut},
        summary="Semantic, filtered or hybrid search",
        operation_id="vectorstore_api_search_documents",
    )
    read(
        "/documents",
        ["GET"],
        list_documents,
        response={200: PageOutModel, 422: ErrorOut, 503: ErrorOut},
        summary="List documents, filtered and paged",
    )
    read(
        "/documents/{int:doc_id}",
        ["GET"],
        get_document,
        response={200: DocumentOutModel, 404: ErrorOut},
        summary="One document",
    )
    read(
        "/documents/{int:doc_id}/similar",
        ["GET"],
        similar_documents_async if async_views else similar_documents,
        response={200: SearchOutModel, 404: ErrorOut, 422: ErrorOut, 503: ErrorOut},
        summary="Documents nearest to a stored one",
        operation_id="vectorstore_api_similar_documents",
    )
    add(
        "/documents",
        ["POST"],
        create_documents,
        auth=WRITE_AUTH,
        response={201: CreatedOut, 401: ErrorOut, 403: ErrorOut, 409: ErrorOut, 422: ErrorOut, 501: ErrorOut},
        summary="Add documents (embedded server-side, written with COPY)",
    )
    add(
        "/documents/{int:doc_id}",
        ["DELETE"],
        delete_document,
        auth=WRITE_AUTH,
        response={204: None, 401: ErrorOut, 403: ErrorOut, 404: ErrorOut},
        summary="Delete",
    )
    return api


router = build_router()
