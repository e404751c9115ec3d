"""`anygen serve` through the official openai client on 127.0.0.1: every endpoint, streaming, concurrency (each
request gets what it gets alone), bad input as OpenAI errors naming the field, disconnects, a full queue, timeouts
and a bounded load test.

The default tests serve a random tiny model (32x32 grid images, 8 kHz toy audio) so they take seconds; the slow ones
start `anygen serve` as a process with the shipped model (anygen-tiny)."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import TINY_CORE, answer_with_one_picture, tiny_image_vq
from PIL import Image

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

from anygen.apps.serve import BackgroundServer, Server, create_app  # noqa: E402
from anygen.apps.serve_io import Limits  # noqa: E402
from anygen.cli import main as cli_main  # noqa: E402
from anygen.data.scenes import Scene, place_objects, render_scene  # noqa: E402
from anygen.decoders import UpscaleDecoder, UpscaleDecoderConfig  # noqa: E402
from anygen.generation import fast_decode  # noqa: E402
from anygen.generation.scheduler import Scheduler  # noqa: E402
from anygen.model import AnyGen  # noqa: E402
from anygen.pipelines import AnyGenPipeline  # noqa: E402
from anygen.tokenizers.simple import GridImageTokenizer, MuLawAudioTokenizer  # noqa: E402
from anygen.tokenizers.text import TextTokenizer  # noqa: E402

MODEL = "anygen-tiny"  # the random model goes by the shipped model's name, so docs/serving.md runs as written
DOCS = Path(__file__).resolve().parents[1] / "docs" / "serving.md"
LIMITS = Limits(max_body_bytes=256 * 1024, max_images=2, max_tokens=400, request_timeout=60.0)


# ---- the served model ----------------------------------------------------------------------------------------


@dataclass
class Served:
    """The random tiny model and the scheduler every test server of this module samples through."""

    model: AnyGen
    scheduler: Scheduler


@pytest.fixture(scope="module")
def served(text_tokenizer: TextTokenizer) -> Iterator[Served]:
    torch.manual_seed(0)
    tokenizers = {"image": GridImageTokenizer(cell=8, levels=4), "audio": MuLawAudioTokenizer()}
    model = AnyGen.create(text_tokenizer, tokenizers, TINY_CORE).eval()
    scheduler = Scheduler(model.core, model.vocab, block_rows=4, blocks=3, max_queue=16)
    yield Served(model, scheduler)
    scheduler.close()


def serve(served: Served, limits: Limits = LIMITS, max_in_flight: int = 32) -> BackgroundServer:
    """``anygen serve``'s app for the tiny model on a free port of 127.0.0.1."""
    pipe = AnyGenPipeline(served.model, max_audio_seconds=1.0, sampler=served.scheduler.decode_steps)
    pipe.set_progress_bar_config(disable=True)
    return BackgroundServer(create_app(Server(pipe, served.scheduler, MODEL, limits, max_in_flight)))


@pytest.fixture(scope="module")
def server(served: Served) -> Iterator[BackgroundServer]:
    with serve(served) as background:
        yield background


@pytest.fixture()
def client(server: BackgroundServer):
    return openai.OpenAI(api_key="unused", base_url=server.url + "/v1", max_retries=0, timeout=60)


def png_of(b64: str) -> Image.Image:
    data = base64.b64decode(b64)
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    image.load()
    return image


def wav_of(data: bytes) -> tuple[int, int]:
    info = sf.info(io.BytesIO(data))
    assert info.format == "WAV"
    return info.samplerate, info.frames


def a_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def a_wav(seconds: float = 0.5, rate: int = 8000) -> bytes:
    buffer = io.BytesIO()
    t = torch.arange(int(rate * seconds)) / rate
    sf.write(buffer, (0.3 * torch.sin(2 * torch.pi * 440 * t)).numpy(), rate, format="WAV")
    return buffer.getvalue()


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def user(content: object) -> list[dict]:
    return [{"role": "user", "content": content}]


# ---- every endpoint ------------------------------------------------------------------------------------------


def test_models(client) -> None:
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_images_generations_are_pngs_and_follow_the_seed(client) -> None:
    first = client.images.generate(model=MODEL, prompt="a red circle", n=2, size="32x32", extra_body={"seed": 1})
    images = [png_of(d.b64_json) for d in first.data]
    assert [i.size for i in images] == [(32, 32)] * 2
    again = client.images.generate(model=MODEL, prompt="a red circle", n=2, extra_body={"seed": 1})
    other = client.images.generate(model=MODEL, prompt="a red circle", n=2, extra_body={"seed": 2})
    assert [d.b64_json for d in again.data] == [d.b64_json for d in first.data]
    assert [d.b64_json for d in other.data] != [d.b64_json for d in first.data]
    # two candidates under seed 1 are the two images n=2 gives under seed 1; the server returns the one ranked first
    (picked,) = client.images.generate(model=MODEL, prompt="a red circle",
                                       extra_body={"seed": 1, "num_candidates": 2}).data
    assert picked.b64_json in [d.b64_json for d in first.data]


def test_images_edits(client) -> None:
    out = client.images.edit(model=MODEL, image=("in.png", a_png(), "image/png"), prompt="make it blue", n=1,
                             extra_body={"seed": 3})
    assert png_of(out.data[0].b64_json).size == (32, 32)
    # as for generations: two candidates under one seed are the two edits n=2 gives, and one of them comes back
    both = client.images.edit(model=MODEL, image=("in.png", a_png(), "image/png"), prompt="add a blue circle", n=2,
                              extra_body={"seed": 3})
    (picked,) = client.images.edit(model=MODEL, image=("in.png", a_png(), "image/png"), prompt="add a blue circle",
                                   extra_body={"seed": 3, "num_candidates": 2}).data
    assert picked.b64_json in [d.b64_json for d in both.data]


def test_audio_speech_is_wav_and_transcribes(client) -> None:
    speech = client.audio.speech.create(model=MODEL, voice="default", input="say hello", response_format="wav",
                                        extra_body={"seed": 4})
    rate, frames = wav_of(speech.content)
    assert rate == 8000 and frames > 0
    text = client.audio.transcriptions.create(model=MODEL, file=("a.wav", speech.content, "audio/wav"))
    assert isinstance(text.text, str)
    plain = client.audio.transcriptions.create(model=MODEL, file=("a.wav", a_wav(), "audio/wav"),
                                               response_format="text")
    assert isinstance(plain, str)


def test_chat_reads_text_image_and_audio_parts(client) -> None:
    content = [{"type": "text", "text": "a red circle"},
               {"type": "image_url", "image_url": {"url": data_url(a_png())}},
               {"type": "input_audio", "input_audio": {"data": base64.b64encode(a_wav()).decode(), "format": "wav"}}]
    out = client.chat.completions.create(model=MODEL, messages=user(content), max_tokens=40, seed=5)
    choice = out.choices[0]
    assert choice.finish_reason in ("stop", "length")
    assert out.usage.prompt_tokens > 16 and 0 < out.usage.completion_tokens <= 40
    assert isinstance(choice.message.content, (str, list))


def test_chat_answers_with_media_parts(client) -> None:
    """The random model opens image and audio spans when text is not allowed to end the answer early."""
    seen: set[str] = set()
    for seed in range(6):
        out = client.chat.completions.create(model=MODEL, messages=user("two green triangles"), max_tokens=120,
                                             seed=seed, temperature=1.5, extra_body={"guidance_scale": 1.5})
        content = out.choices[0].message.content
        parts = content if isinstance(content, list) else []
        for part in parts:
            seen.add(part["type"])
            if part["type"] == "image_url":
                assert png_of(part["image_url"]["url"].split(",", 1)[1]).size == (32, 32)
            if part["type"] == "input_audio":
                assert wav_of(base64.b64decode(part["input_audio"]["data"]))[0] == 8000
        audios = [p["input_audio"]["data"] for p in parts if p["type"] == "input_audio"]
        if audios:  # OpenAI's message.audio holds the first
            assert out.choices[0].message.audio.data == audios[0]
    assert seen & {"image_url", "input_audio"}


def test_chat_draws_the_answers_pictures_at_the_size_asked_for(text_tokenizer: TextTokenizer) -> None:
    tokenizer = tiny_image_vq()  # 16x16 px; its upscale decoder draws the same codes at 64x64
    model = AnyGen.create(text_tokenizer, {"image": tokenizer}, TINY_CORE)
    model.decoders["image-upscale"] = UpscaleDecoder(UpscaleDecoderConfig(channels=8, blocks=1), tokenizer)
    budget = answer_with_one_picture(AnyGenPipeline(model.eval()))
    scheduler = Scheduler(model.core, model.vocab, block_rows=2, blocks=1, max_queue=4)
    try:
        with serve(Served(model, scheduler)) as background:
            client = openai.OpenAI(api_key="unused", base_url=background.url + "/v1", max_retries=0, timeout=60)

            def picture(stream: bool = False, **extra: object) -> Image.Image:
                out = client.chat.completions.create(model=MODEL, messages=user("draw"), max_tokens=budget, seed=0,
                                                     stream=stream, extra_body=extra)
                parts = [p for c in out if c.choices and isinstance(c.choices[0].delta.content, list)
                         for p in c.choices[0].delta.content] if stream else out.choices[0].message.content
                (part,) = [p for p in parts if p["type"] == "image_url"]
                return png_of(part["image_url"]["url"].split(",", 1)[1])

            assert picture().size == picture(size="auto").size == (16, 16)
            assert picture(size="64x64").size == picture(stream=True, size="64x64").size == (64, 64)
            with pytest.raises(openai.BadRequestError, match="size='32x32': this model makes 16x16 or 64x64"):
                picture(size="32x32")
    finally:
        scheduler.close()


def test_chat_streams_text_deltas_and_usage(client) -> None:
    kwargs = dict(model=MODEL, messages=user("say hello"), max_tokens=30, seed=6, modalities=["text"])
    whole = client.chat.completions.create(**kwargs).choices[0].message.content
    chunks = list(client.chat.completions.create(**kwargs, stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole
    assert chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_stop_strings_end_the_answer_before_them_streamed_or_not(client, served: Served) -> None:
    kwargs = dict(model=MODEL, messages=user("say hello"), max_tokens=60, temperature=0, modalities=["text"])
    plain = client.chat.completions.create(**kwargs)
    whole = plain.choices[0].message.content
    stop = next(whole[i:i + 2] for i in range(4, len(whole) - 1) if whole[i:i + 2].strip())  # a pair in the middle
    cut = whole[: whole.index(stop)]
    for value in (stop, ["\u00a7never\u00a7", stop]):
        out = client.chat.completions.create(**kwargs, stop=value)
        assert (out.choices[0].message.content, out.choices[0].finish_reason) == (cut, "stop")
        chunks = list(client.chat.completions.create(**kwargs, stop=value, stream=True))
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == cut
        assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert out.usage.completion_tokens < plain.usage.completion_tokens  # cancelled at the stop string
    assert wait_for(lambda: served.scheduler.stats()["active_rows"] == 0)


@pytest.mark.parametrize("stop, param", [([""], "stop[0]"), (["a", "b", "c", "d", "e"], "stop"), (5, "stop"),
                                         ("x" * 257, "stop[0]")])
def test_bad_stop_strings_are_refused_by_name(server: BackgroundServer, stop, param: str) -> None:
    response = httpx.post(server.url + "/v1/chat/completions", json={**CHAT, "stop": stop}, timeout=60)
    assert_error(response, 400, param)


def test_text_that_may_begin_a_stop_string_is_held_back_until_it_cannot() -> None:
    from anygen.apps.serve_chat import Answer
    from anygen.generation.streaming import RowDone, SegmentDone, TextDelta
    from anygen.types import ImageSegment

    answer = Answer(["END", "xyz"])
    shown = [answer.add(TextDelta(0, t)) for t in ("ab", "cE", "N", "ot x", "y")]
    assert shown == [[{"content": "ab"}], [{"content": "c"}], [], [{"content": "ENot "}], []]
    picture = ImageSegment(torch.zeros(3, 8, 8))
    deltas = answer.add(SegmentDone(0, picture))  # a media part releases the held "xy" first
    assert deltas[0] == {"content": "xy"} and deltas[1]["content"][0]["type"] == "image_url"
    assert answer.add(TextDelta(0, "zzEN")) == [{"content": "zz"}] and answer.add(TextDelta(0, "D and on")) == []
    assert answer.stopped and answer.finish_reason == "stop" and answer.add(RowDone(0, False)) == []
    assert [p.get("text") for p in answer.parts] == ["abcENot xy", None, "zz"]
    late = Answer(["never"])
    assert late.add(TextDelta(0, "a nev")) == [{"content": "a "}] and late.flush() == [{"content": "nev"}]


# ---- concurrency ---------------------------------------------------------------------------------------------


def mixed_requests(client) -> dict[str, Callable[[], object]]:
    """Requests of every kind with fixed seeds; each returns something comparable."""
    chat = dict(model=MODEL, max_tokens=50)
    return {
        "images": lambda: [d.b64_json for d in client.images.generate(
            model=MODEL, prompt="two green triangles", n=2, extra_body={"seed": 11, "guidance_scale": 3.0}).data],
        "edit": lambda: client.images.edit(model=MODEL, image=("in.png", a_png(), "image/png"), prompt="blue",
                                           extra_body={"seed": 12}).data[0].b64_json,
        "speech": lambda: client.audio.speech.create(model=MODEL, voice="default", input="a yellow star",
                                                     extra_body={"seed": 13}).content,
        "chat": lambda: client.chat.completions.create(messages=user("a red circle"), seed=14, **chat)
        .choices[0].message.content,
        "stream": lambda: [c.choices[0].delta.content for c in client.chat.completions.create(
            messages=user("say hello"), seed=15, stream=True, temperature=0.8, top_p=0.9, **chat) if c.choices],
        "transcribe": lambda: client.audio.transcriptions.create(model=MODEL, file=("a.wav", a_wav(), "audio/wav"))
        .text,
    }


def test_concurrent_requests_get_what_they_get_alone(client) -> None:
    requests = mixed_requests(client)
    alone = {name: run() for name, run in requests.items()}
    with ThreadPoolExecutor(len(requests)) as pool:
        futures = {name: pool.submit(run) for name, run in requests.items()}
        together = {name: future.result() for name, future in futures.items()}
    assert together == alone


# ---- bad input -----------------------------------------------------------------------------------------------

CHAT = {"model": MODEL, "messages": user("hi"), "max_tokens": 4}
BAD_JSON = [  # (endpoint, body, status, param)
    ("chat/completions", {**CHAT, "model": "gpt-4o"}, 404, "model"),
    ("chat/completions", {**CHAT, "temperature": 3}, 400, "temperature"),
    ("chat/completions", {**CHAT, "top_p": 0}, 400, "top_p"),
    ("chat/completions", {**CHAT, "top_k": -1}, 400, "top_k"),
    ("chat/completions", {**CHAT, "max_tokens": 100000}, 400, "max_tokens"),
    ("chat/completions", {**CHAT, "n": 3}, 400, "n"),
    ("chat/completions", {**CHAT, "seed": -1}, 400, "seed"),
    ("chat/completions", {**CHAT, "size": "64x64"}, 400, "size"),
    ("chat/completions", {**CHAT, "temprature": 0.5}, 400, "temprature"),
    ("chat/completions", {**CHAT, "messages": []}, 400, "messages"),
    ("chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "hi"}]}, 400, "messages[0].role"),
    ("chat/completions", {**CHAT, "modalities": ["video"]}, 400, "modalities[0]"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "video_url", "video_url": {"url": "x"}}])}, 400,
     "messages[0].content[0].video_url"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "file"}])}, 400, "messages[0].content[0].type"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "image_url", "image_url": {
        "url": "https://example.com/cat.png"}}])}, 400, "messages[0].content[0].image_url.url"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "image_url", "image_url": {
        "url": "data:image/png;base64,@@not base64@@"}}])}, 400, "messages[0].content[0].image_url.url"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "image_url", "image_url": {
        "url": "data:image/gif;base64,R0lGODlhAQABAAAAACw="}}])}, 400, "messages[0].content[0].image_url.url"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a png").decode()}}])}, 400,
     "messages[0].content[0].image_url.url"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "input_audio", "input_audio": {
        "data": "%%%", "format": "wav"}}])}, 400, "messages[0].content[0].input_audio.data"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"RIFFnope").decode(), "format": "wav"}}])}, 400,
     "messages[0].content[0].input_audio.data"),
    ("chat/completions", {**CHAT, "messages": user([{"type": "input_audio", "input_audio": {
        "data": "AAAA", "format": "mp3"}}])}, 400, "messages[0].content[0].input_audio.format"),
    ("chat/completions", {**CHAT, "messages": user("x" * 5000)}, 400, "messages"),
    ("images/generations", {"prompt": "a red circle", "n": 3}, 400, "n"),
    ("images/generations", {"prompt": "a red circle", "n": 0}, 400, "n"),
    ("images/generations", {"prompt": "a red circle", "size": "1024x1024"}, 400, "size"),
    ("images/generations", {"prompt": "a red circle", "response_format": "url"}, 400, "response_format"),
    ("images/generations", {"prompt": "a red circle", "guidance_scale": -1}, 400, "guidance_scale"),
    ("images/generations", {"n": 1}, 400, "prompt"),
    ("images/generations", {"prompt": "a red circle", "n": 2, "num_candidates": 2}, 400, "num_candidates"),
    ("images/generations", {"prompt": "a red circle", "num_candidates": 0}, 400, "num_candidates"),
    ("audio/speech", {"model": MODEL, "input": "hi", "voice": "x", "num_candidates": 3}, 400, "num_candidates"),
    ("audio/speech", {"model": MODEL, "input": "hi", "voice": "x", "response_format": "mp3"}, 400,
     "response_format"),
    ("audio/speech", {"model": MODEL, "input": "hi", "voice": "x", "speed": 2.0}, 400, "speed"),
    ("audio/speech", {"model": MODEL, "input": "  ", "voice": "x"}, 400, "input"),
    ("audio/speech", {"model": MODEL, "input": "hi", "voice": "x", "max_seconds": 60}, 400, "max_seconds"),
]


@pytest.fixture()
def http(server: BackgroundServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url + "/v1", timeout=60) as session:
        yield session


def assert_error(response: httpx.Response, status: int, param: str | None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param, error
    assert error["message"] and "Traceback" not in error["message"] and "/work" not in error["message"]
    return error


def assert_still_serving(http: httpx.Client) -> None:
    assert http.get("/models").status_code == 200
    answer = http.post("/chat/completions", json=CHAT)
    assert answer.status_code == 200, answer.text


@pytest.mark.parametrize("endpoint, body, status, param", BAD_JSON,
                         ids=[f"{e}-{p}-{i}" for i, (e, _, _, p) in enumerate(BAD_JSON)])
def test_bad_json_requests_are_openai_errors_naming_the_field(http, endpoint, body, status, param) -> None:
    assert_error(http.post(f"/{endpoint}", json=body), status, param)


def test_malformed_bodies_and_uploads_are_refused_and_the_server_keeps_serving(http, server) -> None:
    error = assert_error(http.post("/chat/completions", content=b"{not json",
                                   headers={"content-type": "application/json"}), 400, None)
    assert error["code"] == "invalid_json"
    error = assert_error(http.post("/chat/completions", content=b"x" * (LIMITS.max_body_bytes + 1),
                                   headers={"content-type": "application/json"}), 413, None)
    assert error["code"] == "request_too_large"
    halves = iter([b"x" * (LIMITS.max_body_bytes // 2 + 1)] * 2)  # chunked: no Content-Length to go by
    assert_error(http.post("/chat/completions", content=halves, headers={"content-type": "application/json"}), 413,
                 None)
    form = {"prompt": "blue", "model": MODEL}
    assert_error(http.post("/images/edits", data=form, files={"image": ("a.txt", b"hello", "text/plain")}), 400,
                 "image")
    assert_error(http.post("/images/edits", data=form, files={"image": ("a.png", a_png(), "image/png"),
                                                              "mask": ("m.png", a_png(), "image/png")}), 400, "mask")
    assert_error(http.post("/images/edits", data={**form, "n": "9"},
                           files={"image": ("a.png", a_png(), "image/png")}), 400, "n")
    assert_error(http.post("/images/edits", data={**form, "n": "2", "num_candidates": "2"},
                           files={"image": ("a.png", a_png(), "image/png")}), 400, "num_candidates")
    assert_error(http.post("/images/edits", json=form), 415, None)
    assert_error(http.post("/audio/transcriptions", data={"model": MODEL},
                           files={"file": ("a.wav", b"RIFF....WAVEnope", "audio/wav")}), 400, "file")
    assert_error(http.post("/audio/transcriptions", data={"model": MODEL},
                           files={"file": ("a.wav", a_wav(seconds=31.0, rate=2000), "audio/wav")}), 400, "file")
    assert_error(http.post("/chat/completions", files={"file": ("a", b"x")}), 415, None)
    assert http.get("/nothing-here").status_code == 404
    assert_still_serving(http)


def test_the_openai_client_sees_the_errors(client) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="gpt-4o", messages=user("hi"))
    assert missing.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError) as bad:
        client.images.generate(model=MODEL, prompt="a red circle", n=5)
    assert bad.value.body["param"] == "n"


# ---- disconnects, a full queue, timeouts -----------------------------------------------------------------------


def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_a_client_that_disconnects_mid_stream_frees_its_row(server: BackgroundServer, served: Served) -> None:
    scheduler = served.scheduler
    body = {**CHAT, "max_tokens": 400, "temperature": 0, "modalities": ["text"], "stream": True}
    full = httpx.post(server.url + "/v1/chat/completions", json={**body, "stream": False}, timeout=60).json()
    assert full["choices"][0]["finish_reason"] == "length"  # greedy: this request runs all 400 steps
    assert wait_for(lambda: scheduler.stats()["active_rows"] == 0)
    with httpx.Client(timeout=60) as session, session.stream("POST", server.url + "/v1/chat/completions",
                                                            json=body) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        assert scheduler.stats()["active_rows"] == 1
        started = scheduler.stats()["steps"]
    # the connection is closed here, long before the 400 steps
    assert wait_for(lambda: scheduler.stats()["active_rows"] == 0, timeout=10.0)
    assert scheduler.stats()["steps"] < started + 300


def test_a_full_server_answers_503_and_recovers(served) -> None:
    body = {**CHAT, "max_tokens": 400, "temperature": 0, "modalities": ["text"], "stream": True}
    with serve(served, max_in_flight=2) as small, httpx.Client(timeout=60) as session:
        url = small.url + "/v1/chat/completions"
        with session.stream("POST", url, json=body) as first, session.stream("POST", url, json=body) as second:
            streams = [first.iter_lines(), second.iter_lines()]  # kept: a dropped iterator closes its stream
            assert all(next(lines).startswith("data: ") for lines in streams)
            busy = session.post(url, json=CHAT)
            assert_error(busy, 503, None)
            assert busy.headers["retry-after"] == "1"
        assert wait_for(lambda: session.post(url, json=CHAT).status_code == 200)


def test_a_request_past_the_timeout_answers_504(served) -> None:
    limits = Limits(request_timeout=0.0, max_tokens=400)
    with serve(served, limits) as hurried, httpx.Client(timeout=60) as session:
        error = assert_error(session.post(hurried.url + "/v1/images/generations", json={"prompt": "a red circle"}),
                             504, None)
        assert error["code"] == "timeout"
    assert wait_for(lambda: served.scheduler.stats()["active_rows"] == 0)


def test_a_bounded_load_loses_nothing(client, served) -> None:
    """24 requests from 8 threads within 120 s: every one answered, all 200 (nothing dropped or mixed up)."""
    requests = list(mixed_requests(client).values()) * 4
    deadline = time.monotonic() + 120
    results: list[object] = []
    lock = threading.Lock()

    def run(request: Callable[[], object]) -> None:
        assert time.monotonic() < deadline, "the load test ran out of time"
        outcome = request()
        with lock:
            results.append(outcome)

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(run, r) for r in requests]:
            future.result(timeout=max(1.0, deadline - time.monotonic()))
    assert len(results) == len(requests)
    assert wait_for(lambda: served.scheduler.stats()["active_rows"] == 0)


# ---- docs/serving.md ----------------------------------------------------------------------------------------


def doc_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOCS.read_text(), re.S)


def test_the_serving_docs_python_examples_run(server: BackgroundServer, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__serving_docs__"}
    blocks = doc_blocks("python")
    assert len(blocks) >= 3
    for index, block in enumerate(blocks):
        code = block.replace("http://127.0.0.1:8000", server.url)
        exec(compile(code, f"docs/serving.md python block {index}", "exec"), namespace)
    assert Image.open(tmp_path / "green.png").format == "PNG"
    assert wav_of((tmp_path / "hello.wav").read_bytes())[1] > 0


def test_the_serving_docs_curl_examples_run(server: BackgroundServer, tmp_path: Path) -> None:
    missing = [tool for tool in ("curl", "jq", "base64") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the curl examples need {missing}")
    (script,) = [b for b in doc_blocks("bash") if "curl" in b]
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script.replace("http://127.0.0.1:8000", server.url)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert Image.open(tmp_path / "blue.png").format == "PNG"
    assert wav_of((tmp_path / "hello.wav").read_bytes())[1] > 0
    assert "data: [DONE]" in done.stdout and '"text"' in done.stdout


# ---- the command ---------------------------------------------------------------------------------------------


def test_the_command_refuses_a_missing_model_before_loading(capsys, tmp_path: Path) -> None:
    assert cli_main(["serve", "--model", str(tmp_path / "missing")]) == 2
    assert "--model" in capsys.readouterr().err
    assert cli_main(["serve", "--port", "70000"]) == 2
    assert "--port=70000" in capsys.readouterr().err
    assert cli_main(["serve", "--matmul-dtype", "bfloat16", "--compile"]) == 2
    assert "--matmul-dtype=bfloat16 runs the eager fast step; drop --compile" in capsys.readouterr().err


def test_the_command_refuses_bfloat16_products_on_a_cpu_without_them(capsys, monkeypatch) -> None:
    monkeypatch.setattr(fast_decode, "bf16_matmul_supported", lambda: False)
    assert cli_main(["serve", "--matmul-dtype", "bfloat16"]) == 2
    assert "--matmul-dtype=bfloat16 needs a CPU that multiplies in bfloat16 natively" in capsys.readouterr().err


@pytest.mark.parametrize("native", [False, pytest.param(True, marks=pytest.mark.skipif(
    not fast_decode.bf16_matmul_supported(), reason="this CPU does not multiply in bfloat16 natively"))])
def test_the_server_multiplies_in_bfloat16_by_default_where_the_cpu_does_natively(monkeypatch, native: bool) -> None:
    import anygen.apps.serve as serve_module
    from anygen.cli import command_parser

    if not native:
        monkeypatch.setattr(fast_decode, "bf16_matmul_supported", lambda: False)
    args = command_parser("serve", serve_module).parse_args([])
    assert args.matmul_dtype == "auto"
    server = serve_module.build_server(args)
    try:
        assert server.scheduler.stats()["matmul_dtype"] == ("bfloat16" if native else "float32")
    finally:
        server.scheduler.close()


def test_the_command_binds_loopback_by_default() -> None:
    import anygen.apps.serve as serve_module
    from anygen.cli import command_parser

    args = command_parser("serve", serve_module).parse_args([])
    assert (args.host, args.model) == ("127.0.0.1", "anygen-tiny")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def shipped_server() -> Iterator[str]:
    """`anygen serve` with the shipped model, in its own process."""
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    process = subprocess.Popen([sys.executable, "-m", "anygen", "serve", "--port", str(port), "--log-level",
                                "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        up = wait_for(lambda: _answers(url), timeout=300)
        assert up, process.stdout.read().decode() if process.poll() is not None else "the server did not start"
        yield url
    finally:
        process.terminate()
        process.wait(30)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url + "/v1/models", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.mark.slow
def test_the_shipped_model_answers_every_endpoint(shipped_server: str) -> None:
    client = openai.OpenAI(api_key="unused", base_url=shipped_server + "/v1", max_retries=0, timeout=600)
    name = client.models.list().data[0].id
    assert name == "anygen-tiny"
    image = client.images.generate(model=name, prompt="a red circle", extra_body={"seed": 0}).data[0]
    picture = png_of(image.b64_json)
    assert picture.size == (64, 64)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    edit = client.images.edit(model=name, image=("in.png", buffer.getvalue(), "image/png"), prompt="make it blue",
                              extra_body={"seed": 0})
    assert png_of(edit.data[0].b64_json).size == (64, 64)
    big = client.images.generate(model=name, prompt="a red circle", size="256x256", extra_body={"seed": 0}).data[0]
    assert png_of(big.b64_json).size == (256, 256)
    bigger = client.images.edit(model=name, image=("in.png", buffer.getvalue(), "image/png"), prompt="make it blue",
                                size="256x256", extra_body={"seed": 0})
    assert png_of(bigger.data[0].b64_json).size == (256, 256)
    with pytest.raises(openai.BadRequestError, match=r"size='512x512': this model makes 64x64 or 256x256 images"):
        client.images.generate(model=name, prompt="a red circle", size="512x512")
    speech = client.audio.speech.create(model=name, voice="default", input="hello", extra_body={"seed": 0})
    assert wav_of(speech.content)[1] > 0
    heard = client.audio.transcriptions.create(model=name, file=("s.wav", speech.content, "audio/wav"))
    assert isinstance(heard.text, str)
    circle = io.BytesIO()  # a drawn red circle, not a sample: the caption must name what the picture shows
    render_scene(Scene(place_objects(np.random.default_rng(0), [("red", "circle")]))).save(circle, format="PNG")
    caption = client.chat.completions.create(model=name, max_tokens=24, temperature=0, messages=user([
        {"type": "image_url", "image_url": {"url": data_url(circle.getvalue())}}]))  # a picture alone: a caption
    assert "circle" in caption.choices[0].message.content
    chunks = list(client.chat.completions.create(model=name, max_tokens=300, seed=1, stream=True,
                                                 messages=user("Draw a red circle.")))
    assert chunks and chunks[-1].choices[0].finish_reason in ("stop", "length")


@pytest.mark.slow
def test_the_shipped_model_serves_concurrent_requests_as_alone(shipped_server: str) -> None:
    client = openai.OpenAI(api_key="unused", base_url=shipped_server + "/v1", max_retries=0, timeout=600)
    requests = {
        "image": lambda: client.images.generate(model="anygen-tiny", prompt="a blue square", n=2,
                                                extra_body={"seed": 5}).data[1].b64_json,
        "speech": lambda: client.audio.speech.create(model="anygen-tiny", voice="default", input="hello world",
                                                     extra_body={"seed": 6}).content,
        "chat": lambda: client.chat.completions.create(model="anygen-tiny", messages=user("a green triangle"),
                                                       max_tokens=40, seed=7, modalities=["text"])
        .choices[0].message.content,
    }
    alone = {name: run() for name, run in requests.items()}
    with ThreadPoolExecutor(len(requests)) as pool:
        together = {name: f.result() for name, f in {n: pool.submit(r) for n, r in requests.items()}.items()}
    assert together == alone
