"""Request and correlation ids: one usage event followed from HTTP to the provider's message.

Every request gets an ``X-Request-Id`` and an ``X-Correlation-Id``: the caller's, when they
are at most 128 characters of letters, digits and ``._:@/+=-``, else fresh ones (uuid4
hex). Both are echoed in the response, shown in every log line written while the request
is served (``RequestIdLogFilter``), carried by the Celery tasks it enqueues (message headers,
restored in the worker), and stored on the usage events and notifications it creates.

They live in context variables: the middleware sets them for one request, a task's
``task_prerun`` for one task; outside both they are empty.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from django.http import HttpRequest, HttpResponse

REQUEST_ID_HEADER = "X-Request-Id"
CORRELATION_ID_HEADER = "X-Correlation-Id"
# Names of the Celery message headers. Celery's own ``correlation_id`` is the task id.
TASK_REQUEST_ID = "x_request_id"
TASK_CORRELATION_ID = "x_correlation_id"
MAX_LENGTH = 128

_SAFE = re.compile(rf"[A-Za-z0-9._:@/+=-]{{1,{MAX_LENGTH}}}")
_request_id: ContextVar[str] = ContextVar("request_id", default="")
_correlation_id: ContextVar[str] = ContextVar("correlation_id", default="")


def current_request_id() -> str:
    """The request id of the request or task being served; ``""`` outside both."""
    return _request_id.get()


def current_correlation_id() -> str:
    """The correlation id of the request or task being served; ``""`` outside both."""
    return _correlation_id.get()


def id_or_new(value: str | None) -> str:
    """``value`` when it is a safe id, else a fresh one (a header is echoed and logged as is)."""
    if value and _SAFE.fullmatch(value):
        return value
    return uuid.uuid4().hex


@contextmanager
def ids_bound(request_id: str, correlation_id: str) -> Iterator[None]:
    """Make these the current ids for the duration of the block."""
    request_token = _request_id.set(request_id)
    correlation_token = _correlation_id.set(correlation_id)
    try:
        yield
    finally:
        _request_id.reset(request_token)
        _correlation_id.reset(correlation_token)


class RequestIdMiddleware:
    """Takes or makes the request's ids, binds them while it is served, and echoes them.

    First in ``MIDDLEWARE``, so that the log lines of every other middleware carry them.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        request_id = id_or_new(request.headers.get(REQUEST_ID_HEADER))
        correlation_id = id_or_new(request.headers.get(CORRELATION_ID_HEADER))
        request.request_id = request_id  # type: ignore[attr-defined]
        request.correlation_id = correlation_id  # type: ignore[attr-defined]
        with ids_bound(request_id, correlation_id):
            response = self.get_response(request)
        response[REQUEST_ID_HEADER] = request_id
        response[CORRELATION_ID_HEADER] = correlation_id
        return response


class RequestIdLogFilter(logging.Filter):
    """Adds ``request_id`` and ``correlation_id`` to every record (``-`` when there is none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = current_request_id() or "-"
        if not hasattr(record, "correlation_id"):
            record.correlation_id = current_correlation_id() or "-"
        return True


# --- Celery (connected in config/celery_app.py) ---


def task_headers_add(headers: dict[str, Any] | None = None, **kwargs: Any) -> None:
    """``before_task_publish``: a task enqueued while serving a request carries its ids."""
    if headers is None:
        return
    request_id, correlation_id = current_request_id(), current_correlation_id()
    if request_id:
        headers.setdefault(TASK_REQUEST_ID, request_id)
    if correlation_id:
        headers.setdefault(TASK_CORRELATION_ID, correlation_id)


def _task_header(task: Any, name: str) -> str:
    # A worker puts unknown message headers on the request; an eager ``apply(headers=...)``
    # keeps them in ``request.headers``.
    value = getattr(task.request, name, None) or (task.request.headers or {}).get(name)
    return value if isinstance(value, str) else ""


def task_ids_restore(task: Any = None, **kwargs: Any) -> None:
    """``task_prerun``: the task's ids become the current ones until ``task_postrun``.

    A task run eagerly inside a request without ids of its own keeps the request's.
    """
    if task is None:
        return
    request_id = _task_header(task, TASK_REQUEST_ID)
    correlation_id = _task_header(task, TASK_CORRELATION_ID)
    if task.request.is_eager:
        request_id = request_id or current_request_id()
        correlation_id = correlation_id or current_correlation_id()
    task.request.request_ids_tokens = (
        _request_id.set(request_id),
        _correlation_id.set(correlation_id),
    )


def task_ids_clear(task: Any = None, **kwargs: Any) -> None:
    """``task_postrun``: back to the ids current before the task ran."""
    tokens = getattr(getattr(task, "request", None), "request_ids_tokens", None)
    if tokens is None:
        return
    _request_id.reset(tokens[0])
    _correlation_id.reset(tokens[1])
    task.request.request_ids_tokens = None
