"""What crosses the HTTP boundary of ``anygen serve``: limits, OpenAI-style errors, media in and media out.

Media come in only as bytes inside the request: ``data:`` URLs holding base64 PNG or JPEG, base64 WAV, or uploaded
files. A URL is never fetched and no user string ever names a server file. Every size is bounded before decoding.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Any, Sequence

import soundfile as sf
import torch
from PIL import Image

from anygen.audio import load_audio
from anygen.errors import MediaError
from anygen.image import load_image, to_pil
from anygen.types import AudioSegment, ImageSegment, Segment, TextSegment

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
IMAGE_TYPES = {"image/png": PNG_MAGIC, "image/jpeg": JPEG_MAGIC, "image/jpg": JPEG_MAGIC}
DATA_URL = re.compile(r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?:;[\w.+-]+=[\w.+-]+)*;base64,(?P<data>.*)$", re.DOTALL)


@dataclass(frozen=True)
class Limits:
    """Bounds on one request (each a 4xx when exceeded) and on the server's time for it."""

    max_body_bytes: int = 16 * 2**20
    max_prompt_chars: int = 4000
    max_images: int = 4  # n of the image endpoints
    max_image_pixels: int = 2048 * 2048
    max_audio_seconds: float = 30.0
    max_tokens: int = 512  # also capped by the scheduler's cache length
    request_timeout: float = 300.0


class ApiError(Exception):
    """An error answered as OpenAI's ``{"error": {"message", "type", "param", "code"}}`` with ``status``."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param, code)


# ---- media in ------------------------------------------------------------------------------------------------


def decode_base64(data: str, param: str) -> bytes:
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as err:
        raise bad_request(f"{param} is not valid base64 ({err})", param, "invalid_base64") from err


def image_from_bytes(data: bytes, param: str, limits: Limits) -> Image.Image:
    """A PNG or JPEG file's bytes as an RGB image (size checked before decoding)."""
    if not data.startswith((PNG_MAGIC, JPEG_MAGIC)):
        raise bad_request(f"{param} must be a PNG or JPEG image", param, "unsupported_media_type")
    try:
        return load_image(data, max_pixels=limits.max_image_pixels)
    except MediaError as err:
        raise bad_request(f"{param}: {err}", param, "invalid_image") from err


def image_from_data_url(url: str, param: str, limits: Limits) -> Image.Image:
    """``data:image/png;base64,...`` (or JPEG) -> image; any other URL is refused, never fetched."""
    match = DATA_URL.match(url)
    if match is None:
        raise bad_request(f"{param} must be a data: URL with base64 PNG or JPEG bytes (data:image/png;base64,...); "
                          "the server never fetches remote URLs", param, "unsupported_url")
    mime = (match["mime"] or "").lower()
    if mime not in IMAGE_TYPES:
        raise bad_request(f"{param} has media type {mime or 'none'!r}; only image/png and image/jpeg are accepted",
                          param, "unsupported_media_type")
    return image_from_bytes(decode_base64(match["data"], param), param, limits)


def audio_from_bytes(data: bytes, param: str, limits: Limits) -> tuple[torch.Tensor, int]:
    """A WAV (or FLAC / OGG) file's bytes -> ``(mono waveform (T,), sample_rate)``, duration checked first."""
    try:
        seconds = sf.info(io.BytesIO(data)).duration
    except (RuntimeError, OSError, sf.LibsndfileError) as err:
        raise bad_request(f"{param} is not a readable WAV, FLAC or OGG file", param, "unsupported_media_type") from err
    if seconds > limits.max_audio_seconds:
        raise bad_request(f"{param} is {seconds:.1f} s long; the limit is {limits.max_audio_seconds:g} s", param,
                          "audio_too_long")
    try:
        return load_audio(data, sample_rate=None)
    except MediaError as err:
        raise bad_request(f"{param}: {err}", param, "invalid_audio") from err


def message_segments(content: str | Sequence[Any], param: str, limits: Limits) -> list[Segment]:
    """One chat message's content (a string or OpenAI content parts) as segments."""
    if isinstance(content, str):
        return [TextSegment(content)]
    segments: list[Segment] = []
    for j, part in enumerate(content):
        name = f"{param}[{j}]"
        if part.type == "text" and part.text is not None:
            segments.append(TextSegment(part.text))
        elif part.type == "image_url" and part.image_url is not None:
            segments.append(ImageSegment(image_from_data_url(part.image_url.url, f"{name}.image_url.url", limits)))
        elif part.type == "input_audio" and part.input_audio is not None:
            if part.input_audio.format != "wav":
                raise bad_request(f"{name}.input_audio.format={part.input_audio.format!r}; only 'wav' is accepted",
                                  f"{name}.input_audio.format", "unsupported_media_type")
            data = decode_base64(part.input_audio.data, f"{name}.input_audio.data")
            segments.append(AudioSegment(*audio_from_bytes(data, f"{name}.input_audio.data", limits)))
        elif part.type in ("text", "image_url", "input_audio"):
            raise bad_request(f"{name} of type {part.type!r} needs its {part.type!r} field", f"{name}.{part.type}",
                              "missing_field")
        else:
            raise bad_request(f"{name}.type={part.type!r} is not supported; use 'text', 'image_url' (data: URL) or "
                              "'input_audio' (base64 wav)", f"{name}.type", "unsupported_content_type")
    return segments


def prompt_chars(segments: Sequence[Segment]) -> int:
    return sum(len(s.text) for s in segments if isinstance(s, TextSegment))


# ---- media out -----------------------------------------------------------------------------------------------


def png_bytes(image: Image.Image | torch.Tensor) -> bytes:
    picture = image if isinstance(image, Image.Image) else to_pil(image.detach().float().clamp(0, 1)[None])[0]
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


def wav_bytes(waveform: torch.Tensor, sample_rate: int) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, waveform.detach().float().clamp(-1, 1).cpu().numpy(), int(sample_rate), format="WAV",
             subtype="PCM_16")
    return buffer.getvalue()


def pcm_bytes(waveform: torch.Tensor) -> bytes:
    """Raw 16-bit little-endian mono samples (OpenAI's ``pcm`` format)."""
    return (waveform.detach().float().clamp(-1, 1) * 32767).to(torch.int16).cpu().numpy().astype("<i2").tobytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def segment_part(segment: Segment) -> dict[str, Any]:
    """A finished answer segment as an OpenAI content part (media inline as base64)."""
    if isinstance(segment, TextSegment):
        return {"type": "text", "text": segment.text}
    if isinstance(segment, ImageSegment):
        return {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64(png_bytes(segment.image))}}
    if isinstance(segment, AudioSegment):
        return {"type": "input_audio",
                "input_audio": {"data": b64(wav_bytes(segment.waveform, segment.sample_rate)), "format": "wav"}}
    return {"type": "text", "text": f"[{segment.modality} output]"}
