"""The HTTP plumbing of ``anygen serve``: a request-body limit and OpenAI-shaped errors for every failure.

Every error is ``{"error": {"message", "type", "param", "code"}}``: 4xx for the client's mistakes, naming the field
(``param``) where there is one; 5xx only for the server's own state (503 busy, 504 timeout, 500 a failed
generation). Messages are one line, with no tracebacks and no server paths.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

from pydantic import ValidationError

from anygen.apps.serve_io import ApiError
from anygen.errors import AnygenError, GenerationError, InvalidArgumentError, MediaError
from anygen.generation.scheduler import RequestCancelled, RequestTimeout, SchedulerBusy

log = logging.getLogger(__name__)

# Argument names the pipeline tasks use in their messages -> the API fields they come from.
PIPELINE_FIELDS = {"num_images_per_prompt": "n", "height": "size", "width": "size", "max_new_tokens": "max_tokens",
                   "text": "input", "instruction": "prompt", "max_seconds": "max_seconds", "prompt": "prompt",
                   "temperature": "temperature", "top_k": "top_k", "top_p": "top_p", "image": "image",
                   "guidance_scale": "guidance_scale", "image_guidance_scale": "image_guidance_scale",
                   "messages": "messages", "audio": "file"}


def error_response(err: BaseException) -> tuple[int, dict[str, Any]]:
    """The status and OpenAI error body for any exception a request can end with."""
    if isinstance(err, ApiError):
        return err.status, err.body()
    if isinstance(err, (InvalidArgumentError, MediaError)):
        return 400, _body(str(err), "invalid_request_error", _pipeline_param(str(err)), "invalid_value")
    if isinstance(err, SchedulerBusy):
        return 503, _body(str(err), "server_error", None, "server_busy")
    if isinstance(err, RequestTimeout):
        return 504, _body(str(err), "server_error", None, "timeout")
    if isinstance(err, RequestCancelled):
        return 499, _body(str(err), "invalid_request_error", None, "cancelled")
    if isinstance(err, (GenerationError, AnygenError)):
        return 500, _body(_one_line(str(err)), "server_error", None, "generation_failed")
    log.exception("internal error", exc_info=err)
    return 500, _body("internal server error", "server_error", None, "internal_error")


def _body(message: str, kind: str, param: str | None, code: str | None) -> dict[str, Any]:
    return {"error": {"message": _one_line(message), "type": kind, "param": param, "code": code}}


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _pipeline_param(message: str) -> str | None:
    match = re.match(r"\W*(\w+)", message)
    return PIPELINE_FIELDS.get(match[1]) if match else None


def pydantic_param(err: ValidationError) -> tuple[str, str]:
    """The field a validation error is about (``messages[0].content[1].type``) and a one-line message."""
    errors = sorted(err.errors(), key=lambda e: -len(e["loc"]))  # the deepest is the most specific
    first = errors[0]
    parts: list[str] = []
    for item in first["loc"]:
        if isinstance(item, int):
            parts[-1:] = [f"{parts[-1]}[{item}]"] if parts else [f"[{item}]"]
        elif not _is_type_tag(item):
            parts.append(item)
    param = ".".join(parts) or "body"
    value = first.get("input")
    shown = "" if first["type"] == "missing" else f" (got {json.dumps(value, default=str)[:80]})"
    return param, f"{param}: {first['msg']}{shown}"


def _is_type_tag(item: str) -> bool:
    """pydantic names union branches in ``loc`` (``str``, ``list[ContentPart]``); they are not fields."""
    return "[" in item or item in {"str", "int", "float", "bool", "dict", "list", "none"} or item[:1].isupper()


def install_error_handlers(app: Any) -> None:
    """Every exception, unknown route and method as an OpenAI error."""
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException

    async def on_error(_request: Any, err: Exception) -> JSONResponse:
        status, body = error_response(err)
        headers = {"Retry-After": "1"} if status == 503 else None
        return JSONResponse(body, status_code=status, headers=headers)

    async def on_http(_request: Any, err: HTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        return JSONResponse(_body(str(err.detail), "invalid_request_error", None, code), status_code=err.status_code)

    app.add_exception_handler(Exception, on_error)
    app.add_exception_handler(ApiError, on_error)
    app.add_exception_handler(AnygenError, on_error)
    app.add_exception_handler(HTTPException, on_http)


DRAIN_BYTES = 256 * 2**20  # read (and drop) at most this much of a refused body, so that the client sees the 413


class BodyLimit:
    """ASGI middleware: reads a request's body up to ``max_bytes`` before the app sees it; beyond that the answer
    is 413 and the app never runs. The rest of a refused body is read and dropped first (up to ``DRAIN_BYTES``):
    a server that answers while the client is still sending resets the connection, and the client sees no answer."""

    def __init__(self, app: Any, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._drain(receive, more=True)
            await self._too_large(send)
            return
        body, more = bytearray(), True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > self.max_bytes:
                await self._drain(receive, more)
                await self._too_large(send)
                return
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: the disconnect, whenever it comes

        await self.app(scope, replay, send)

    @staticmethod
    async def _drain(receive: Any, more: bool) -> None:
        dropped = 0
        while more and dropped < DRAIN_BYTES:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            dropped += len(message.get("body", b""))
            more = message.get("more_body", False)

    async def _too_large(self, send: Any) -> None:
        payload = json.dumps(_body(f"the request body is larger than this server accepts ({self.max_bytes} bytes)",
                                   "invalid_request_error", None, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": payload})
