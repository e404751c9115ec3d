"""Wall time of anygen-tiny's tasks through the Python API on this machine's CPU; writes the ``model-speed``
section of benchmarks/RESULTS.md (the model card quotes it).

Each task runs ``--repeats`` times after one warm-up call, with a fixed seed, and the median is reported:
text-to-image (one 64x64 image with CFG 2, and a batch of 8), editing, captioning (checked and not), speech (one
clip and the default pick; seconds of wall time per second of generated audio) and transcription; the diffusion
decoder is timed at 20 steps when the model has one.

    python benchmarks/model_speed.py --threads 2            # the shipped model
    python benchmarks/model_speed.py --model DIR --threads 2
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, write_section  # noqa: E402

import anygen  # noqa: E402
from anygen.pipelines import CANDIDATES, EDIT_CANDIDATES, SPEAK_CANDIDATES  # noqa: E402
from anygen.data.scenes import render_scene  # noqa: E402
from anygen.evaluation.shapes import ShapesEval  # noqa: E402


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def rows(pipe: anygen.AnyGenPipeline, repeats: int) -> list[tuple[str, str, str]]:
    """``(task, time, note)`` for every task the model has."""
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    prompt = "a red circle above a blue square"
    picture = render_scene(ShapesEval(n_per_category=1, seed=0, split="test").samples[0].scene, 64)
    single = median_seconds(lambda: pipe.text_to_image(prompt, generator=seed(), num_candidates=1), repeats)
    one = median_seconds(lambda: pipe.text_to_image(prompt, generator=seed()), repeats)
    pick8 = median_seconds(lambda: pipe.text_to_image(prompt, generator=seed(), num_candidates=8), repeats)
    eight = median_seconds(lambda: pipe.text_to_image(prompt, num_images_per_prompt=8, generator=seed()), repeats)
    k = CANDIDATES
    out = [("text to image, 1 sample", f"{single:.2f} s",
            "`num_candidates=1`: 64 codes, CFG 2 (cond + uncond in one batch), VQ decoder"),
           ("text to image, 1 image", f"{one:.2f} s", f"the default: the model's pick of {k} samples, which "
            f"decode together ({2 * k} rows with CFG) and are ranked by `candidate_scores`"),
           ("text to image, pick of 8", f"{pick8:.2f} s", "`num_candidates=8`"),
           ("text to image, batch of 8", f"{eight / 8:.3f} s per image", f"{eight:.2f} s for the batch "
            f"({8 * k} samples)")]
    if "image" in pipe.model.decoders:
        diff = median_seconds(lambda: pipe.text_to_image(prompt, generator=seed(), decoder="diffusion",
                                                         num_inference_steps=20), repeats)
        out.append(("text to image, diffusion decoder", f"{diff:.2f} s", "as above, then 20 DDIM steps"))
    instruction = "make the circle green"
    edit_single = median_seconds(lambda: pipe.edit_image(picture, instruction, generator=seed(), num_candidates=1),
                                 repeats)
    edit = median_seconds(lambda: pipe.edit_image(picture, instruction, generator=seed()), repeats)
    caption_raw = median_seconds(lambda: pipe.caption(picture, check=False), repeats)
    caption = median_seconds(lambda: pipe.caption(picture), repeats)
    out += [("edit image, 1 sample", f"{edit_single:.2f} s",
             "`num_candidates=1`: text + image guidance, three branches in one batch"),
            ("edit image", f"{edit:.2f} s", f"the default: the pick of {EDIT_CANDIDATES} samples "
             f"({3 * EDIT_CANDIDATES} rows), ranked against "
             "the model's description of the source with the instruction applied, less how much each changed"),
            ("caption, unchecked", f"{caption_raw:.2f} s", "`check=False`: greedy, up to 48 tokens"),
            ("caption", f"{caption:.2f} s", "the default: greedy, then checked against its near misses in colour "
             "and shape (the picture's likelihood after each)")]
    speech = pipe.speak("hello", generator=seed())
    wave, rate = speech.audios[0], speech.sample_rate
    seconds = max(wave.shape[-1] / rate, 1e-3)
    speak = median_seconds(lambda: pipe.speak("hello", generator=seed()), repeats)
    single = pipe.speak("hello", generator=seed(), num_candidates=1)
    seconds_single = max(single.audios[0].shape[-1] / single.sample_rate, 1e-3)
    speak_single = median_seconds(lambda: pipe.speak("hello", generator=seed(), num_candidates=1), repeats)
    transcribe = median_seconds(lambda: pipe.transcribe(wave, rate), repeats)
    out += [("speak, 1 sample", f"{speak_single / seconds_single:.2f} s per s of audio", f"`num_candidates=1`: "
             f"{seconds_single:.2f} s of audio in {speak_single:.2f} s, CFG 2 (the default), Griffin-Lim included"),
            ("speak", f"{speak / seconds:.2f} s per s of audio", f"the default: the pick of {SPEAK_CANDIDATES} "
             f"clips, {seconds:.2f} s of audio in {speak:.2f} s"),
            ("transcribe", f"{transcribe:.2f} s", f"{seconds:.2f} s clip, greedy")]
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="saved model directory (default: the shipped anygen-tiny)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = anygen.load(args.model)
    table = ["| task | time | note |", "|---|---|---|",
             *(f"| {a} | {b} | {c} |" for a, b, c in rows(pipe, args.repeats))]
    command = "python benchmarks/model_speed.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    body = (f"## Model speed (anygen-tiny through the Python API)\n\nCommand: `{command.strip()}` "
            f"({cpu_name()}, {args.threads} threads, torch {torch.__version__}; median of "
            f"{args.repeats} after a warm-up).\n\n" + "\n".join(table))
    print(body)
    if not args.no_write:
        write_section("model-speed", body)


if __name__ == "__main__":
    main()
