"""``anygen demo``: a Gradio app for every task of a model, with a chat whose answers stream in interleaved.

    anygen demo --model path/to/model                 # serves http://127.0.0.1:7860
    python apps/demo.py --model path/to/model --port 8080

:func:`build_demo` turns a pipeline into a ``gr.Blocks``; nothing lives at module level. Every request gets its own
``torch.Generator`` and its own chat history (a ``gr.State``). A chat answer writes its media once into its own
directory under Gradio's temporary directory (``GRADIO_TEMP_DIR``); the other tabs return PIL images or numpy audio,
which Gradio stores there too. Gradio is the optional ``demo`` extra and is imported only when a demo is built.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import logging
import re
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from anygen.apps.chat import (
    MAX_PIXELS,
    AudioClip,
    ChatSettings,
    Renderer,
    chat_turn,
    check_decoder,
    check_prompt,
    default_decoder,
    enlarge,
    make_generator,
)
from anygen.data.scenes import Scene, ShapeObject, render_scene
from anygen.assets import model_dir
from anygen.errors import AnygenError, InvalidArgumentError, check_range
from anygen.image import load_image
from anygen.pipelines import DECODERS, GENERATE_SAMPLING, AnyGenPipeline, load
from anygen.generation.sampling import SamplingParams
from anygen.apps.showcase import EDIT, IMAGE_PROMPTS, MELODY, QUESTION, QUESTION_SCENE, SPEECH

if TYPE_CHECKING:
    import gradio as gr

log = logging.getLogger(__name__)

MAX_FILE_SIZE = "5mb"
# Chat examples in the corpus' own interleaved formats: a question about a picture (answered with the number
# spoken, then a caption) and a melody request; anygen-tiny gets the answer's format right and its content only
# part of the time (MODEL_CARD.md).
COLOUR_SCENE = Scene([ShapeObject("star", "blue", 0.5, 0.5, 0.25)])
CHAT_EXAMPLES = ((QUESTION, QUESTION_SCENE), ("What colour is the shape?", COLOUR_SCENE),
                 (f"Play these notes: {MELODY}", None), ("Play these notes: D4 F4 A4 D5", None))



class DemoDependencyError(AnygenError, ImportError):
    """Gradio (the ``demo`` extra) is not installed."""


def _gradio() -> Any:
    try:
        import gradio as gr
    except ImportError as err:
        raise DemoDependencyError("the demo needs gradio: pip install 'anygen[demo]'") from err
    return gr


# ---- what the chat shows ------------------------------------------------------------------------------------


_PATH = re.compile(r"(?:[A-Za-z]:)?(?:[\\/][^\s'\"\\/]+)+[\\/]?")


def short_message(err: BaseException) -> str:
    """One line for the user: no traceback, file paths cut to their last part, at most 300 characters."""
    if not isinstance(err, (AnygenError, ValueError)):
        return "the request failed because of an internal error; the server log has the details"
    text = (str(err).strip() or type(err).__name__).splitlines()[0]
    return _PATH.sub(lambda m: re.split(r"[\\/]", m.group(0).rstrip("/\\"))[-1], text)[:300]


def user_errors(fn: Callable) -> Callable:
    """Wrap a handler (plain or generator) so that every failure reaches the user as a short ``gr.Error``."""
    gr = _gradio()

    def convert(err: Exception) -> Exception:
        if isinstance(err, gr.Error):
            return err
        if not isinstance(err, (AnygenError, ValueError)):
            log.error("demo request failed", exc_info=err)
        return gr.Error(short_message(err), print_exception=False)

    @functools.wraps(fn)
    def streaming(*args: Any) -> Iterator[Any]:
        try:
            yield from fn(*args)
        except Exception as err:
            raise convert(err) from None

    @functools.wraps(fn)
    def plain(*args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as err:
            raise convert(err) from None

    return streaming if inspect.isgeneratorfunction(fn) else plain


# ---- the app ------------------------------------------------------------------------------------------------


def build_demo(pipe: AnyGenPipeline, concurrency: int = 2) -> gr.Blocks:
    """The Gradio app for ``pipe``: an interleaved chat, text to image, image editing and speech.

    Args:
        pipe: the pipeline every request uses (read-only: requests share no other state).
        concurrency: how many requests of one kind run at the same time.

    Example:
        >>> demo = build_demo(anygen.load("path/to/model"))   # doctest: +SKIP
        >>> launch(demo)                                        # doctest: +SKIP
    """
    gr = _gradio()
    with gr.Blocks(title="anygen", analytics_enabled=False, delete_cache=(3600, 86400)) as demo:
        gr.Markdown("# anygen\nText, images and audio in and out of one model.")
        with gr.Tab("Chat"):
            _chat_tab(gr, pipe)
        with gr.Tab("Text to image"):
            _image_tab(gr, pipe)
        with gr.Tab("Edit an image"):
            _edit_tab(gr, pipe)
        with gr.Tab("Speech"):
            _speech_tab(gr, pipe)
    demo.queue(default_concurrency_limit=concurrency)
    return demo


def upload_path(value: dict | str | None) -> str:
    """The file of an image input that Gradio did not preprocess: its ``FileData`` dict (or a plain path)."""
    path = value.get("path") if isinstance(value, dict) else value
    if not path:
        raise InvalidArgumentError("upload a source image first")
    return str(path)


def _cache_dir(gr: Any) -> str:
    path = Path(gr.utils.get_upload_folder())  # GRADIO_TEMP_DIR: the only place Gradio serves files from
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def _example_image(gr: Any, scene: Scene, index: int) -> str:
    """A chat example's picture, rendered into Gradio's upload folder (the only place it serves files from)."""
    path = Path(_cache_dir(gr)) / f"anygen-example-{index}.png"
    render_scene(scene, 256).save(path)
    return str(path)


def _default(method: Any, argument: str) -> Any:
    """The pipeline method's own default for ``argument``, so the sliders start where the Python API does."""
    return inspect.signature(method).parameters[argument].default


def _sampling(gr: Any, name: str = "", temperature: float = 1.0, greedy: bool = False) -> list[Any]:
    """Temperature and top-k sliders; with ``greedy``, temperature 0 means greedy (the chat's sliders)."""
    prefix = f"{name} " if name else ""
    low, label = (0.0, f"{prefix}temperature (0 = greedy)") if greedy else (0.05, f"{prefix}temperature")
    return [gr.Slider(low, 2.0, value=temperature, step=0.05, label=label),
            gr.Slider(0, 256, value=0, step=1, label=f"{prefix}top-k (0 = off)")]


def _seed_and_decoder(gr: Any, pipe: AnyGenPipeline) -> list[Any]:
    return [gr.Number(0, precision=0, label="seed", minimum=0),
            gr.Dropdown(list(DECODERS), value=default_decoder(pipe), label="decoder")]


def _chat_tab(gr: Any, pipe: AnyGenPipeline) -> None:
    history = gr.State([])  # what the chat shows
    conversation = gr.State([])  # what the model reads: every turn as segments (anygen.chat_template.Message)
    chatbot = gr.Chatbot(label="chat", height=520, elem_id="chat")
    box = gr.MultimodalTextbox(placeholder="Type a message, attach images or audio", show_label=False,
                               file_types=["image", "audio"], file_count="multiple",
                               sources=["upload", "microphone"], elem_id="chat-input")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop")
        clear = gr.Button("Clear")
    names = list(pipe.model.vocab.modality_names)
    media = names[1:]
    with gr.Accordion("Advanced settings", open=False):
        limit = int(getattr(pipe.model.core.config, "max_position_embeddings", 2048))
        with gr.Row():
            settings = [gr.Slider(8, max(8, limit - 64), value=min(200, limit // 2), step=8, label="max new tokens"),
                        *_seed_and_decoder(gr, pipe),
                        gr.CheckboxGroup(media, value=media, label="the answer may contain")]
        for name in ("text", "image", "audio"):  # the defaults of pipe.generate (GENERATE_SAMPLING)
            default = GENERATE_SAMPLING.get(name, SamplingParams())
            with gr.Row():
                settings += _sampling(gr, name, default.temperature if default.do_sample else 0.0, greedy=True)
    gr.Examples([[{"text": text, "files": [] if scene is None else [_example_image(gr, scene, i)]}]
                 for i, (text, scene) in enumerate(CHAT_EXAMPLES)], inputs=[box])

    def chat(message: dict | None, past: list[dict], turns: list, max_new_tokens: float, seed: float, decoder: str,
             output_modalities: list[str], text_temperature: float, text_top_k: float, image_temperature: float,
             image_top_k: float, audio_temperature: float, audio_top_k: float) -> Iterator[tuple]:
        check_decoder(pipe, decoder)
        pairs = {"text": (text_temperature, text_top_k), "image": (image_temperature, image_top_k),
                 "audio": (audio_temperature, audio_top_k)}
        sampling = {name: SamplingParams(float(t), int(k)) if float(t) != 0 else SamplingParams(do_sample=False)
                    for name, (t, k) in pairs.items() if name in names}
        plan = ChatSettings(int(max_new_tokens), make_generator(seed), sampling, list(output_modalities or []),
                            decoder)
        renderer = Renderer(Path(tempfile.mkdtemp(prefix="anygen-chat-", dir=_cache_dir(gr))))
        for i, (messages, read) in enumerate(chat_turn(pipe, message, past, turns, plan, renderer)):
            yield messages, messages, read, None if i == 0 else gr.skip()

    event = box.submit(user_errors(chat), [box, history, conversation, *settings],
                       [chatbot, history, conversation, box], api_name="chat")
    stop.click(None, cancels=[event])
    clear.click(lambda: ([], [], []), None, [chatbot, history, conversation], api_visibility="private")


def _image_tab(gr: Any, pipe: AnyGenPipeline) -> None:
    with gr.Row():
        with gr.Column():
            prompt = gr.Textbox(IMAGE_PROMPTS[0], label="prompt")
            negative = gr.Textbox(label="negative prompt")
            count = gr.Slider(1, 8, value=4, step=1, label="images")
            run = gr.Button("Generate", variant="primary")
            with gr.Accordion("Advanced settings", open=False):
                controls = [gr.Slider(0, 10, value=_default(pipe.text_to_image, "guidance_scale"), step=0.1,
                                      label="guidance"),
                            *_sampling(gr, temperature=_default(pipe.text_to_image, "temperature")),
                            *_seed_and_decoder(gr, pipe)]
        gallery = gr.Gallery(label="samples", columns=4, object_fit="contain")
    gr.Examples([[p] for p in IMAGE_PROMPTS], inputs=[prompt])

    def text_to_image(prompt: str, negative: str, num_images: float, guidance: float, temperature: float,
                      top_k: float, seed: float, decoder: str) -> list[Image.Image]:
        check_prompt(prompt or "", "prompt")
        images = pipe.text_to_image(prompt or "", negative_prompt=negative or None,
                                    num_images_per_prompt=int(num_images),
                                    guidance_scale=float(guidance), generator=make_generator(seed),
                                    temperature=float(temperature), top_k=int(top_k),
                                    decoder=check_decoder(pipe, decoder)).images
        return [enlarge(image) for image in images]

    run.click(user_errors(text_to_image), [prompt, negative, count, *controls], gallery, api_name="text_to_image")


def _edit_tab(gr: Any, pipe: AnyGenPipeline) -> None:
    with gr.Row():
        with gr.Column():
            source = gr.Image(label="source image", type="filepath", sources=["upload", "clipboard"])
            draw = gr.Button(f"Draw a source image: {EDIT[0]!r}")
        with gr.Column():
            instruction = gr.Textbox(EDIT[1], label="instruction")
            run = gr.Button("Edit", variant="primary")
            with gr.Accordion("Advanced settings", open=False):
                controls = [gr.Slider(0, 10, value=_default(pipe.edit_image, "guidance_scale"), step=0.1,
                                      label="text guidance"),
                            gr.Slider(0, 10, value=_default(pipe.edit_image, "image_guidance_scale"), step=0.1,
                                      label="image guidance"),
                            *_sampling(gr, temperature=_default(pipe.edit_image, "temperature")),
                            *_seed_and_decoder(gr, pipe)]
        result = gr.Image(label="edited", type="pil")

    def edit_image(source: dict | str | None, instruction: str, guidance: float, image_guidance: float,
                   temperature: float, top_k: float, seed: float, decoder: str) -> Image.Image:
        check_prompt(instruction or "", "instruction")
        picture = load_image(upload_path(source), max_pixels=MAX_PIXELS)  # reads the header, then decodes
        (edited,) = pipe.edit_image(picture, instruction or "",
                                    guidance_scale=float(guidance), image_guidance_scale=float(image_guidance),
                                    generator=make_generator(seed), temperature=float(temperature),
                                    top_k=int(top_k), decoder=check_decoder(pipe, decoder)).images
        return enlarge(edited)

    def draw_source() -> Image.Image:
        return enlarge(pipe.text_to_image(EDIT[0], generator=make_generator(0)).images[0])

    # preprocess=False: gr.Image would decode and re-encode the upload before the handler sees it (a 12000 x 12000
    # PNG of 140 KB costs seconds and a gigabyte); the handler gets the uploaded file and checks its size first.
    run.click(user_errors(edit_image), [source, instruction, *controls], result, api_name="edit_image",
              preprocess=False)
    draw.click(user_errors(draw_source), None, source, api_name="draw_source")


def _speech_tab(gr: Any, pipe: AnyGenPipeline) -> None:
    with gr.Row():
        with gr.Column():
            text = gr.Textbox(SPEECH[0], label="text (words, or note names for a melody)")
            run = gr.Button("Speak", variant="primary")
            with gr.Accordion("Advanced settings", open=False):
                controls = [gr.Slider(0, 10, value=_default(pipe.speak, "guidance_scale"), step=0.1,
                                      label="guidance"),
                            *_sampling(gr, temperature=_default(pipe.speak, "temperature")),
                            gr.Number(0, precision=0, label="seed", minimum=0),
                            gr.Slider(0.1, 10.0, value=pipe.max_audio_seconds, step=0.1, label="max seconds")]
        audio = gr.Audio(label="speech", type="numpy")
    gr.Examples([[t] for t in (*SPEECH, MELODY)], inputs=[text])

    def speak(text: str, guidance: float, temperature: float, top_k: float, seed: float,
              max_seconds: float) -> tuple[int, np.ndarray]:
        check_prompt(text or "", "text")
        speech = pipe.speak(text or "", guidance_scale=float(guidance), generator=make_generator(seed),
                            temperature=float(temperature), top_k=int(top_k), max_seconds=float(max_seconds))
        clip = AudioClip.of(speech.audios[0], speech.sample_rate)
        return clip.rate, clip.samples

    run.click(user_errors(speak), [text, *controls], audio, api_name="speak")


# ---- command line -------------------------------------------------------------------------------------------


def launch(demo: gr.Blocks, host: str = "127.0.0.1", port: int | None = None, share: bool = False,
           max_file_size: str | int = MAX_FILE_SIZE, block: bool = True) -> str:
    """Serve ``demo`` (no extra readable paths, uploads capped at ``max_file_size``); returns its local URL."""
    demo.launch(server_name=host, server_port=port, share=share, max_file_size=max_file_size, allowed_paths=None,
                show_error=False, ssr_mode=False, prevent_thread_lock=not block, quiet=not block)
    return str(demo.local_url)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``anygen demo``."""
    parser.add_argument("--model", default="default",
                        help="a saved model directory, or anygen-tiny / default (the shipped model, the default)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1: this machine only; 0.0.0.0 exposes it)")
    parser.add_argument("--port", type=int, default=None, help="port, 1-65535 (default: 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--max-file-size", default=MAX_FILE_SIZE,
                        help="largest accepted upload: bytes, or a number with b, kb, mb or gb (default 5mb)")
    parser.add_argument("--concurrency", type=int, default=2, help="requests of one kind served at once")


_SIZE = re.compile(r"\s*(\d+)\s*([kmg]?b)?\s*", re.IGNORECASE)
_UNITS = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}


def parse_file_size(text: str | int) -> int:
    """``5mb`` -> 5242880 (units as Gradio reads them: b, kb, mb, gb, powers of 1024); an error naming the flag."""
    match = _SIZE.fullmatch(str(text))
    if match is None or int(match[1]) < 1:
        raise InvalidArgumentError(f"--max-file-size={text!r} must be a positive size such as 5mb, 500kb or 1048576")
    return int(match[1]) * _UNITS[(match[2] or "b").lower()]


def main(args: argparse.Namespace) -> int:
    """Check every flag, then load the model and serve the demo until interrupted."""
    _gradio()  # fail before loading the model when the extra is missing
    if args.port is not None:
        check_range("--port", args.port, 1, 65535)
    check_range("--concurrency", args.concurrency, 1, 1024)
    max_file_size = parse_file_size(args.max_file_size)
    demo = build_demo(load(model_dir(args.model)), concurrency=args.concurrency)
    if args.host != "127.0.0.1":
        log.warning("serving on %s: anyone who can reach this address can use the demo", args.host)
    launch(demo, args.host, args.port, args.share, max_file_size)
    return 0
