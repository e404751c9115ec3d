"""``anygen serve``: an OpenAI-compatible HTTP server whose requests share one continuous decode batch.

    anygen serve --model anygen-tiny --host 127.0.0.1 --port 8000

Endpoints: ``/v1/models``, ``/v1/chat/completions`` (text, image and audio parts in and out; ``stream: true`` as
server-sent events), ``/v1/images/generations``, ``/v1/images/edits``, ``/v1/audio/speech``,
``/v1/audio/transcriptions``. Every endpoint runs a pipeline task (:class:`~anygen.pipelines.AnyGenPipeline`) whose
sampler is a :class:`~anygen.generation.scheduler.Scheduler`: the tasks of all users decode together, each with its
own settings and seed, and each gets exactly what it would get alone. Errors are OpenAI's ``{"error": {...}}`` with
a 4xx status naming the field (5xx for the server's own trouble: 503 when the queue is full, 504 on timeout). A
client that disconnects frees its rows at the next step. docs/serving.md has curl and openai-client examples.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError

from anygen.apps.serve_chat import POLL_SECONDS, Answer, EventPump, chain, chat_plan, sse, usage
from anygen.apps.serve_http import BodyLimit, install_error_handlers, pydantic_param
from anygen.apps.serve_io import (ApiError, Limits, audio_from_bytes, b64, bad_request, image_from_bytes, pcm_bytes,
                                  png_bytes, wav_bytes)
from anygen.apps.serve_schemas import (ChatCompletionRequest, ImageEditRequest, ImageFields, ImageGenerationRequest,
                                       ModelCard, ModelList, SpeechRequest, TranscriptionRequest)
from anygen.decoders.rendering import DECODER_KEYS
from anygen.errors import InvalidArgumentError
from anygen.generation import fast_decode
from anygen.generation.request_scope import RequestScope, request_scope
from anygen.generation.scheduler import Scheduler, SchedulerBusy
from anygen.pipelines import AnyGenPipeline

log = logging.getLogger(__name__)
Model = TypeVar("Model", bound=BaseModel)


@dataclass
class Server:
    """What the endpoints share: the pipeline (sampling through ``scheduler``), the served name and the limits."""

    pipe: AnyGenPipeline
    scheduler: Scheduler
    model_id: str
    limits: Limits = field(default_factory=Limits)
    max_in_flight: int = 64
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        self.executor = ThreadPoolExecutor(self.max_in_flight, thread_name_prefix="anygen-serve")
        self._in_flight = 0
        self._lock = threading.Lock()

    # ---- admission and cancellation --------------------------------------------------------------------------
    def enter(self) -> None:
        with self._lock:
            if self._in_flight >= self.max_in_flight:
                raise SchedulerBusy(f"the server is busy ({self._in_flight} requests in flight, the limit); "
                                    "try again shortly")
            self._in_flight += 1

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    async def run(self, request: Any, task: Callable[[], Any]) -> Any:
        """Run ``task`` (a pipeline call) in a worker thread within a fresh request scope; a client that
        disconnects cancels it (its rows are freed at the next step)."""
        self.enter()
        scope = RequestScope(self.limits.request_timeout)
        try:
            future = asyncio.get_running_loop().run_in_executor(self.executor, _in_scope, scope, task)
            while True:
                done, _ = await asyncio.wait({future}, timeout=POLL_SECONDS)
                if done:
                    return future.result()
                if await request.is_disconnected():
                    scope.cancel()
        finally:
            scope.cancel()  # a no-op once its jobs are done
            self.leave()

    def check_model(self, name: str | None, param: str = "model") -> None:
        if name is not None and name != self.model_id:
            raise ApiError(404, f"model={name!r} is not served here; this server serves {self.model_id!r}", param,
                           "model_not_found")

    def generator(self, seed: int | None) -> torch.Generator:
        generator = torch.Generator()
        return generator.manual_seed(seed) if seed is not None else generator.manual_seed(generator.seed())

    def check_prompt(self, text: str, param: str) -> None:
        if len(text) > self.limits.max_prompt_chars:
            raise bad_request(f"{param} has {len(text)} characters; the limit is {self.limits.max_prompt_chars}",
                              param, "prompt_too_long")

    def check_count(self, n: int, param: str = "n") -> None:
        if n > self.limits.max_images:
            raise bad_request(f"{param}={n} is more than this server makes per request ({self.limits.max_images})",
                              param, "n_too_large")

    def image_decoder(self, size: str | None) -> str:
        """The decoder that renders images of OpenAI's ``size`` ("WxH"): the model's own size (also for ``None`` and
        ``"auto"``) with the VQ decoder, a larger one with its upscale decoder when it has one."""
        sizes = {}
        for decoder in ("upscale", "vq"):  # the VQ decoder wins where both render the same size
            if decoder == "vq" or DECODER_KEYS[decoder] in self.pipe.model.decoders:
                height, width = self.pipe.output_size(decoder)
                sizes[f"{width}x{height}"] = decoder
        if size in (None, "auto"):
            return "vq"
        if size in sizes:
            return sizes[size]
        smallest_first = sorted(sizes, key=lambda wh: [int(n) for n in wh.split("x")])
        raise bad_request(f"size={size!r}: this model makes {' or '.join(smallest_first)} images (or "
                          "'auto')", "size", "unsupported_size")


def _in_scope(scope: RequestScope, task: Callable[[], Any]) -> Any:
    with request_scope(scope):
        return task()


async def parse_json(request: Any, schema: type[Model]) -> Model:
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/"):
        raise ApiError(415, "send this request as JSON (Content-Type: application/json)", None,
                       "unsupported_content_type")
    try:
        data = json.loads(await request.body())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise bad_request(f"the request body is not valid JSON: {err}", None, "invalid_json") from err
    return validated(schema, data)


async def parse_form(request: Any, schema: type[Model], files: tuple[str, ...]) -> tuple[Model, dict[str, list]]:
    """A multipart form: its plain fields validated by ``schema``, its uploads (the ``files`` fields) as bytes."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise ApiError(415, "send this request as multipart/form-data (as the openai client does)", None,
                       "unsupported_content_type")
    form = await request.form(max_files=8, max_fields=64)
    uploads: dict[str, list[bytes]] = {}
    fields: dict[str, Any] = {}
    for key, value in form.multi_items():
        name = key[:-2] if key.endswith("[]") else key
        if hasattr(value, "read"):
            if name not in files:
                raise bad_request(f"{key} is not a file field of this endpoint (files: {list(files)})", key,
                                  "unexpected_file")
            uploads.setdefault(name, []).append(await value.read())
        else:
            fields[name] = value
    return validated(schema, fields), uploads


def validated(schema: type[Model], data: Any) -> Model:
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        param, message = pydantic_param(err)
        raise bad_request(message, param) from err


# ---- the app -------------------------------------------------------------------------------------------------


def create_app(server: Server) -> Any:
    """The ASGI app (FastAPI behind a body-size limit)."""
    from anygen import __version__

    app = FastAPI(title="anygen", version=__version__, docs_url=None, redoc_url=None)
    install_error_handlers(app)
    pipe = server.pipe

    @app.get("/v1/models")
    async def list_models() -> dict:
        return ModelList(data=[ModelCard(id=server.model_id, created=server.created)]).model_dump()

    @app.get("/v1/models/{name}")
    async def get_model(name: str) -> dict:
        server.check_model(name)
        return ModelCard(id=server.model_id, created=server.created).model_dump()

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", **server.scheduler.stats()}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        body = await parse_json(request, ChatCompletionRequest)
        plan = await asyncio.to_thread(chat_plan, server, body)  # decodes media: off the event loop
        decoder = server.image_decoder(body.size)
        generator = server.generator(body.seed)
        server.enter()
        try:
            pump = EventPump(server, lambda: pipe.stream(
                pipe.apply_chat_template(plan.conversation), plan.max_new_tokens, body.guidance_scale, generator,
                plan.sampling, plan.output_modalities, min_new_tokens=1, decoder=decoder))  # never empty
            events = pump.events(request)
            first = await anext(events, None)  # errors before the first event are HTTP errors
        except BaseException:
            server.leave()
            raise
        head = {"id": f"chatcmpl-{uuid.uuid4().hex}", "created": int(time.time()), "model": server.model_id}
        if body.stream:
            include_usage = body.stream_options is not None and body.stream_options.include_usage
            return StreamingResponse(sse(server, head, first, events, pump.scope, include_usage,
                                         Answer(plan.stop)), media_type="text/event-stream")
        try:
            answer = Answer(plan.stop)
            async for event in chain([] if first is None else [first], events):
                answer.add(event)
                if answer.stopped:
                    pump.scope.cancel()  # frees the row now
                    break
            answer.flush()
        finally:
            server.leave()
        if await request.is_disconnected():
            return Response(status_code=499)
        return JSONResponse({**head, "object": "chat.completion", "usage": usage(pump.scope), "choices": [
            {"index": 0, "message": answer.message(), "finish_reason": answer.finish_reason}]})

    def check_image_count(body: ImageFields) -> None:
        server.check_count(body.n)
        if body.n * body.num_candidates > server.limits.max_images:
            raise bad_request(f"n={body.n} images of num_candidates={body.num_candidates} each is more than this "
                              f"server samples per request ({server.limits.max_images})", "num_candidates",
                              "n_too_large")

    @app.post("/v1/images/generations")
    async def images_generations(request: Request) -> dict:
        body = await parse_json(request, ImageGenerationRequest)
        server.check_model(body.model)
        check_image_count(body)
        server.check_prompt(body.prompt, "prompt")
        decoder = server.image_decoder(body.size)
        out = await server.run(request, lambda: pipe.text_to_image(
            body.prompt, body.negative_prompt, num_images_per_prompt=body.n, guidance_scale=body.guidance_scale,
            generator=server.generator(body.seed), temperature=body.temperature, top_k=body.top_k, top_p=body.top_p,
            decoder=decoder, num_candidates=body.num_candidates))
        return _images_response(out.images)

    @app.post("/v1/images/edits")
    async def images_edits(request: Request) -> dict:
        body, uploads = await parse_form(request, ImageEditRequest, ("image", "mask"))
        server.check_model(body.model)
        check_image_count(body)
        server.check_prompt(body.prompt, "prompt")
        decoder = server.image_decoder(body.size)
        if "mask" in uploads:
            raise bad_request("mask is not supported: anygen edits the whole image from the instruction", "mask",
                              "unsupported_parameter")
        images = uploads.get("image", [])
        if len(images) != 1:
            raise bad_request(f"send exactly one image file, got {len(images)}", "image")
        picture = image_from_bytes(images[0], "image", server.limits)
        out = await server.run(request, lambda: pipe.edit_image(
            picture, body.prompt, guidance_scale=body.guidance_scale, image_guidance_scale=body.image_guidance_scale,
            num_images_per_prompt=body.n, generator=server.generator(body.seed), temperature=body.temperature,
            top_k=body.top_k, top_p=body.top_p, decoder=decoder, num_candidates=body.num_candidates))
        return _images_response(out.images)

    @app.post("/v1/audio/speech")
    async def audio_speech(request: Request) -> Response:
        body = await parse_json(request, SpeechRequest)
        server.check_model(body.model)
        server.check_prompt(body.input, "input")
        if not body.input.strip():
            raise bad_request("input must hold some text to speak", "input", "empty_input")
        seconds = pipe.max_audio_seconds if body.max_seconds is None else body.max_seconds
        if seconds > pipe.max_audio_seconds:
            raise bad_request(f"max_seconds={seconds:g} is more than this server generates "
                              f"({pipe.max_audio_seconds:g})", "max_seconds")
        server.check_count(body.num_candidates, "num_candidates")
        out = await server.run(request, lambda: pipe.speak(
            body.input, guidance_scale=body.guidance_scale, generator=server.generator(body.seed),
            temperature=body.temperature, max_seconds=seconds, num_candidates=body.num_candidates))
        wave = out.audios[0]
        if body.response_format == "pcm":
            return Response(pcm_bytes(wave), media_type="audio/pcm", headers={"X-Sample-Rate": str(out.sample_rate)})
        return Response(wav_bytes(wave, out.sample_rate), media_type="audio/wav")

    @app.post("/v1/audio/transcriptions")
    async def audio_transcriptions(request: Request) -> Any:
        body, uploads = await parse_form(request, TranscriptionRequest, ("file",))
        server.check_model(body.model)
        files = uploads.get("file", [])
        if len(files) != 1:
            raise bad_request(f"send exactly one audio file, got {len(files)}", "file")
        clip = audio_from_bytes(files[0], "file", server.limits)
        out = await server.run(request, lambda: pipe.transcribe(clip))
        if body.response_format == "text":
            return Response(out.texts[0], media_type="text/plain")
        return {"text": out.texts[0]}

    return BodyLimit(app, server.limits.max_body_bytes)


def _images_response(images: list) -> dict:
    return {"created": int(time.time()), "output_format": "png",
            "data": [{"b64_json": b64(png_bytes(image))} for image in images]}


# ---- command line --------------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="anygen-tiny", help="a saved model directory, or anygen-tiny (shipped)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--served-model-name", default=None, help="the model id clients send (default: its name)")
    parser.add_argument("--block-rows", type=int, default=32, help="rows the core runs at once (fewer: a lone "
                        "request answers sooner, many clients get less throughput; docs/serving.md)")
    parser.add_argument("--blocks", type=int, default=1, help="blocks of rows decoding together")
    parser.add_argument("--max-queue", type=int, default=32, help="requests that may wait beyond the batch")
    parser.add_argument("--request-timeout", type=float, default=300.0, help="seconds before a request fails (504)")
    parser.add_argument("--max-body-mb", type=float, default=16.0, help="largest request body (413 beyond)")
    parser.add_argument("--max-images", type=int, default=4, help="largest n of the image endpoints")
    parser.add_argument("--max-tokens", type=int, default=512, help="largest max_tokens of a chat completion")
    parser.add_argument("--max-audio-seconds", type=float, default=4.0, help="longest speech generated")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=False,
                        help="decode through a torch.compile-d step once it is traced in the background (the server "
                             "answers eagerly meanwhile); for GPUs: on a CPU it measured slower than the eager fast "
                             "step")
    parser.add_argument("--matmul-dtype", default="auto", choices=["auto", *sorted(fast_decode.MATMUL_DTYPES)],
                        help="dtype of the decode step's matrix products: bfloat16 runs a full block 1.2-2x as "
                             "fast on a CPU that multiplies in bfloat16 natively (AMX, AVX512-BF16); auto (default): "
                             "bfloat16 there, float32 elsewhere and with --compile (docs/serving.md)")
    parser.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def build_server(args: argparse.Namespace) -> Server:
    """Check the flags, load the model, start the scheduler."""
    from anygen.assets import DEFAULT_MODEL_NAME, MODEL_NAMES, model_dir
    from anygen.model import AnyGen

    if not 0 <= args.port <= 65535:
        raise InvalidArgumentError(f"--port={args.port} must be in [0, 65535]")
    if args.matmul_dtype == "bfloat16" and (args.compile or not fast_decode.bf16_matmul_supported()):
        problem = "runs the eager fast step; drop --compile" if args.compile else fast_decode.bf16_matmul_problem(None)
        raise InvalidArgumentError(f"--matmul-dtype=bfloat16 {problem}")
    directory = model_dir(args.model)
    model = AnyGen.from_pretrained(directory)
    matmul_dtype = fast_decode.MATMUL_DTYPES.get(args.matmul_dtype) or \
        (torch.float32 if args.compile else fast_decode.fastest_matmul_dtype(model.core))
    scheduler = Scheduler(model.core, model.vocab, block_rows=args.block_rows, blocks=args.blocks,
                          max_queue=args.max_queue, compile=args.compile, matmul_dtype=matmul_dtype)
    pipe = AnyGenPipeline(model, max_audio_seconds=args.max_audio_seconds, sampler=scheduler.decode_steps)
    pipe.set_progress_bar_config(disable=True)
    limits = Limits(max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images,
                    max_tokens=min(args.max_tokens, scheduler.cache_len - 1), request_timeout=args.request_timeout)
    name = args.served_model_name or (DEFAULT_MODEL_NAME if args.model in MODEL_NAMES else directory.name)
    return Server(pipe, scheduler, name, limits, max_in_flight=scheduler.rows + args.max_queue)


class BackgroundServer:
    """Serve ``app`` with uvicorn on a thread of this process (tests, benchmarks, notebooks); ``port=0`` takes a
    free port. Use as a context manager, or call :meth:`stop`."""

    def __init__(self, app: Any, host: str = "127.0.0.1", port: int = 0) -> None:
        import socket

        import uvicorn

        self.sock = socket.socket()
        self.sock.bind((host, port))
        self.host, self.port = host, self.sock.getsockname()[1]
        self.uvicorn = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1))
        self.thread = threading.Thread(target=self.uvicorn.run, kwargs={"sockets": [self.sock]}, daemon=True,
                                       name="anygen-serve-http")
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.uvicorn.started and time.monotonic() < deadline:
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        self.uvicorn.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        if not ipaddress.ip_address(args.host).is_loopback:
            log.warning("binding %s: anygen serve has no authentication; anyone who can reach it may use it",
                        args.host)
    except ValueError:
        pass
    server = build_server(args)
    try:
        uvicorn.run(create_app(server), host=args.host, port=args.port, log_level=args.log_level)
    finally:
        server.scheduler.close()
    return 0
