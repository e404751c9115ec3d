"""The chat part of the demo: read a multimodal message, stream the answer as parts, render partial media.

Every turn feeds the model the whole conversation (:meth:`AnyGenPipeline.apply_chat_template`), trimmed from the
oldest turn when it would not fit in the context with the answer's tokens. The model's own answers go back in as
it wrote them: media as the codes it emitted, text as text. Nothing here imports gradio; :mod:`anygen.apps.demo`
wires these functions into the interface.
"""

from __future__ import annotations

import logging
import math
import mimetypes
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from PIL import Image

from anygen.audio import load_audio
from anygen.chat_template import Message
from anygen.errors import InvalidArgumentError, MediaError
from anygen.image import load_image, to_pil
from anygen.pipelines import DECODERS, AnyGenPipeline
from anygen.generation.sampling import SamplingParams
from anygen.generation.streaming import Event, MediaProgress, SegmentDone, TextDelta
from anygen.types import AudioSegment, CodesSegment, ImageSegment, Interleaved, Segment, TextSegment


MAX_PIXELS = 2048 * 2048
MAX_AUDIO_SECONDS = 10.0
MAX_PROMPT_CHARS = 2000
DISPLAY_SIZE = 256  # generated images are enlarged (nearest neighbour) to at least this many pixels
CHAT_IMAGE_SIZE = 160  # ... and to this size inside chat messages
log = logging.getLogger(__name__)



@dataclass
class AudioClip:
    """Audio for display: ``samples`` int16 ``(T,)`` at ``rate`` Hz (what ``gr.Audio`` takes as a value)."""

    rate: int
    samples: np.ndarray

    @classmethod
    def of(cls, waveform: torch.Tensor, rate: int) -> AudioClip:
        return cls(int(rate), (waveform.detach().float().clamp(-1, 1) * 32767).to(torch.int16).cpu().numpy())


Part = str | Image.Image | AudioClip  # one piece of a chat message


def enlarge(image: Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """Scale up by a whole factor with nearest neighbour so tiny generated images stay crisp."""
    factor = max(1, math.ceil(size / max(image.size)))
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def partial_image(pipe: AnyGenPipeline, codes: torch.Tensor, total: int) -> Image.Image:
    """The image so far: missing codes repeat the last one, rows not generated yet are greyed out."""
    tok = pipe.model.tokenizers["image"]
    height = pipe.image_size[0]
    with torch.inference_mode():
        padded = torch.cat([codes, codes[-1:].expand(total - codes.numel())])  # (total,)
        image = tok.decode(padded[None], pipe.image_size)[0].clamp(0, 1)  # (3, H, W)
        shown = torch.arange(height) < math.ceil(height * codes.numel() / total)  # (H,)
        image = torch.where(shown[None, :, None], image, torch.full_like(image, 0.85))
        return enlarge(to_pil(image)[0], CHAT_IMAGE_SIZE)


def media_part(segment: Segment) -> Part:
    """A finished media segment as something the chat can show."""
    if isinstance(segment, ImageSegment):
        image = segment.image
        return enlarge(image if isinstance(image, Image.Image) else to_pil(image.detach().clamp(0, 1))[0],
                       CHAT_IMAGE_SIZE)
    if isinstance(segment, AudioSegment):
        return AudioClip.of(segment.waveform, segment.sample_rate)
    return f"[{segment.modality} output]"


@dataclass
class Answer:
    """The assistant's message while it streams: finished parts, the last one possibly still being written."""

    pipe: AnyGenPipeline
    parts: list[Part] = field(default_factory=list)
    open: bool = False
    said: Interleaved = field(default_factory=list)  # the finished segments, as the next turn's prompt holds them
    _codes: torch.Tensor | None = None  # the open media span's codes so far
    _text: str = ""  # the open text segment so far

    def apply(self, event: Event) -> None:
        """Update the parts for one streaming event."""
        if isinstance(event, TextDelta):
            ongoing = self.open and isinstance(self.parts[-1], str)
            self._put(self.parts[-1] + event.text if ongoing else event.text)
            self._text += event.text
        elif isinstance(event, MediaProgress):
            self._codes = event.codes
            self._put(self._progress(event))
        elif isinstance(event, SegmentDone):
            self._finish(event.segment)

    def segments(self) -> Interleaved:
        """What the model has said so far: finished segments, and the text it is writing (a cut-off media span
        is left out: it could not be read back)."""
        return [*self.said, *([TextSegment(self._text)] if self._text else [])]

    def _finish(self, segment: Segment) -> None:
        if not isinstance(segment, TextSegment):  # (a picture as the stream's decoder drew it)
            self._put(media_part(segment))
        codes = self._codes
        self.said.append(segment if isinstance(segment, TextSegment) or codes is None else
                         CodesSegment(segment.modality, codes))
        self._codes, self._text = None, ""
        self.open = False

    def _put(self, part: Part) -> None:
        if self.open:
            self.parts[-1] = part
        else:
            self.parts.append(part)
        self.open = True

    def _progress(self, event: MediaProgress) -> Part:
        if event.modality == "image" and event.codes.ndim == 1:
            return partial_image(self.pipe, event.codes, event.total)
        return f"[{event.modality}: {100 * event.codes.numel() // max(event.total, 1)}%]"


@dataclass
class Renderer:
    """Writes each media part of one request once, as a file in that request's own directory.

    Parts are files, not Gradio components: a component would be encoded again on every streamed update, and
    Gradio rewrites a cached file in place while a browser may still be reading it.
    """

    directory: Path
    files: dict[int, tuple[Part, dict]] = field(default_factory=dict)

    def message(self, role: str, parts: list[Part]) -> dict:
        """A chat message whose content is text and ``{"path": ...}`` file references."""
        return {"role": role, "content": [p if isinstance(p, str) else self._file(p) for p in parts]}

    def _file(self, part: Image.Image | AudioClip) -> dict:
        if id(part) not in self.files:  # the part is kept alive with its file, so its id is never reused
            path = self.directory / f"{len(self.files)}.{'png' if isinstance(part, Image.Image) else 'wav'}"
            if isinstance(part, Image.Image):
                part.save(path)
            else:
                sf.write(path, part.samples, part.rate, subtype="PCM_16")
            self.files[id(part)] = (part, {"path": str(path)})
        return self.files[id(part)][1]


# ---- requests -----------------------------------------------------------------------------------------------


def read_message(message: dict | None) -> tuple[Interleaved, list[Part]]:
    """A multimodal textbox value -> the prompt's segments and what to show for the user's turn.

    The prompt holds the typed text before the attachments, as the training documents ask about a picture or a
    sound ("How many shapes are in this picture?" then the picture); the turn shows the attachments first."""
    message = message or {}
    segments: Interleaved = []
    shown: list[Part] = []
    for item in message.get("files") or []:
        path = item if isinstance(item, str) else item.get("path")  # a file Gradio saved from an upload
        kind = (mimetypes.guess_type(str(path))[0] or "").split("/")[0]
        if kind == "image":
            image = load_image(path, max_pixels=MAX_PIXELS)
            segments.append(ImageSegment(image))
            shown.append(enlarge(image, CHAT_IMAGE_SIZE))
        elif kind == "audio":
            wave, rate = _read_audio(path)
            segments.append(AudioSegment(wave, rate))
            shown.append(AudioClip.of(wave, rate))
        else:
            raise MediaError("only image and audio files can be attached")
    text = str(message.get("text") or "")
    check_prompt(text)
    if text.strip():
        segments.insert(0, TextSegment(text))
        shown.append(text)
    if not segments:
        raise InvalidArgumentError("type a message or attach an image or audio file")
    return segments, shown


def check_prompt(text: str, name: str = "message") -> None:
    """Refuse prompts longer than :data:`MAX_PROMPT_CHARS` before tokenizing them."""
    if len(text) > MAX_PROMPT_CHARS:
        raise InvalidArgumentError(f"{name} has {len(text)} characters; the demo accepts at most {MAX_PROMPT_CHARS}")


def _read_audio(path: str) -> tuple[torch.Tensor, int]:
    try:
        seconds = sf.info(str(path)).duration
    except (RuntimeError, OSError, sf.LibsndfileError) as err:
        raise MediaError("cannot read the audio file (wav, flac or ogg expected)") from err
    if seconds > MAX_AUDIO_SECONDS:
        raise MediaError(f"the audio is {seconds:.1f} s long; the demo accepts at most {MAX_AUDIO_SECONDS:g} s")
    return load_audio(path, sample_rate=None)


def make_generator(seed: float | None) -> torch.Generator:
    """A fresh generator for one request; ``seed`` must be a whole number in [0, 2**63)."""
    value = 0 if seed is None else seed
    if isinstance(value, float) and not value.is_integer() or not 0 <= value < 2**63:
        raise InvalidArgumentError(f"seed={seed!r} must be a whole number in [0, 2**63)")
    return torch.Generator().manual_seed(int(value))


def default_decoder(pipe: AnyGenPipeline) -> str:
    """What the demo and the showcase render pictures with unless told otherwise: the model's upscale decoder when it
    has one (e.g. 256x256 px from the codes of a 64x64 image, in one pass), else its diffusion decoder when that
    renders larger than the image tokenizer, else the VQ decoder (a diffusion decoder at the tokenizer's own size is
    slower and, for anygen-tiny, no sharper)."""
    for decoder in ("upscale", "diffusion"):
        if pipe.output_size(decoder) != pipe.image_size:
            return decoder
    return "vq"


def check_decoder(pipe: AnyGenPipeline, decoder: str) -> str:
    """The decoder name if ``pipe``'s model can render with it, else a clear error (before anything is sampled)."""
    if decoder not in DECODERS:
        raise InvalidArgumentError(f"decoder={decoder!r} is not available; choose one of {list(DECODERS)}")
    return pipe.check_decoder(decoder)


class EventThread:
    """Run one generation in its own thread and hand its events over a queue.

    The sampler keeps torch's (per-thread) inference mode on across its steps, while Gradio resumes a streaming
    handler on whichever worker thread is free; one thread per generation keeps every step on the same thread.
    :meth:`close` makes the thread stop after the step it is running.
    """

    _END = object()

    def __init__(self, start: Callable[[], Iterator[Event]]) -> None:
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(start,), daemon=True, name="anygen-demo-generate")
        self._thread.start()

    def _run(self, start: Callable[[], Iterator[Event]]) -> None:
        try:
            events = start()
            for event in events:
                if self._stop.is_set():
                    events.close()
                    break
                self._queue.put(event)
        except BaseException as err:  # handed to the consumer, which raises it in the request
            self._queue.put(err)
        finally:
            self._queue.put(self._END)

    def batches(self, interval: float = 0.25) -> Iterator[list[Event]]:
        """Lists of events: each waits for one event, then gathers more for up to ``interval`` seconds."""
        done = False
        while not done:
            batch = [self._queue.get()]
            deadline = time.monotonic() + interval
            while batch[-1] is not self._END and (left := deadline - time.monotonic()) > 0:
                try:
                    batch.append(self._queue.get(timeout=left))
                except queue.Empty:
                    break
            done = batch[-1] is self._END
            events = [e for e in batch if e is not self._END]
            for event in events:
                if isinstance(event, BaseException):
                    raise event
            if events:
                yield events

    def close(self, timeout: float | None = None) -> bool:
        """Ask the thread to stop; returns whether it has ended within ``timeout`` seconds."""
        self._stop.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()


@dataclass
class ChatSettings:
    """How one chat answer is sampled (built per request from the settings panel)."""

    max_new_tokens: int
    generator: torch.Generator
    sampling: dict[str, SamplingParams]
    output_modalities: list[str]
    decoder: str = "vq"  # how finished images are rendered (partial ones always use the tokenizer's decoder)


def chat_turn(pipe: AnyGenPipeline, message: dict | None, history: list[dict] | None,
              conversation: list[Message] | None, settings: ChatSettings,
              renderer: Renderer) -> Iterator[tuple[list[dict], list[Message]]]:
    """Answer one chat message given the earlier turns.

    Yields, each time the answer grows, the whole history as Gradio messages and the conversation as the model
    reads it (earlier turns that still fit, this message, the answer so far), so a stopped answer is kept too.
    """
    segments, shown = read_message(message)
    turns = fit_context(pipe, [*(conversation or []), Message("user", segments)], settings.max_new_tokens)
    history = [*(history or []), renderer.message("user", shown)]
    answer = Answer(pipe)
    yield [*history, renderer.message("assistant", [])], turns
    prompt = pipe.apply_chat_template(turns)
    worker = EventThread(lambda: pipe.stream(prompt, max_new_tokens=settings.max_new_tokens,
                                             generator=settings.generator, sampling=settings.sampling,
                                             output_modalities=settings.output_modalities,
                                             decoder=settings.decoder))
    try:
        for events in worker.batches():
            for event in events:
                answer.apply(event)
            yield [*history, renderer.message("assistant", answer.parts)], _with_answer(turns, answer)
    finally:
        worker.close(timeout=0)  # a closed request (stop button, disconnect) ends the generation after its step
    yield [*history, renderer.message("assistant", answer.parts or ["(no output)"])], _with_answer(turns, answer)


def fit_context(pipe: AnyGenPipeline, turns: list[Message], max_new_tokens: int) -> list[Message]:
    """``turns`` without their oldest exchanges, until the prompt and the answer fit in the model's context (a
    system message stays; the last message always stays, and the pipeline says if it alone is too long)."""
    limit = int(getattr(pipe.model.core.config, "max_position_embeddings", 0) or 2**31)
    while len(pipe.prompt_ids(pipe.apply_chat_template(turns))) + max_new_tokens > limit:
        keep = 1 if turns[0].role == "system" else 0
        rest = turns[keep + 1:]
        while len(rest) > 1 and rest[0].role != "user":  # a conversation restarts at a user's turn
            rest = rest[1:]
        if len(turns) - keep <= 1 or not rest:
            break
        turns = [*turns[:keep], *rest]
    return turns


def _with_answer(turns: list[Message], answer: Answer) -> list[Message]:
    said = answer.segments()
    return [*turns, Message("assistant", said)] if said else turns


# ---- errors -------------------------------------------------------------------------------------------------

