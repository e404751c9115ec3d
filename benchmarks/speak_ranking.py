"""What should ``speak(num_candidates=K)`` rank a clip on: the codes it sampled, or the clip as its tokenizer reads it
back? Writes the ``speak-ranking`` section of benchmarks/RESULTS.md.

Per text -> melody item (``--n`` per kind, for each of ``--seeds``, like ``anygen eval --seed``), the shipped model
samples ``--k`` clips in one batch exactly as ``speak`` does (seeds 70,000 + 1,000 x seed + item); the same clips
are then ranked both ways by the text's likelihood after them (what a transcription would say), so the comparison is
paired. *first*: the first clip passes; *by sampled codes*: the ranking before; *read back*: what ``speak`` ranks on
now; *any*: at least one passes (a perfect ranker). Judged as in ``anygen eval``.

    python benchmarks/speak_ranking.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import parse_and_load  # noqa: E402
from results_file import publish  # noqa: E402

from anygen.evaluation.melody import score_music_audio  # noqa: E402
from anygen.evaluation.suites import build_items  # noqa: E402
from anygen.generation.ranking import RankingTexts  # noqa: E402
from anygen.generation.sampling import SamplingParams  # noqa: E402
from anygen.pipelines import AnyGenPipeline, _per_candidate  # noqa: E402
from anygen.types import TextSegment  # noqa: E402

COLUMNS = ("first", "by sampled codes", "read back", "any")


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
        read_back = pipe._best_indices([pipe.model.processor.encode([c]) for c in clips], ranking, k)[0]
        for column, ok in zip(COLUMNS, (passed[0], passed[by_codes], passed[read_back], any(passed))):
            rows[column].append(ok)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="items per kind (melody, chord), as anygen eval --n")
    parser.add_argument("--k", type=int, default=8, help="clips per item")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="item-set seeds (the card's is 0)")
    args, pipe = parse_and_load(parser)
    lines = ["## speak(num_candidates): what a clip is ranked on", "",
             (f"`python benchmarks/speak_ranking.py {shlex.join(sys.argv[1:])}` -- anygen-tiny, torch "
              f"{torch.__version__}. {args.k} clips per text -> melody item, ranked both ways (module docstring)."),
             "",
             "| seed | split | items | " + " | ".join(COLUMNS) + " |", "|---|---|---|" + "---|" * len(COLUMNS)]
    for seed in args.seeds:
        for split in args.splits:
            rows = run(pipe, seed, split, args.n, args.k)
            rates = " | ".join(f"{sum(rows[c]) / len(rows[c]):.3f}" for c in COLUMNS)
            lines.append(f"| {seed} | {split} | {len(rows['first'])} | {rates} |")
            print(lines[-1], flush=True)
    publish("speak-ranking", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
