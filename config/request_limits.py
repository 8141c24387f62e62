"""Limits every request must meet before a view sees it: body size, and text without null
characters or lone surrogates in the query string and the headers.

- A body larger than ``REQUEST_BODY_MAX_BYTES`` answers 413, decided on ``Content-Length``
  before anything reads the body; an invalid ``Content-Length`` answers 400.
- A chunked body (``Transfer-Encoding: chunked``, no ``Content-Length``) is read here, up
  to the same limit, when the server hands over the whole stream and marks its end
  (``wsgi.input_terminated``, as gunicorn does); the view then sees an ordinary body.
  Other servers (``runserver``) cannot mark it, so such a request answers 411.
- A null character or a lone surrogate in a query parameter or a header answers 400:
  PostgreSQL refuses null characters, so a search for one would otherwise answer 500.
- Under ``/api/``, a query parameter given more than once answers 400: each takes one
  value (as the OpenAPI schema says), and the last one silently winning would hide the
  client's mistake.

Under ``/api/`` and ``/anymail/`` the answers are JSON, keyed by the query parameter's name
(``{"search": [...]}``) or under ``headers`` (``{"headers": {"Authorization": [...]}}``);
elsewhere (the admin) they are plain text.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.handlers.wsgi import LimitedStream
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.utils.translation import gettext as _

from config.parsers import text_problem

API_PATH_PREFIX = "/api/"
JSON_PATH_PREFIXES = (API_PATH_PREFIX, "/anymail/")
_MAX_DIGITS = 18
_READ_SIZE = 64 * 1024


def _wants_json(request: HttpRequest) -> bool:
    return request.path_info.startswith(JSON_PATH_PREFIXES)


def _refusal(request: HttpRequest, status: int, body: dict[str, Any], text: str) -> HttpResponse:
    if _wants_json(request):
        return JsonResponse(body, status=status)
    return HttpResponse(text, status=status, content_type="text/plain; charset=utf-8")


def _too_large(request: HttpRequest, limit: int) -> HttpResponse:
    message = _("The request body is larger than the limit of %(limit)s bytes.") % {"limit": limit}
    return _refusal(request, 413, {"detail": message}, message)


def _read_at_most(stream: Any, limit: int) -> bytes | None:
    """The whole of ``stream``, or ``None`` as soon as it holds more than ``limit`` bytes."""
    buffer = io.BytesIO()
    while True:
        chunk = stream.read(min(_READ_SIZE, limit + 1 - buffer.tell()))
        if not chunk:
            return buffer.getvalue()
        buffer.write(chunk)
        if buffer.tell() > limit:
            return None


class RequestLimitsMiddleware:
    """Refuses a request whose body is too large or whose text cannot be stored; see module."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        refusal = (
            self.body_refusal(request)
            or self.text_refusal(request)
            or self.repeated_query_refusal(request)
        )
        if refusal is not None:
            return refusal
        return self.get_response(request)

    def body_refusal(self, request: HttpRequest) -> HttpResponse | None:
        limit = settings.REQUEST_BODY_MAX_BYTES
        meta = request.META
        if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
            if not meta.get("wsgi.input_terminated"):
                message = _(
                    "A Content-Length header is required: this server cannot read a chunked body."
                )
                return _refusal(request, 411, {"detail": message}, message)
            body = _read_at_most(meta["wsgi.input"], limit)
            if body is None:
                return _too_large(request, limit)
            # Django built the request's stream from Content-Length (absent, so empty):
            # the body read here becomes the stream, and its length the header.
            meta["CONTENT_LENGTH"] = str(len(body))
            request._stream = LimitedStream(io.BytesIO(body), len(body))  # type: ignore[attr-defined]
            return None
        raw = meta.get("CONTENT_LENGTH")
        if not raw:
            return None
        if not (raw.isascii() and raw.isdigit()):
            message = _("A whole number of bytes, 0 or more, is required.")
            return _refusal(
                request,
                400,
                {"headers": {"Content-Length": [message]}},
                _("Bad request: the Content-Length header is invalid."),
            )
        # More digits than any limit has: too large, without converting them all.
        if len(raw.lstrip("0")) > _MAX_DIGITS or int(raw) > limit:
            return _too_large(request, limit)
        return None

    def text_refusal(self, request: HttpRequest) -> HttpResponse | None:
        errors: dict[str, Any] = {}
        for name, values in request.GET.lists():
            if text_problem(name) is not None:
                errors["non_field_errors"] = [
                    _("Query parameter names may not contain null characters or lone surrogates.")
                ]
                continue
            for value in values:
                problem = text_problem(value)
                if problem is not None:
                    errors[name] = [problem]
                    break
        in_query = bool(errors)
        headers: dict[str, Any] = {}
        for name, value in request.headers.items():
            problem = text_problem(value) if isinstance(value, str) else None
            if problem is not None:
                headers[name] = [problem]
        if headers:
            errors["headers"] = headers
        if not errors:
            return None
        if in_query:
            text = _(
                "Bad request: null characters and lone surrogates are not allowed in the "
                "query string."
            )
        else:
            text = _("Bad request: null characters and lone surrogates are not allowed in headers.")
        return _refusal(request, 400, errors, text)

    def repeated_query_refusal(self, request: HttpRequest) -> HttpResponse | None:
        if not request.path_info.startswith(API_PATH_PREFIX):
            return None
        errors = {
            name: [_("Give this parameter once.")]
            for name, values in request.GET.lists()
            if len(values) > 1
        }
        if not errors:
            return None
        return JsonResponse(errors, status=400)
