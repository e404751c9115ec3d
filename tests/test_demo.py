"""The Gradio demo end to end through gradio_client, plus its security rows (RELIABILITY.md, Demo / server).

Every tab is driven against the shipped model (anygen-tiny); the tests check types, presence and determinism, never
quality. The browser test serves a random model nudged to answer with text, images and audio (``interleaving_model``),
so that every kind of chat part is rendered whatever the shipped model's quality.
"""

from __future__ import annotations

import hashlib
import io
import re
import struct
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

pytest.importorskip("gradio")
from conftest import TINY_CORE  # noqa: E402
from gradio_client import Client, handle_file  # noqa: E402
from gradio_client.exceptions import AppError  # noqa: E402

from anygen.apps import demo as demo_module  # noqa: E402
from anygen.assets import default_model_path  # noqa: E402
from anygen.apps.chat import EventThread, partial_image, read_message  # noqa: E402
from anygen.apps.demo import build_demo, launch, parse_file_size, short_message, upload_path  # noqa: E402
from anygen.errors import InvalidArgumentError, MediaError  # noqa: E402
from anygen.model import AnyGen  # noqa: E402
from anygen.pipelines import AnyGenPipeline  # noqa: E402
from anygen.tokenizers.simple import GridImageTokenizer, MuLawAudioTokenizer  # noqa: E402
from anygen.tokenizers.text import TextTokenizer  # noqa: E402
from anygen.types import TextSegment  # noqa: E402

PLAY = "Play these notes: C5 E5 G5 C6"  # the shipped model answers with a melody, then text
CHAT_DEFAULTS = {"max_new_tokens": 64, "decoder": "vq", "output_modalities": ["image", "audio"],
                 "text_temperature": 1.0, "text_top_k": 0, "image_temperature": 1.0, "image_top_k": 0,
                 "audio_temperature": 1.0, "audio_top_k": 0}


# ---- the model and the server ---------------------------------------------------------------------------------


def interleaving_model(text_tokenizer: TextTokenizer) -> AnyGen:
    """A random tiny model (32x32 grid images, 8 kHz toy audio) nudged to open image and audio spans often.

    Every embedding row gets a shared component that dominates the normalised hidden state; the (tied) rows of the
    two begin tokens get more of it, so their logits beat each text token's and an answer mixes all modalities.
    """
    torch.manual_seed(0)
    tokenizers = {"image": GridImageTokenizer(cell=8, levels=4), "audio": MuLawAudioTokenizer()}
    model = AnyGen.create(text_tokenizer, tokenizers, TINY_CORE).eval()
    embedding = model.core.get_input_embeddings().weight  # (V, D), tied with the output layer
    with torch.no_grad():
        embedding[:, 0] = 1.0
        for name in ("image", "audio"):
            embedding[model.vocab.begin_id(name), 0] = 1.5
    return model


def load_pipe(model_dir: Path) -> AnyGenPipeline:
    return AnyGenPipeline.from_pretrained(model_dir, max_audio_seconds=0.5)


@contextmanager
def serve(pipe: AnyGenPipeline, temp_dir: Path) -> Iterator[str]:
    """Launch the demo as ``anygen demo`` does (127.0.0.1, upload cap) with its files under ``temp_dir``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GRADIO_TEMP_DIR", str(temp_dir))
        app = build_demo(pipe, concurrency=4)
        url = launch(app, block=False)
        try:
            yield url.rstrip("/")
        finally:
            app.close()


def interleaving_model_dir(tmp_path_factory: pytest.TempPathFactory, text_tokenizer: TextTokenizer) -> Path:
    """A saved :func:`interleaving_model`."""
    path = tmp_path_factory.mktemp("model") / "interleaving-tiny"
    interleaving_model(text_tokenizer).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return default_model_path()


@pytest.fixture(scope="module")
def pipe(model_dir: Path) -> AnyGenPipeline:
    return load_pipe(model_dir)


@pytest.fixture(scope="module")
def server(pipe: AnyGenPipeline, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with serve(pipe, tmp_path_factory.mktemp("gradio")) as url:
        yield url


@pytest.fixture()
def client(server: str, tmp_path: Path) -> Client:
    return Client(server, verbose=False, download_files=False)


# ---- helpers --------------------------------------------------------------------------------------------------


def chat_args(text: str, seed: int = 0, files: tuple[str, ...] = (), **settings: Any) -> list[Any]:
    values = {**CHAT_DEFAULTS, **settings}
    return [{"text": text, "files": [handle_file(f) for f in files]}, values["max_new_tokens"], seed,
            values["decoder"], values["output_modalities"], values["text_temperature"], values["text_top_k"],
            values["image_temperature"], values["image_top_k"], values["audio_temperature"], values["audio_top_k"]]


def read_file(server: str, value: Any) -> bytes:
    """Bytes of a file output, fetched through the server's file route as a browser would."""
    url = value.get("url") or f"{server}/gradio_api/file={value['path']}" if isinstance(value, dict) else None
    return httpx.get(url or f"{server}/gradio_api/file={value}").raise_for_status().content


def parts(server: str, message: dict) -> list[tuple[str, Any]]:
    """A chat message as ``(kind, value)``: text, or decoded pixels / samples of images and audio."""
    out = []
    for item in message["content"]:
        if item["type"] == "text":
            out.append(("text", item["text"]))
            continue
        data = read_file(server, item["file"])
        if item["file"]["path"].endswith(".png"):
            out.append(("image", np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))))
        else:
            samples, rate = sf.read(io.BytesIO(data), dtype="int16")
            out.append(("audio", (rate, samples)))
    return out


def digest(items: list[tuple[str, Any]]) -> list[tuple[str, str]]:
    as_bytes = {"text": str.encode, "image": np.ndarray.tobytes,
                "audio": lambda v: str(v[0]).encode() + v[1].tobytes()}
    return [(kind, hashlib.sha256(as_bytes[kind](value)).hexdigest()) for kind, value in items]


def chat(client: Client, server: str, *args: Any) -> tuple[list[list[dict]], list[tuple[str, Any]]]:
    job = client.submit(*args, api_name="/chat")
    job.result(timeout=120)
    updates = [out[0] for out in job.outputs()]
    return updates, parts(server, updates[-1][-1])


# ---- every tab end to end -------------------------------------------------------------------------------------


def test_chat_streams_an_image_answer(client: Client, server: str) -> None:
    updates, answer = chat(client, server, *chat_args("draw a red circle", seed=1, max_new_tokens=80))
    assert len(updates) > 2, "the answer should stream in several updates"
    assert updates[0][0] == {"role": "user", "metadata": None,
                             "content": [{"text": "draw a red circle", "type": "text"}], "options": None}
    image = next(v for k, v in answer if k == "image")
    assert image.shape == (192, 192, 3)  # 64 x 64 px, enlarged 3x
    fresh = Client(server, verbose=False, download_files=False)  # a new session: no earlier turns to feed back
    again = chat(fresh, server, *chat_args("draw a red circle", seed=1, max_new_tokens=80))[1]
    assert digest(again) == digest(answer)


def test_chat_text_temperature_zero_is_greedy_and_the_default(client: Client, server: str) -> None:
    """The chat's text slider starts where ``pipe.generate`` does (greedy, 0); at 0 the seed does not change the
    text, sampled text does; a negative temperature is refused."""
    def text(seed: int, temperature: float) -> list[str]:  # each in a new session: no earlier turns fed back
        fresh = Client(server, verbose=False, download_files=False)
        answer = chat(fresh, server, *chat_args("how many shapes?", seed=seed, max_new_tokens=12,
                                                output_modalities=[], text_temperature=temperature))[1]
        return [v for k, v in answer if k == "text"]

    assert text(0, 0.0) == text(1, 0.0)
    assert len({tuple(text(seed, 2.0)) for seed in range(3)}) > 1
    with pytest.raises(AppError, match="less than minimum value 0"):  # Gradio checks the slider's range
        client.predict(*chat_args("hi", text_temperature=-1.0), api_name="/chat")
    config = httpx.get(f"{server}/config").json()
    sliders = {c["props"].get("label"): c["props"] for c in config["components"] if c.get("type") == "slider"}
    assert sliders["text temperature (0 = greedy)"]["value"] == 0.0
    assert sliders["image temperature (0 = greedy)"]["value"] == 1.0


def test_chat_streams_an_audio_answer(client: Client, server: str) -> None:
    answer = chat(client, server, *chat_args(PLAY, seed=2, max_new_tokens=60, output_modalities=["audio"]))[1]
    rate, samples = next(v for k, v in answer if k == "audio")
    assert rate == 16000 and samples.size > 0


def test_chat_reads_image_and_audio_uploads(client: Client, server: str, tmp_path: Path) -> None:
    Image.new("RGB", (48, 40), "red").save(tmp_path / "red.png")
    sf.write(tmp_path / "tone.wav", 0.3 * np.sin(np.linspace(0, 800, 16000)), 16000)
    updates, answer = chat(client, server, *chat_args("what is this?", seed=1, max_new_tokens=40,
                                                      files=(str(tmp_path / "red.png"), str(tmp_path / "tone.wav")),
                                                      output_modalities=["image"]))
    user = parts(server, updates[-1][0])
    assert [kind for kind, _ in user] == ["image", "audio", "text"]
    assert answer and "audio" not in {kind for kind, _ in answer}


def test_text_to_image_gallery_is_seeded(client: Client, server: str) -> None:
    def run(seed: int) -> list[bytes]:
        gallery = client.predict("a red circle", "", 3, 2.0, 1.0, 0, seed, "vq", api_name="/text_to_image")
        return [np.asarray(Image.open(io.BytesIO(read_file(server, g["image"])))).tobytes() for g in gallery]

    first = run(0)
    assert len(first) == 3 and run(0) == first and run(1) != first


def test_edit_tab_edits_a_drawn_source(client: Client, server: str, tmp_path: Path) -> None:
    source = tmp_path / "source.webp"
    source.write_bytes(read_file(server, client.predict(api_name="/draw_source")))
    edited = client.predict(handle_file(str(source)), "make it blue", 2.0, 1.5, 1.0, 0, 0, "vq", api_name="/edit_image")
    assert Image.open(io.BytesIO(read_file(server, edited))).size == (256, 256)


def test_speech_tab_returns_audio(client: Client, server: str) -> None:
    result = client.predict("hello", 1.0, 1.0, 0, 0, 0.5, api_name="/speak")
    samples, rate = sf.read(io.BytesIO(read_file(server, result)))
    assert rate == 16000 and 0 < len(samples) <= 8000


# ---- errors and security -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("api_name, args, match", [
    ("/speak", ("   ", 1.0, 1.0, 0, 0, 0.5), "non-empty"),
    ("/chat", chat_args(""), "type a message"),
    ("/text_to_image", ("a", "", 1, 2.0, 1.0, 0, -1, "vq"), "seed|minimum"),
    ("/edit_image", (None, "x", 2.0, 1.5, 1.0, 0, 0, "vq"), "source image"),
])
def test_errors_are_short_messages(client: Client, api_name: str, args: tuple, match: str) -> None:
    with pytest.raises(AppError, match=match) as info:
        client.predict(*args, api_name=api_name)
    message = str(info.value)
    assert "Traceback" not in message and "/tmp" not in message and len(message) < 300


def test_a_non_image_upload_is_refused_without_a_path(client: Client, tmp_path: Path) -> None:
    fake = tmp_path / "secret.png"
    fake.write_bytes(b"not an image at all")
    with pytest.raises(AppError) as info:
        client.predict(*chat_args("hi", files=(str(fake),)), api_name="/chat")
    assert str(tmp_path) not in str(info.value) and "Traceback" not in str(info.value)


@pytest.mark.parametrize("route", ["/gradio_api/file=/etc/passwd", "/gradio_api/file=../../../../etc/passwd",
                                   "/gradio_api/file=%2Fetc%2Fpasswd", "/gradio_api/file=..%2F..%2F..%2Fetc%2Fpasswd",
                                   "/file=/etc/passwd", "/gradio_api/file={temp}/../../../etc/passwd",
                                   "/gradio_api/file={cwd}/pyproject.toml", "/gradio_api/file={model}/config.json"])
def test_file_routes_refuse_paths_outside_the_cache(server: str, route: str, model_dir: Path,
                                                    tmp_path_factory: pytest.TempPathFactory) -> None:
    url = server + route.format(temp=tmp_path_factory.getbasetemp(), cwd=Path.cwd(), model=model_dir)
    response = httpx.get(url)
    assert response.status_code in (403, 404) and "root:" not in response.text and "vocab" not in response.text


def test_the_server_binds_localhost_and_caps_uploads(server: str, tmp_path: Path, client: Client) -> None:
    assert server.startswith("http://127.0.0.1:")
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + bytes(6 * 1024 * 1024))  # over the 5 MB cap
    with big.open("rb") as f:
        response = httpx.post(f"{server}/gradio_api/upload", files={"files": ("big.png", f, "image/png")})
    assert response.status_code == 413
    with pytest.raises(Exception, match="413|too large|exceeds"):
        client.predict(handle_file(str(big)), "x", 2.0, 1.5, 1.0, 0, 0, "vq", api_name="/edit_image")


def png_bomb(path: Path, side: int = 12000) -> Path:
    """A ``side`` x ``side`` greyscale PNG of 140 KB (12000 px): 144 M pixels, written row by row, never decoded."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(bytes(side + 1)) for _ in range(side)) + packer.flush()  # filter 0 + zeros
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)  # 8-bit greyscale, no interlace
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def _memory_mb(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text())[1]) // 1024


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's peak-RSS counters")
@pytest.mark.parametrize("api_name", ["/edit_image", "/chat"])
def test_an_image_bomb_is_refused_before_it_is_decoded(client: Client, tmp_path: Path, api_name: str) -> None:
    bomb = png_bomb(tmp_path / "bomb.png")
    assert bomb.stat().st_size < 200_000 and Image.open(bomb).size == (12000, 12000)
    args = ((handle_file(str(bomb)), "make it red", 2.0, 1.5, 1.0, 0, 0, "vq") if api_name == "/edit_image"
            else chat_args("what is this?", files=(str(bomb),)))
    Path("/proc/self/clear_refs").write_text("5")  # the peak RSS restarts from now (the server runs in this process)
    before, start = _memory_mb("VmRSS"), time.perf_counter()
    with pytest.raises(AppError, match="12000x12000 .* more than max_pixels"):
        client.predict(*args, api_name=api_name)
    grew = _memory_mb("VmHWM") - before
    print(f"{api_name}: refused in {time.perf_counter() - start:.2f} s, peak RSS +{grew} MB")
    assert grew < 100  # decoding it takes 144 MB as greyscale, 430 MB more as RGB (measured +690 MB when it did)


def test_edit_uploads_reach_the_handler_as_files() -> None:
    assert upload_path({"path": "/tmp/gradio/x/a.png", "orig_name": "a.png"}) == "/tmp/gradio/x/a.png"
    assert upload_path("/tmp/a.png") == "/tmp/a.png"
    with pytest.raises(InvalidArgumentError, match="upload a source image"):
        upload_path({"path": None})


@pytest.mark.parametrize("text, size", [("5mb", 5 * 1024**2), ("500 KB", 500 * 1024), ("1048576", 1048576),
                                        ("1gb", 1024**3), (7, 7)])
def test_max_file_size_reads_gradio_units(text: str | int, size: int) -> None:
    assert parse_file_size(text) == size


@pytest.mark.parametrize("text", ["banana", "0mb", "-5mb", "5 tb", "1.5mb", ""])
def test_max_file_size_refuses_what_gradio_cannot_read(text: str) -> None:
    with pytest.raises(InvalidArgumentError, match="--max-file-size"):
        parse_file_size(text)


def test_concurrent_requests_match_the_same_requests_one_by_one(server: str, tmp_path: Path) -> None:
    requests = [("/chat", chat_args("a red circle", seed=s, max_new_tokens=70)) for s in (1, 2, 3)]
    requests += [("/text_to_image", ("a blue square", "", 2, 2.0, 1.0, 0, s, "vq")) for s in (3, 4)]

    def run(request: tuple[str, list]) -> list[tuple[str, str]]:
        api_name, args = request
        client = Client(server, verbose=False, download_files=False)
        if api_name == "/chat":
            return digest(chat(client, server, *args)[1])
        gallery = client.predict(*args, api_name=api_name)
        return digest([("image", np.asarray(Image.open(io.BytesIO(read_file(server, g["image"]))))) for g in gallery])

    alone = [run(r) for r in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(run, requests))
    assert together == alone
    assert len({str(d) for d in alone}) == len(requests)  # different seeds, different results


# ---- pieces -----------------------------------------------------------------------------------------------------


def test_a_closed_generation_stops_within_a_step(pipe: AnyGenPipeline) -> None:
    steps: list[int] = []

    def counted() -> Iterator[Any]:
        for event in pipe.stream([TextSegment(PLAY)], max_new_tokens=300,
                                 generator=torch.Generator().manual_seed(0)):
            steps.append(1)
            yield event

    worker = EventThread(counted)
    next(worker.batches(interval=0.0))
    assert worker.close(timeout=10)
    seen = len(steps)
    time.sleep(0.2)
    assert len(steps) == seen < 100
    assert not any(t.name == "anygen-demo-generate" and t.is_alive() for t in threading.enumerate()
                   if t is worker._thread)


def test_partial_images_grey_out_rows_not_generated_yet(pipe: AnyGenPipeline) -> None:
    codes = torch.arange(9) * 50  # 9 of 64 codes (8 x 8 grid): one full row and one cell of the next
    image = np.asarray(partial_image(pipe, codes, 64))
    assert image.shape == (192, 192, 3)  # rows of 24 px
    grey = round(0.85 * 255)
    assert (image[-6 * 24:] == grey).all() and not (image[:24] == grey).all()


def test_short_messages_hide_paths_and_internals() -> None:
    err = MediaError("/tmp/gradio/abc123/secret.png: cannot decode image (truncated)\nmore details")
    assert short_message(err) == "secret.png: cannot decode image (truncated)"
    assert "internal error" in short_message(KeyError("/etc/passwd"))


def test_read_message_checks_inputs(tmp_path: Path) -> None:
    long_audio = tmp_path / "long.wav"
    sf.write(long_audio, np.zeros(8000 * 11, dtype=np.float32), 8000)
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(MediaError, match="at most 10 s"):
        read_message({"text": "", "files": [str(long_audio)]})
    with pytest.raises(MediaError, match="image and audio"):
        read_message({"text": "", "files": [str(tmp_path / "notes.txt")]})
    with pytest.raises(InvalidArgumentError, match="at most 2000"):
        read_message({"text": "x" * 2001, "files": []})
    with pytest.raises(InvalidArgumentError, match="type a message"):
        read_message(None)


def test_cli_defaults_and_missing_gradio(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    import argparse
    import importlib.util

    parser = argparse.ArgumentParser()
    demo_module.add_arguments(parser)
    args = parser.parse_args(["--model", "m"])
    assert (args.host, args.port, args.share, args.max_file_size) == ("127.0.0.1", None, False, "5mb")
    spec = importlib.util.spec_from_file_location("apps_demo", Path(__file__).parents[1] / "apps" / "demo.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as done:
        script.run(["--help"])
    assert done.value.code == 0 and "--host" in capsys.readouterr().out
    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ImportError, match=r"anygen\[demo\]"):
        demo_module.main(args)


def test_cancelling_a_chat_stops_its_generation(client: Client) -> None:
    def generating() -> int:
        return sum(t.name == "anygen-demo-generate" and t.is_alive() for t in threading.enumerate())

    job = client.submit(*chat_args(PLAY, max_new_tokens=440), api_name="/chat")
    deadline = time.monotonic() + 60
    while generating() == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert generating() == 1
    time.sleep(0.3)
    cancelled = time.monotonic()
    job.cancel()
    while generating() and time.monotonic() < cancelled + 10:
        time.sleep(0.02)
    stopped = time.monotonic() - cancelled
    print(f"stopped {stopped:.2f} s after the cancel")
    assert generating() == 0 and stopped < 2.0  # a whole 440-token answer takes far longer
