"""How much does ``num_candidates`` buy, and how good is its ranking? Per item (``--n`` per category, seed 0, like
``anygen eval``), the shipped model samples a pool of candidates with ``num_candidates=1``:

- ``images``: ShapesEval and free-text prompts, 16 candidates; the pick of the first K by the pipeline's ranking
  (``candidate_scores``: what ``text_to_image`` keeps), by the prompt's own likelihood as a caption
  (``caption_likelihood``, the ranking before the near-miss one), by the pipeline's ranking with the near misses
  scored only for the M candidates its captions alone rank highest (a cheaper ranking: fewer texts to score), and
  "any of the K passes" (a perfect ranker).
- ``edits``: the edit suite (``--edit-n`` per operation), 8 candidates; the pipeline is asked again with
  ``num_candidates=8`` and the same seed, whose 8 candidates are the pool (a paired comparison with the first).
- ``melody``: text -> melody, 16 candidates; the pipeline is asked again with ``num_candidates=K`` and the same seed
  (its K candidates draw the seeds of the first K of the 16).
- ``play_notes``: the interleaved suite's "play these notes" documents (``--n`` of them per split), answered by
  ``generate`` with ``num_candidates=1`` and with its default (the pick by ear of ``SPEAK_CANDIDATES`` answers)
  under the same seed, whose first answer is the single one; judged as in ``anygen eval --suite interleaved``.

A smaller batch may round a few logits differently, so a re-asked pipeline's candidates can differ from the pool's
in places. Each task writes its own section of benchmarks/RESULTS.md (``candidates-<task>``).

    python benchmarks/candidates.py --tasks images edits melody play_notes --splits validation test --threads 1
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Callable, Sequence
from functools import partial
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

import anygen  # noqa: E402
from anygen.data.scenes import render_scene  # noqa: E402
from anygen.evaluation.edit import score_edit  # noqa: E402
from anygen.evaluation.interleaved import score_document  # noqa: E402
from anygen.evaluation.melody import score_music_audio  # noqa: E402
from anygen.evaluation.shapes import score_image  # noqa: E402
from anygen.evaluation.suites import build_items  # noqa: E402
from anygen.generation.ranking import ranking_texts  # noqa: E402
from anygen.pipelines import EmptyAnswerError  # noqa: E402

POOL = 16
PICKS = (4, 8, 16)
PRUNED = ((8, 4), (16, 4), (16, 8))


def seed(i: int) -> torch.Generator:
    return torch.Generator().manual_seed(10_000 + i)


def run_images(pipe: anygen.AnyGenPipeline, suite: str, split: str, n: int) -> dict[str, list[bool]]:
    rows: dict[str, list[bool]] = {"one sample": []}
    for i, s in enumerate(tqdm(build_items(suite, n, 0, split)["shapes"], desc=f"{suite} ({split})")):
        pool = pipe.text_to_image(s.prompt, num_images_per_prompt=POOL, num_candidates=1, generator=seed(i),
                                  output_type="pt").images
        passed = [score_image(x, s.spec, s.category)["passed"] for x in pool]
        texts = ranking_texts(s.prompt)
        scores = pipe._text_scores(pipe._picture_ids(pool), [texts.texts] * len(pool))  # what candidate_scores sums
        ranked = [texts.score(row) for row in scores]
        by_captions = [sum(row[:texts.captions]) for row in scores]
        likelihood = pipe.caption_likelihood(pool, s.prompt)
        rows["one sample"].append(passed[0])
        for k in PICKS:
            for name, scores in ((f"pick of {k}", ranked), (f"pick of {k} by likelihood", likelihood)):
                rows.setdefault(name, []).append(passed[max(range(k), key=scores.__getitem__)])
            rows.setdefault(f"any of {k}", []).append(any(passed[:k]))
        for k, m in PRUNED:  # the near misses scored only for the m of k that the captions rank highest
            top = sorted(range(k), key=by_captions.__getitem__, reverse=True)[:m]
            rows.setdefault(f"pick of {k}, near misses for {m}", []).append(passed[max(top, key=ranked.__getitem__)])
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


def run_play_notes(pipe: anygen.AnyGenPipeline, split: str, n: int) -> dict[str, list[bool]]:
    rows: dict[str, list[bool]] = {"one sample": [], "pick of 8": []}
    documents = [d for d in build_items("interleaved", n, 0, split)["documents"] if d.kind == "play_notes"]
    for i, doc in enumerate(tqdm(documents, desc=f"play_notes ({split})")):
        for column, k in (("one sample", 1), ("pick of 8", None)):
            try:
                answer = pipe.generate(list(doc.prompt), generator=seed(i), num_candidates=k).segments
            except EmptyAnswerError:  # scored as an answer with nothing in it, as anygen eval does
                answer = []
            rows[column].append(score_document(answer, doc.checks, None)["passed"])
    return rows


def run_edits(pipe: anygen.AnyGenPipeline, split: str, n: int) -> dict[str, list[bool]]:
    rows: dict[str, list[bool]] = {"one sample": [], "pick of 8": [], "any of 8": []}
    for i, s in enumerate(tqdm(build_items("edit", n, 0, split)["edits"], desc=f"edits ({split})")):
        source = render_scene(s.source, 64)
        pool = pipe.edit_image(source, s.instruction, num_images_per_prompt=8, num_candidates=1, generator=seed(i),
                               output_type="pt").images
        passed = [score_edit(source, x, s)["passed"] for x in pool]
        (pick,) = pipe.edit_image(source, s.instruction, num_candidates=8, generator=seed(i), output_type="pt").images
        rows["one sample"].append(passed[0])
        rows["pick of 8"].append(score_edit(source, pick, s)["passed"])
        rows["any of 8"].append(any(passed))
    return rows


def table(pipe: anygen.AnyGenPipeline, runs: list[tuple[str, Callable]], columns: list[str], splits: list[str],
          n: int) -> list[str]:
    lines = [f"| suite | split | items | {' | '.join(columns)} |", "|---|---|---|" + "---|" * len(columns)]
    for suite, run in runs:
        for split in splits:
            rows = run(split, n)
            rates = " | ".join(f"{sum(rows[c]) / len(rows[c]):.3f}" for c in columns)
            lines.append(f"| {suite} | {split} | {len(rows['one sample'])} | {rates} |")
            print(lines[-1], flush=True)
    return lines


def parse_and_load(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, anygen.AnyGenPipeline]:
    """Add the arguments every sampling benchmark here takes (``--splits``, ``--threads``, ``--no-write``), parse
    them and load the shipped model's pipeline (progress bars off) on that many threads."""
    parser.add_argument("--splits", nargs="+", default=["validation", "test"], choices=["validation", "test"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pipe = anygen.load()
    pipe.set_progress_bar_config(disable=True)
    return args, pipe


def section_head(title: str, about: str, columns: Sequence[str]) -> list[str]:
    """The opening lines of a sampling benchmark's section of RESULTS.md: ``## title``, the command that ran (this
    script with its arguments, on anygen-tiny and this torch) followed by ``about``, and the head of its table."""
    command = (f"`python benchmarks/{Path(sys.argv[0]).name} {shlex.join(sys.argv[1:])}` -- anygen-tiny, torch "
               f"{torch.__version__}. {about}")
    return [f"## {title}", "", command, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["images", "edits", "melody", "play_notes"],
                        choices=["images", "edits", "melody", "play_notes"])
    parser.add_argument("--n", type=int, default=12, help="items per category / kind, as anygen eval --n")
    parser.add_argument("--edit-n", type=int, default=24, help="edits per operation")
    args, pipe = parse_and_load(parser)
    command = f"`python benchmarks/candidates.py {shlex.join(sys.argv[1:])}` -- anygen-tiny, torch {torch.__version__}"
    judges = "Judges as in `anygen eval`."
    picks = [f"pick of {k}" for k in PICKS]
    sections = {
        "images": lambda: [
            "## Candidates: text -> image (`num_candidates`)", "",
            f"{command}. Per item, {POOL} samples with `num_candidates=1`; *one sample*: the first passes; *pick of "
            "K*: the one of the first K that `candidate_scores` ranks first (what `text_to_image(num_candidates=K)` "
            "keeps: captions of the request and its sentence against near misses); *by likelihood*: the one whose "
            "prompt `caption_likelihood` scores highest (the ranking before); *pick of K, near misses for M*: the "
            "same ranking, with the near misses scored only for the M of the K that its captions alone rank highest "
            "(the others are out); *any of K*: at least one of the first K passes (what a perfect ranker would "
            f"reach). {judges}", "",
            *table(pipe, [(suite, partial(run_images, pipe, suite)) for suite in ("shapes", "prompts")],
                   ["one sample", *picks, *[f"pick of {k}, near misses for {m}" for k, m in PRUNED],
                    *[f"{p} by likelihood" for p in picks], *[f"any of {k}" for k in PICKS]],
                   args.splits, args.n)],
        "edits": lambda: [
            "## Candidates: edits (`num_candidates`)", "",
            f"{command}. Per item, 8 edits with `num_candidates=1` (`num_images_per_prompt=8`); *one sample*: the "
            "first passes; *pick of 8*: what `edit_image(num_candidates=8)` returns under the same seed (its "
            "candidates are those 8, ranked against the model's description of the source with the instruction "
            f"applied, less how much each changed the picture, plus for a move); *any of 8*: at least one passes. "
            f"{judges}", "",
            *table(pipe, [("edit", partial(run_edits, pipe))], ["one sample", "pick of 8", "any of 8"], args.splits,
                   args.edit_n)],
        "melody": lambda: [
            "## Candidates: text -> melody (`num_candidates`)", "",
            f"{command}. Per item, {POOL} clips with `num_candidates=1`; *one sample*: the first passes; *pick of K*: "
            "what `speak(num_candidates=K)` returns under the same seed (its candidates draw the seeds of the first "
            "K; ranked by the notes a pitch tracker hears in each, `anygen/generation/hearing.py`, then by the text's "
            "likelihood after the clip as the tokenizer reads it back); *any of K*: at least "
            f"one of the first K passes. {judges}", "",
            *table(pipe, [("melody", partial(run_music, pipe))],
                   ["one sample", *picks, *[f"any of {k}" for k in PICKS]], args.splits, args.n)],
        "play_notes": lambda: [
            "## Candidates: play these notes, answered by `generate` (`num_candidates`)", "",
            f"{command}. Per \"play these notes\" document of the interleaved suite (`--n` per split), the answer "
            "of `generate(num_candidates=1)` and of `generate` as it is by default (the answer of 8 whose clip a "
            "pitch tracker hears play most of the notes, `anygen/generation/hearing.py`) under the same seed; "
            "passed: the clip plays the notes and the text after it names them.", "",
            *table(pipe, [("play_notes", partial(run_play_notes, pipe))], ["one sample", "pick of 8"], args.splits,
                   args.n)],
    }
    for task in args.tasks:
        body = "\n".join(sections[task]())
        print(body)
        if not args.no_write:
            write_section(f"candidates-{task}", body)


if __name__ == "__main__":
    main()
