"""Request scopes: the deadline and cancellation of everything one request asks the scheduler for.

A server wraps each request in ``with request_scope(RequestScope(timeout)):``; every
:class:`~anygen.generation.scheduler.Job` submitted inside (from any pipeline call) joins the scope, so cancelling
it (the client disconnected) frees all of the request's rows at the next step, and a passed deadline ends them with
:class:`RequestTimeout`. The scope travels in a :mod:`contextvars` variable: it follows the code into the worker
thread that sets it, and no pipeline signature needs to know about it.
"""

from __future__ import annotations

import contextvars
import threading
import time
from typing import TYPE_CHECKING

from anygen.errors import GenerationError

if TYPE_CHECKING:
    from anygen.generation.scheduler import Job

__all__ = ["RequestScope", "request_scope", "current_scope", "RequestTimeout", "RequestCancelled"]


class RequestTimeout(GenerationError):
    """The request did not finish within its time limit (HTTP 504)."""


class RequestCancelled(GenerationError):
    """The caller went away; its rows were freed."""


class RequestScope:
    """The jobs one request submitted, its deadline and whether it was cancelled (e.g. its client disconnected)."""

    def __init__(self, timeout: float | None = None) -> None:
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.jobs: list[Job] = []  # appended by the scheduler as they are submitted
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Free the rows of every job of this request at the next step boundary; later submissions fail."""
        self._cancelled.set()

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() > self.deadline


_SCOPE: contextvars.ContextVar[RequestScope | None] = contextvars.ContextVar("anygen_request_scope", default=None)


class request_scope:  # noqa: N801 -- used as a context manager, like contextlib's
    """``with request_scope(scope):`` attaches every job submitted in this thread (or task) to ``scope``."""

    def __init__(self, scope: RequestScope) -> None:
        self.scope, self._token = scope, None

    def __enter__(self) -> RequestScope:
        self._token = _SCOPE.set(self.scope)
        return self.scope

    def __exit__(self, *exc: object) -> None:
        _SCOPE.reset(self._token)


def current_scope() -> RequestScope | None:
    """The scope of the ``with request_scope(...)`` block this code runs in, if any."""
    return _SCOPE.get()
