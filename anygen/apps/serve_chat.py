"""Chat completions for ``anygen serve``: an OpenAI request becomes one pipeline stream; its events become the
answer's content parts, or server-sent events as they come."""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from anygen.apps.serve_http import error_response
from anygen.apps.serve_io import bad_request, message_segments, prompt_chars, segment_part
from anygen.apps.serve_schemas import ChatCompletionRequest
from anygen.generation.request_scope import RequestScope, request_scope
from anygen.generation.sampling import SamplingParams
from anygen.generation.streaming import MediaProgress, RowDone, SegmentDone, TextDelta
from anygen.types import AudioSegment, TextSegment

if TYPE_CHECKING:
    from anygen.apps.serve import Server

log = logging.getLogger(__name__)
_END = object()
POLL_SECONDS = 0.1  # how often a waiting request checks whether its client is still there


@dataclass
class ChatPlan:
    """One chat completion request turned into a pipeline stream call."""

    conversation: list[dict[str, Any]]
    max_new_tokens: int
    sampling: dict[str, SamplingParams]
    output_modalities: list[str]
    stop: list[str]


def chat_plan(server: Server, body: ChatCompletionRequest) -> ChatPlan:
    server.check_model(body.model)
    limits = server.limits
    conversation = []
    for i, message in enumerate(body.messages):
        segments = message_segments(message.content, f"messages[{i}].content", limits)
        conversation.append({"role": "system" if message.role == "developer" else message.role, "content": segments})
    chars = sum(prompt_chars(m["content"]) for m in conversation)
    if chars > limits.max_prompt_chars:
        raise bad_request(f"messages hold {chars} characters of text; the limit is {limits.max_prompt_chars}",
                          "messages", "prompt_too_long")
    name = "max_completion_tokens" if body.max_completion_tokens is not None else "max_tokens"
    max_new = body.max_completion_tokens or body.max_tokens or min(256, limits.max_tokens)
    if max_new > limits.max_tokens:
        raise bad_request(f"{name}={max_new} is more than this server generates ({limits.max_tokens})", name)
    media = server.pipe.model.vocab.modality_names[1:]
    wanted = body.modalities if body.modalities is not None else ["text", *media]
    missing = [m for m in wanted if m != "text" and m not in media]
    if missing:
        raise bad_request(f"modalities={wanted}: this model cannot generate {missing}", "modalities")
    params = SamplingParams(do_sample=False) if body.temperature == 0 else SamplingParams(
        body.temperature, body.top_k, body.top_p)
    return ChatPlan(conversation, max_new, {m: params for m in server.pipe.model.vocab.modality_names},
                    [m for m in wanted if m != "text"], body.stop or [])


class EventPump:
    """Runs one streaming pipeline call in a worker thread and hands its events to the event loop."""

    def __init__(self, server: Server, start: Callable[[], Any]) -> None:
        self.scope = RequestScope(server.limits.request_timeout)
        self.queue: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        loop.run_in_executor(server.executor, self._run, loop, start)

    def _run(self, loop: asyncio.AbstractEventLoop, start: Callable[[], Any]) -> None:
        put = lambda item: loop.call_soon_threadsafe(self.queue.put_nowait, item)  # noqa: E731
        try:
            with request_scope(self.scope):
                for event in start():
                    put(event)
        except BaseException as err:  # noqa: BLE001 -- handed to the request, which answers it
            put(err)
        finally:
            put(_END)

    async def events(self, request: Any) -> AsyncIterator[Any]:
        """The events; stops (and cancels the generation) when the client disconnects or the consumer stops."""
        try:
            while True:
                try:
                    item = await asyncio.wait_for(self.queue.get(), POLL_SECONDS)
                except asyncio.TimeoutError:
                    if await request.is_disconnected():
                        return
                    continue
                if item is _END:
                    return
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.scope.cancel()


@dataclass
class Answer:
    """The assistant's answer as it streams: content parts, finish reason, token counts.

    With ``stop`` strings the answer ends before the first of them its text holds (``stopped`` turns true; the
    caller cancels the generation). Text that may still begin one is held back until more text tells; a media part
    or the end releases it."""

    stop: list[str] = field(default_factory=list)
    parts: list[dict[str, Any]] = field(default_factory=list)
    finish_reason: str = "length"
    stopped: bool = False
    held: str = ""

    def add(self, event: Any) -> list[dict[str, Any]]:
        """Record one event; returns the chunk deltas it adds (none once stopped)."""
        if self.stopped:
            return []
        if isinstance(event, TextDelta):
            return self._text(event.text, final=False)
        if isinstance(event, SegmentDone) and not isinstance(event.segment, TextSegment):
            deltas = self.flush()
            part = segment_part(event.segment)
            self.parts.append(part)
            delta: dict[str, Any] = {"content": [part]}
            if isinstance(event.segment, AudioSegment):
                delta["audio"] = audio_field(part)
            return [*deltas, delta]
        if isinstance(event, RowDone):
            self.finish_reason = "stop" if event.finished else "length"
        return []

    def flush(self) -> list[dict[str, Any]]:
        """Release held-back text (at a media part or the end of the answer)."""
        return self._text("", final=True) if self.held else []

    def _text(self, text: str, final: bool) -> list[dict[str, Any]]:
        pending = self.held + text
        cut = min((i for i in (pending.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            pending, self.stopped, self.finish_reason = pending[:cut], True, "stop"
            keep = 0
        else:  # the longest tail that may begin a stop string waits for more text
            keep = 0 if final else max((k for s in self.stop for k in range(1, len(s))
                                        if pending.endswith(s[:k])), default=0)
        shown, self.held = pending[: len(pending) - keep], pending[len(pending) - keep:]
        if not shown:
            return []
        if self.parts and self.parts[-1]["type"] == "text":
            self.parts[-1]["text"] += shown
        else:
            self.parts.append({"type": "text", "text": shown})
        return [{"content": shown}]

    def message(self) -> dict[str, Any]:
        if all(p["type"] == "text" for p in self.parts):
            content: Any = "".join(p["text"] for p in self.parts)
        else:
            content = self.parts
        audio = next((audio_field(p) for p in self.parts if p["type"] == "input_audio"), None)
        return {"role": "assistant", "content": content, "audio": audio}


def audio_field(part: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's ``message.audio`` for an audio part."""
    return {"id": f"audio_{uuid.uuid4().hex}", "data": part["input_audio"]["data"],
            "expires_at": int(time.time()) + 3600, "transcript": ""}


def usage(scope: RequestScope) -> dict[str, int]:
    prompt = sum(len(job.prompts[0]) for job in scope.jobs)
    completion = sum(job.generated[0] for job in scope.jobs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def sse(server: Server, head: dict, first: Any, events: AsyncIterator[Any], scope: RequestScope,
               include_usage: bool, answer: Answer) -> AsyncIterator[str]:
    """Server-sent events: a role chunk, a chunk per text delta or finished media part, the finish, [DONE]."""
    def chunk(delta: dict, finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [choice]}) + "\n\n"

    try:
        yield chunk({"role": "assistant", "content": ""})
        pending = [] if first is None else [first]
        async for event in chain(pending, events):
            deltas = answer.add(event)
            for delta in deltas:
                yield chunk(delta)
            if answer.stopped:
                scope.cancel()  # frees the row now
                break
            if not deltas and isinstance(event, MediaProgress):
                yield ": progress\n\n"  # a comment line: keeps the connection checked while a media span grows
        for delta in answer.flush():
            yield chunk(delta)
        yield chunk({}, answer.finish_reason)
        if include_usage:
            yield "data: " + json.dumps({**head, "object": "chat.completion.chunk", "choices": [],
                                         "usage": usage(scope)}) + "\n\n"
        yield "data: [DONE]\n\n"
    except Exception as err:  # noqa: BLE001 -- after the first byte the status is sent: report in the stream
        status, body = error_response(err)
        log.info("stream ended with %s: %s", status, body["error"]["message"])
        yield "data: " + json.dumps(body) + "\n\n"
    finally:
        scope.cancel()
        server.leave()


async def chain(first: list[Any], rest: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``first``'s items, then ``rest``'s."""
    for item in first:
        yield item
    async for item in rest:
        yield item
