"""Reads on streaming replicas, writes on the primary: a database router and its middleware (opt-in).

    DATABASES = {"default": ..., "replica1": {..., "TEST": {"MIRROR": "default"}}}
    DATABASE_ROUTERS = ["vectorstore.replicas.routers.ReplicaRouter"]
    MIDDLEWARE = [..., "vectorstore.replicas.routers.ReplicaMiddleware"]  # after the session middleware
    VECTORSTORE = {..., "REPLICAS": ["replica1"]}

What goes where:

- Reads of document models (``AbstractDocument`` subclasses: search, list, get, similar, the admin's
  lists) go to a healthy replica inside a request with a safe method (GET, HEAD, OPTIONS) and in views
  marked :func:`replica_reads` (``POST /api/search``). One replica per request, so its reads agree.
- Everything else goes to the primary: writes, migrations (``allow_migrate`` refuses replicas), every
  read in a request that writes (an edit reads what it changes from the primary), and every read
  outside a request: management commands, loads, tuning and the shell read what they write.
- **Read-your-writes, by WAL position:** after a request from a client (a bearer token, else a session)
  that may have written (a method that is not safe, answered below 400), the middleware records the
  primary's WAL insert position (``vectorstore_writemark``). That client's later reads use a replica
  only once its ``pg_last_wal_replay_lsn()`` has reached the position; until then, the primary. Not a
  fixed pin time: a time long enough for the worst lag keeps reads off the replicas for every client
  that writes, one too short serves a stale read when the replica lags, while the position is exact
  and usually reached within a millisecond. It costs one primary query per read of a client that sent
  credentials; anonymous reads cost nothing.
- A replica that cannot be reached, is not in recovery, or lags more than ``REPLICA_MAX_LAG`` seconds
  is skipped for ``REPLICA_SKIP_SECONDS``; a read that fails on a replica (it went down mid-request, a
  recovery conflict cancelled it) is run again on the primary, once. No request fails because a
  replica is gone.
- The response says which database answered reads: ``X-Vectorstore-Database`` (and search
  responses' ``database`` field); where the primary answered a read a replica could have taken,
  ``X-Vectorstore-Read-Reason`` says why (read-your-writes, lag, unreachable, a failure, a write).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import inspect
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, HttpResponse

from vectorstore import replicas
from vectorstore.models import AbstractDocument, ApiToken

logger = logging.getLogger(__name__)

PRIMARY = "default"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
HEADER = "X-Vectorstore-Database"
REASON_HEADER = "X-Vectorstore-Read-Reason"


@dataclass
class ReadState:
    """How one request (or one :func:`replica_reads` block) reads."""

    replica_reads: bool
    client: str | None = None  # the read-your-writes key
    alias: str | None = None  # the database its document reads went to, once chosen
    failed_over: bool = False
    read_only: bool = False  # a view marked replica_reads: no write to record
    reason: str | None = None  # why the primary answered reads, where it did

    def read_alias(self) -> str:
        if not self.replica_reads:
            if self.alias is None:
                self.reason = "a request that writes reads the primary"
            return PRIMARY
        if self.alias is None:
            min_lsn = replicas.written_lsn(self.client) if self.client else None
            alias, self.reason = replicas.pick(min_lsn)
            self.alias = alias or PRIMARY
        return self.alias


_state: contextvars.ContextVar[ReadState | None] = contextvars.ContextVar("vectorstore_reads", default=None)


def client_key(request: HttpRequest, after: bool = False) -> str | None:
    """The read-your-writes key of the request's client: its bearer token, else its session.

    ``after``: the session as the response left it (a login starts a new one)."""
    auth = request.headers.get("Authorization", "")
    scheme, _, token = auth.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "t:" + ApiToken.digest(token.strip())
    session = getattr(request, "session", None)
    key = session.session_key if (after and session is not None) else None
    key = key or request.COOKIES.get(settings.SESSION_COOKIE_NAME)
    return "s:" + ApiToken.digest(key) if key else None


class ReplicaRouter:
    """Document reads to the request's replica (see the module's docstring); the rest to the primary."""

    def db_for_read(self, model: type, **hints: Any) -> str | None:
        if not replicas.configured() or not issubclass(model, AbstractDocument):
            return None
        state = _state.get()
        return state.read_alias() if state is not None else PRIMARY

    def db_for_write(self, model: type, **hints: Any) -> str | None:
        # Said outright: left to Django, a document read from a replica would be saved back to it.
        if replicas.configured() and issubclass(model, AbstractDocument):
            return PRIMARY
        return None

    def allow_relation(self, obj1: Any, obj2: Any, **hints: Any) -> bool | None:
        # A replica holds the primary's rows byte for byte: objects read from either relate.
        pool = {PRIMARY, *replicas.configured()}
        if obj1._state.db in pool and obj2._state.db in pool:
            return True
        return None

    def allow_migrate(
        self, db: str, app_label: str, model_name: str | None = None, **hints: Any
    ) -> bool | None:
        # A replica replays the primary's migrations; it cannot run its own.
        return False if db in replicas.configured() else None


def _fail_over(state: ReadState, exc: BaseException) -> bool:
    """After a read failed: True (and reads now on the primary) when it had gone to a replica."""
    if state.alias in (None, PRIMARY) or state.failed_over:
        return False
    replicas.failed(state.alias, exc)
    state.reason = f"failed over ({state.alias}: {replicas.first_line(exc)})"
    state.alias = PRIMARY
    state.failed_over = True
    return True


@contextlib.contextmanager
def _reading(replica_reads: bool, client: str | None, read_only: bool = False) -> Iterator[ReadState]:
    outer = _state.get()
    if outer is not None:
        # Inside a request: this block may read from a replica too, with the request's client (and a
        # request that ran a read-only view has no write to record).
        saved = outer.replica_reads
        outer.replica_reads = replica_reads
        outer.read_only = read_only or outer.read_only
        try:
            yield outer
        finally:
            outer.replica_reads = saved
        return
    state = ReadState(replica_reads=replica_reads, client=client, read_only=read_only)
    token = _state.set(state)
    try:
        yield state
    finally:
        _state.reset(token)


def replica_reads(view: Callable[..., Any]) -> Callable[..., Any]:
    """Mark a view that only reads (whatever its method: ``POST /api/search``): its document reads may go
    to a replica, and if one fails there the view runs again with reads on the primary."""

    if inspect.iscoroutinefunction(view):
        return _areplica_reads(view)

    @functools.wraps(view)
    def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if not replicas.configured():
            return view(request, *args, **kwargs)
        with _reading(True, client_key(request), read_only=True) as state:
            try:
                return view(request, *args, **kwargs)
            except replicas.LOST as exc:
                if not _fail_over(state, exc):
                    raise
            return view(request, *args, **kwargs)

    # The view's own signature, its annotations resolved where it was written: django-ninja reads the
    # request's parameters from it (string annotations would be looked up in this module).
    wrapper.__signature__ = inspect.signature(view, eval_str=True)  # type: ignore[attr-defined]
    return wrapper


def _areplica_reads(view: Callable[..., Any]) -> Callable[..., Any]:
    """``replica_reads`` for an async view (the same routing; the failed replica's Django connection is
    closed on Django's sync thread, where it lives)."""

    @functools.wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> Any:
        if not replicas.configured():
            return await view(request, *args, **kwargs)
        with _reading(True, client_key(request), read_only=True) as state:
            try:
                return await view(request, *args, **kwargs)
            except replicas.LOST as exc:
                if not await sync_to_async(_fail_over)(state, exc):
                    raise
            return await view(request, *args, **kwargs)

    wrapper.__signature__ = inspect.signature(view, eval_str=True)  # type: ignore[attr-defined]
    return wrapper


@contextlib.contextmanager
def reading_from_replicas(client: str | None = None) -> Iterator[None]:
    """Let the document reads inside go to a replica outside a request (a script, a worker): the caller
    accepts REPLICA_MAX_LAG of staleness, or passes the ``client`` whose writes it must see."""
    with _reading(True, client):
        yield


class ReplicaMiddleware:
    """Sets up each request's reads for ReplicaRouter, records writes for read-your-writes, says which
    database answered, and runs a safe request again on the primary when its replica failed."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if not replicas.configured():
            return self.get_response(request)
        safe = request.method in SAFE_METHODS
        with _reading(safe, client_key(request)) as state:
            response = self.get_response(request)
        if state.alias is not None:
            response[HEADER] = state.alias
        if state.alias == PRIMARY and state.reason:
            response[REASON_HEADER] = state.reason
        if not safe and not state.read_only and response.status_code < 400:
            client = client_key(request, after=True)
            if client:
                try:
                    replicas.mark_write(client)
                except replicas.UNAVAILABLE:
                    # The write is stored; only its mark is not. Say so rather than answer 500.
                    logger.warning("read-your-writes: could not record a write's WAL position", exc_info=True)
        return response

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        state = _state.get()
        if (
            state is None
            or request.method not in SAFE_METHODS
            or not isinstance(exception, replicas.LOST)
            or not _fail_over(state, exception)
        ):
            return None
        # A safe request may run twice: again, with its reads on the primary.
        match = request.resolver_match
        if match is None:
            return None
        return match.func(request, *match.args, **match.kwargs)
