"""What should ``speak(num_candidates=K)`` rank a clip on: the codes it sampled, the clip as its tokenizer reads it
back, or the notes a pitch tracker hears in it? Writes the ``speak-ranking`` section of benchmarks/RESULTS.md.

Per text -> melody item (``--n`` per kind, for each of ``--seeds``, like ``anygen eval --seed``), the shipped model
samples ``--k`` clips in one batch exactly as ``speak`` does (seeds 70,000 + 1,000 x seed + item); the same clips
are then ranked every way below, so the comparison is paired. *first*: the first clip passes; *by sampled codes*:
ranked by the text's likelihood after the codes as sampled (what a transcription would say); *read back*: after
the clip as the tokenizer reads it back (``speak(hear_notes=False)``); *heard, w = W*: read back plus W times
:func:`~anygen.generation.hearing.heard_match` (``speak`` with ``HEARD_WEIGHT = W``); *any*: at least one passes (a
perfect ranker). Judged as in ``anygen eval``. Seeds 1 and 2 chose ``HEARD_WEIGHT``; seed 0 holds the model card's
items.

    python benchmarks/speak_ranking.py --seeds 1 2 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import parse_and_load, section_head  # noqa: E402
from results_file import publish  # noqa: E402

from anygen.data.melody import parse_music_text  # noqa: E402
from anygen.evaluation.melody import score_music_audio  # noqa: E402
from anygen.generation.hearing import heard_match  # noqa: E402
from anygen.evaluation.suites import build_items  # noqa: E402
from anygen.generation.ranking import RankingTexts  # noqa: E402
from anygen.generation.sampling import SamplingParams  # noqa: E402
from anygen.pipelines import AnyGenPipeline, _per_candidate  # noqa: E402
from anygen.types import TextSegment  # noqa: E402

WEIGHTS = (1.0, 3.0, 10.0, 1000.0)
COLUMNS = ("first", "by sampled codes", "read back", *(f"heard, w = {w:g}" for w in WEIGHTS), "any")


def run(pipe: AnyGenPipeline, seed: int, split: str, n: int, k: int) -> dict[str, list[bool]]:
    tok = pipe._tokenizer("audio")
    rows: dict[str, list[bool]] = {c: [] for c in COLUMNS}
    items = build_items("melody", n, seed, split)["music"]
    for i, item in enumerate(tqdm(items, desc=f"melody (seed {seed}, {split})")):
        prompts = [[TextSegment(item.text)] for _ in range(k)]
        generator = _per_candidate(torch.Generator().manual_seed(70_000 + 1_000 * seed + i), k, k)
        sampled = pipe._sample(prompts, "audio", {"audio": SamplingParams(0.7, 0, 1.0)}, guidance=([[]] * k, 2.0),
                               generator=generator, audio_samples=int(pipe.max_audio_seconds * tok.sample_rate),
                               desc="speak", callback=None)
        clips = [pipe._segments(r)[0] for r in sampled.rows]
        passed = [score_music_audio(c.waveform.detach().cpu(), int(tok.sample_rate), item)["passed"] for c in clips]
        ranking = [RankingTexts((item.text,), 1)]
        by_codes = pipe._best_indices(sampled.rows, ranking, k)[0]
        spans = [pipe.model.processor.encode([c]) for c in clips]
        read_back = pipe._best_indices(spans, ranking, k)[0]
        heard = [heard_match(c.waveform.detach().cpu(), int(tok.sample_rate), parse_music_text(item.text))
                 for c in clips]
        by_ear = [passed[pipe._best_indices(spans, ranking, k, [w * h for h in heard])[0]] for w in WEIGHTS]
        for column, ok in zip(COLUMNS, (passed[0], passed[by_codes], passed[read_back], *by_ear, any(passed))):
            rows[column].append(ok)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="items per kind (melody, chord), as anygen eval --n")
    parser.add_argument("--k", type=int, default=8, help="clips per item")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="item-set seeds (the card's is 0)")
    args, pipe = parse_and_load(parser)
    lines = section_head("speak(num_candidates): what a clip is ranked on",
                         f"{args.k} clips per text -> melody item, ranked every way (module docstring).",
                         ["seed", "split", "items", *COLUMNS])
    for seed in args.seeds:
        for split in args.splits:
            rows = run(pipe, seed, split, args.n, args.k)
            rates = " | ".join(f"{sum(rows[c]) / len(rows[c]):.3f}" for c in COLUMNS)
            lines.append(f"| {seed} | {split} | {len(rows['first'])} | {rates} |")
            print(lines[-1], flush=True)
    publish("speak-ranking", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
