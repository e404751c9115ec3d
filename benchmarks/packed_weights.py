"""What the packed weight copies buy anygen-tiny's tasks: each call with the core's matrix products over its
oneDNN-packed copies and over the weights in place (``fast_decode.PACK_MAX_BYTES = 0``), the two alternated call by
call in one process; writes the ``packed-weights-<maker>`` section of benchmarks/RESULTS.md (``intel``, ``amd``): the
winner depends on the CPU's maker, and the pipelines pack by default except on Intel CPUs
(``fast_decode.PACK_BY_DEFAULT``).

    python benchmarks/packed_weights.py --threads 2 --repeats 5
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, cpu_vendor, publish  # noqa: E402

import anygen  # noqa: E402
from anygen.data.scenes import render_scene  # noqa: E402
from anygen.evaluation.shapes import ShapesEval  # noqa: E402
from anygen.generation import fast_decode  # noqa: E402


PACKED = 2 * 2**30  # a fast_decode.PACK_MAX_BYTES that packs anygen-tiny's weights


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def api_calls(pipe: Any) -> dict[str, Callable[[], Any]]:
    """The timed calls, by name: each task's default and its single sample, on fixed inputs and seeds."""
    seed = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    prompt = "a red circle above a blue square"
    picture = render_scene(ShapesEval(n_per_category=1, seed=0, split="test").samples[0].scene, 64)
    return {
        "text to image (default: pick of 16)": lambda: pipe.text_to_image(prompt, generator=seed()),
        "text to image, 1 sample": lambda: pipe.text_to_image(prompt, generator=seed(), num_candidates=1),
        "edit image (default: pick of 8)": lambda: pipe.edit_image(picture, "make the circle green",
                                                                   generator=seed()),
        "caption (default: checked)": lambda: pipe.caption(picture),
        "speak (default: pick of 8)": lambda: pipe.speak("hello", generator=seed()),
        "speak, 1 sample": lambda: pipe.speak("hello", generator=seed(), num_candidates=1),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = anygen.load()
    pipe.set_progress_bar_config(disable=True)
    tasks = api_calls(pipe)
    limit, default, core, copies = fast_decode.PACK_MAX_BYTES, fast_decode.PACK_BY_DEFAULT, pipe.model.core, None
    seconds: dict[tuple[str, bool], list[float]] = {}
    try:
        for round_ in range(args.repeats + 1):  # the first round warms up (and packs), uncounted
            for packed in (True, False) if round_ % 2 else (False, True):
                fast_decode.PACK_MAX_BYTES, fast_decode.PACK_BY_DEFAULT = (PACKED, True) if packed else (0, default)
                if packed and copies is not None:  # the copies made before (reading in place dropped them)
                    fast_decode._packed[core] = copies
                for name, task in tasks.items():
                    start = time.perf_counter()
                    task()
                    if round_:
                        seconds.setdefault((name, packed), []).append(time.perf_counter() - start)
                if packed:
                    copies = fast_decode._packed.get(core)
    finally:
        fast_decode.PACK_MAX_BYTES, fast_decode.PACK_BY_DEFAULT = limit, default
    command = "python benchmarks/packed_weights.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [f"## Packed weight copies (anygen-tiny through the Python API; {cpu_vendor()} CPU)", "",
             f"`{command.strip()}` ({cpu_name()}, {args.threads} threads, torch {torch.__version__}): every call "
             "with the packed copies and with the weights in place, alternated (the order flips each round); "
             f"seconds are medians (min-max) of {args.repeats} rounds, the speed-up the median of the per-round "
             f"ratios. The library's default on this CPU: {'packed' if default else 'in place'}.", "",
             "| task | in place (s) | packed (s) | speed-up |", "|---|---|---|---|"]
    for name in tasks:
        before, after = seconds[(name, False)], seconds[(name, True)]
        lines.append(f"| {name} | {spread(before)} | {spread(after)} | "
                     f"{spread([b / a for b, a in zip(before, after)])}x |")
    publish(f"packed-weights-{cpu_vendor()}", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
