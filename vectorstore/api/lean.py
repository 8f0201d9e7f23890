"""The read path outside Django's request cycle: ``POST <prefix>search`` and ``GET
<prefix>documents/<id>/similar`` answered by a WSGI callable in front of the site's application, which
hands every other request to it unchanged.

A search paid more to Django's handler, its middleware and django-ninja's parameter resolution than to
PostgreSQL (benchmarks/README.md, issue 37). Here a request costs what the answer needs: the body
parsed by orjson and checked by the ``SearchIn`` schema's compiled validator (pydantic-core, the one
ninja itself runs), the same service (``search()``, ``similar()``), the rows rendered by orjson. The
answers are the route's own, byte for byte but for JSON whitespace: the same fields, the same
``X-Vectorstore-Database`` and replica choice (read-your-writes included), the security headers the
site's middleware adds (``SecurityMiddleware``, ``XFrameOptionsMiddleware``), and 503 with Retry-After on a
timeout (logged as Django logs it). Anything else (a body the schema refuses, a 422 of the search, a
missing document, 501 without the model stack, a replica that failed, an unexpected error) goes to Django
with the body it read, and Django answers it as it always did: so every error is the route's own.

What it skips: the site's middleware (sessions, CSRF, CORS, tracing, custom headers) for these two
answers; Django's ``request_started`` and ``request_finished`` signals are sent as the handler sends
them (connections are closed or kept as ``CONN_MAX_AGE`` says). ``VECTORSTORE["LEAN_READS"] = False``
turns it off without a deploy of code. Written by hand: no library answers selected routes of a
django-ninja API outside Django.
"""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Callable, Iterable
from urllib.parse import parse_qs

import orjson
from django.conf import settings
from django.core import signals
from django.http import Http404

from vectorstore import conf, search
from vectorstore.api import SearchIn, _json_default, _search_arguments, reader_for, search_body
from vectorstore.replicas import routers

_request_log = logging.getLogger("django.request")  # where Django's handler logs a 5xx

_REASONS = {200: "200 OK", 503: "503 Service Unavailable"}


class _HandBack(Exception):
    """This request is Django's to answer (an error it answers its own way)."""


def _static_headers() -> list[tuple[str, str]]:
    """The headers the site's middleware adds to every answer of these routes, as it would."""
    out = []
    middleware = set(settings.MIDDLEWARE)
    if "django.middleware.security.SecurityMiddleware" in middleware:
        if getattr(settings, "SECURE_CONTENT_TYPE_NOSNIFF", True):
            out.append(("X-Content-Type-Options", "nosniff"))
        policy = getattr(settings, "SECURE_REFERRER_POLICY", "same-origin")
        if policy:
            value = policy if isinstance(policy, str) else ",".join(policy)
            out.append(("Referrer-Policy", ",".join(v.strip() for v in value.split(","))))
        opener = getattr(settings, "SECURE_CROSS_ORIGIN_OPENER_POLICY", "same-origin")
        if opener:
            out.append(("Cross-Origin-Opener-Policy", opener))
    if "django.middleware.clickjacking.XFrameOptionsMiddleware" in middleware:
        out.append(("X-Frame-Options", getattr(settings, "X_FRAME_OPTIONS", "DENY").upper()))
    return out


def _render(result: search.SearchResult) -> bytes:
    # Dates and times through the route's own default, so they read the same (microseconds, Z).
    return orjson.dumps(search_body(result), default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME)


class LeanReads:
    """WSGI: the read endpoints answered here, everything else by ``application`` (see the module)."""

    def __init__(self, application: Callable, prefix: str = "/api/") -> None:
        self.application = application
        self.prefix = prefix
        self.search_path = f"{prefix}search"
        self.similar_path = re.compile(rf"{re.escape(prefix)}documents/(?P<id>[0-9]+)/similar")
        self._headers: list[tuple[str, str]] | None = None

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD")
        if method == "POST" and path == self.search_path:
            answer = self._search
        elif method == "GET" and (found := self.similar_path.fullmatch(path)) is not None:
            doc_id = int(found["id"])

            def answer(environ: dict, body: bytes) -> tuple[int, list, bytes]:
                return self._similar(environ, doc_id)
        else:
            return self.application(environ, start_response)
        if not conf.get("LEAN_READS"):
            return self.application(environ, start_response)
        body = b""
        if method == "POST":
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:
                return self.application(environ, start_response)
            limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            if limit is not None and length > limit:
                return self.application(environ, start_response)  # Django's 400, before reading it
            body = environ["wsgi.input"].read(length)
        signals.request_started.send(sender=self.__class__, environ=environ)
        try:
            status, headers, payload = self._answered(answer, environ, body)
        except _HandBack:
            payload = None
        finally:
            signals.request_finished.send(sender=self.__class__)
        if payload is None:  # Django answers it, from the same body
            environ["wsgi.input"] = io.BytesIO(body)
            environ["CONTENT_LENGTH"] = str(len(body))
            return self.application(environ, start_response)
        if self._headers is None:
            self._headers = _static_headers()
        start_response(
            _REASONS[status],
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(payload))),
                *headers,
                *self._headers,
            ],
        )
        return [payload]

    def _answered(self, answer: Callable, environ: dict, body: bytes) -> tuple[int, list, bytes]:
        """The answer, with the replica choice the route's decorator and middleware make."""
        if conf.get("SEARCH_AUTH"):
            scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() != "bearer" or reader_for(token.strip()) is None:
                raise _HandBack  # the route's 401
        if not routers.replicas.configured():
            return self._errors(answer, environ, body)
        with routers._reading(True, _client_key(environ), read_only=True) as state:
            try:
                status, headers, payload = self._errors(answer, environ, body)
            except routers.replicas.LOST as exc:
                raise _HandBack from exc  # Django's path fails over to the primary, as it does
        headers = [h for h in headers if h[0] != routers.HEADER]
        if state.alias is not None:
            headers.append((routers.HEADER, state.alias))
        if state.alias == routers.PRIMARY and state.reason:
            headers.append((routers.REASON_HEADER, state.reason))
        return status, headers, payload

    def _errors(self, answer: Callable, environ: dict, body: bytes) -> tuple[int, list, bytes]:
        try:
            return answer(environ, body)
        except search.SearchTimeout as exc:  # answered here: Django's path would run the search again
            _request_log.error(
                "Service Unavailable: %s", environ.get("PATH_INFO"), extra={"status_code": 503}
            )
            payload = orjson.dumps({"detail": str(exc)})
            return 503, [("Retry-After", str(exc.retry_after))], payload
        except (_HandBack, *routers.replicas.LOST):
            raise
        except Exception as exc:  # a 422, a 404 or a 500: Django's to answer, its own way
            raise _HandBack from exc

    def _search(self, environ: dict, body: bytes) -> tuple[int, list, bytes]:
        if not environ.get("CONTENT_TYPE", "").startswith("application/json"):
            raise _HandBack
        try:
            payload = SearchIn.model_validate(orjson.loads(body))
        except Exception as exc:  # malformed JSON, or a field the schema refuses: the route's 4xx
            raise _HandBack from exc
        result = search.search(**_search_arguments(payload))
        return 200, [(routers.HEADER, result.database)], _render(result)

    def _similar(self, environ: dict, doc_id: int) -> tuple[int, list, bytes]:
        query = parse_qs(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        k = query.get("k", ["10"])
        if len(k) != 1 or not k[0].isdigit():
            raise _HandBack  # the route's 422 for a k that is no integer
        model = conf.document_model()
        document = model._default_manager.filter(pk=doc_id).first()
        if document is None:
            raise Http404
        result = search.similar(document, k=int(k[0]))
        return 200, [(routers.HEADER, result.database)], _render(result)


def _client_key(environ: dict) -> str | None:
    """``routers.client_key`` of a request not made: its bearer token, else its session cookie."""
    from http.cookies import SimpleCookie

    from vectorstore.models import ApiToken

    scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return "t:" + ApiToken.digest(token.strip())
    cookies = SimpleCookie()
    try:
        cookies.load(environ.get("HTTP_COOKIE", ""))
    except Exception:  # a cookie header Django would ignore too (CookieError, and worse)
        return None
    found = cookies.get(settings.SESSION_COOKIE_NAME)
    return "s:" + ApiToken.digest(found.value) if found and found.value else None


def lean_reads(application: Callable, prefix: str = "/api/") -> LeanReads:
    """A site's WSGI application with the read endpoints of the API mounted at ``prefix`` answered outside
    Django's request cycle: ``application = lean_reads(get_wsgi_application())`` in ``wsgi.py``."""
    return LeanReads(application, prefix)
