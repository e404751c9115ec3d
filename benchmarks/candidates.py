"""How much does ``num_candidates`` buy? For each ShapesEval prompt and each text -> melody item (``--n`` per
category, seed 0, like ``anygen eval``), the shipped model samples 16 candidates with ``num_candidates=1``, and the
pipeline is asked again with ``num_candidates=K`` and the same seed (its K candidates draw the seeds of the first K
of the 16; a smaller batch may round a few logits differently, so they can differ in places).
Reports the pass rate of a single sample, of the model's own pick of K, and of "any of the K passes" (what a
perfect ranker could reach). Writes the ``candidates`` section of benchmarks/RESULTS.md.

    python benchmarks/candidates.py --splits validation test --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

import anygen  # noqa: E402
from anygen.evaluation.melody import score_music_audio  # noqa: E402
from anygen.evaluation.shapes import score_image, shapes_prompts  # noqa: E402
from anygen.evaluation.suites import build_items  # noqa: E402

POOL = 16
PICKS = (4, 8, 16)


def seed(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(10_000 + i)


def run_images(pipe: anygen.AnyGenPipeline, split: str, n: int) -> dict[str, list[bool]]:
    rows: dict[str, list[bool]] = {"one sample": [], **{f"pick of {k}": [] for k in PICKS},
                                   **{f"any of {k}": [] for k in PICKS}}
    for i, s in enumerate(tqdm(shapes_prompts(n, 0, split), desc=f"images ({split})")):
        pool = pipe.text_to_image(s.prompt, num_images_per_prompt=POOL, num_candidates=1, generator=seed(i),
                                  output_type="pt").images
        passed = [score_image(x, s.spec, s.category)["passed"] for x in pool]
        rows["one sample"].append(passed[0])
        for k in PICKS:
            (pick,) = pipe.text_to_image(s.prompt, num_candidates=k, generator=seed(i), output_type="pt").images
            rows[f"pick of {k}"].append(score_image(pick, s.spec, s.category)["passed"])
            rows[f"any of {k}"].append(any(passed[:k]))
    return rows


def run_music(pipe: anygen.AnyGenPipeline, split: str, n: int) -> dict[str, list[bool]]:
    rows: dict[str, list[bool]] = {"one sample": [], **{f"pick of {k}": [] for k in PICKS},
                                   **{f"any of {k}": [] for k in PICKS}}
    for i, s in enumerate(tqdm(build_items("melody", n, 0, split)["music"], desc=f"music ({split})")):
        out = pipe.speak([s.text] * POOL, num_candidates=1, generator=seed(i))
        passed = [score_music_audio(w, out.sample_rate, s)["passed"] for w in out.audios]
        rows["one sample"].append(passed[0])
        for k in PICKS:
            (pick,) = pipe.speak(s.text, num_candidates=k, generator=seed(i)).audios
            rows[f"pick of {k}"].append(score_music_audio(pick, out.sample_rate, s)["passed"])
            rows[f"any of {k}"].append(any(passed[:k]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", nargs="+", default=["validation", "test"], choices=["validation", "test"])
    parser.add_argument("--n", type=int, default=12, help="items per category / kind, as anygen eval --n")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = anygen.load()
    pipe.set_progress_bar_config(disable=True)
    columns = ["one sample", *[f"pick of {k}" for k in PICKS], *[f"any of {k}" for k in PICKS]]
    lines = [f"| task | split | items | {' | '.join(columns)} |", "|---|---|---|" + "---|" * len(columns)]
    for task, run in (("text -> image (ShapesEval)", run_images), ("text -> melody", run_music)):
        for split in args.splits:
            rows = run(pipe, split, args.n)
            rates = " | ".join(f"{sum(rows[c]) / len(rows[c]):.3f}" for c in columns)
            lines.append(f"| {task} | {split} | {len(rows['one sample'])} | {rates} |")
            print(lines[-1], flush=True)
    command = "python benchmarks/candidates.py " + shlex.join(sys.argv[1:])
    body = "\n".join([
        "## Candidates (`num_candidates`)",
        "",
        f"`{command}` -- anygen-tiny, torch {torch.__version__}. Per item, {POOL} samples with `num_candidates=1` "
        "and the pipeline's pick with `num_candidates=K` under the same seed (its candidates draw the seeds of the "
        "pool's first K). *one sample*: the first sample passes; *pick of K*: the image or clip the pipeline returns "
        "passes; *any of K*: at least one of the K passes (what a perfect ranker would reach). Judges as in "
        "`anygen eval` (ShapesEval's pixel judge; pitch and chroma for melodies and chords).",
        "",
        *lines,
    ])
    print(body)
    if not args.no_write:
        write_section("candidates", body)


if __name__ == "__main__":
    main()
