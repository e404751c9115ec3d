"""How should ``generate`` sample what its ``sampling`` leaves out? Writes the ``generate-sampling`` section of
benchmarks/RESULTS.md.

The interleaved suite (``--n`` documents per kind, for each of ``--seeds``, as ``anygen eval --suite interleaved``)
is answered once per setting, every call seeded as ``anygen eval`` seeds it, and judged as there: *sampled*: every
modality at temperature 1 (``generate``'s default before); *greedy text*: text read greedily, media at temperature 1
(``GENERATE_SAMPLING``, the default now); *+ audio T 0.7*: audio as ``speak`` samples it; *+ guidance 2*:
classifier-free guidance 2 on the media spans as well. One answer each (``num_candidates=1``: a "play these notes"
document is otherwise answered by the pick of 8, ``candidates.py --tasks play_notes``), its captions as written
(``check_captions=False``, as when this was measured; ``generate_captions.py`` measures the check).

    python benchmarks/generate_sampling.py --seeds 1 2 0
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import parse_and_load, section_head  # noqa: E402
from results_file import publish  # noqa: E402

from anygen.evaluation.cli import pipeline_callables  # noqa: E402
from anygen.evaluation.interleaved import evaluate_interleaved  # noqa: E402
from anygen.evaluation.result import EvalResult  # noqa: E402
from anygen.evaluation.suites import build_items, default_classifier  # noqa: E402
from anygen.generation.sampling import SamplingParams  # noqa: E402
from anygen.pipelines import AnyGenPipeline  # noqa: E402

GREEDY = SamplingParams(do_sample=False)
SETTINGS = {
    "sampled": ({"text": SamplingParams()}, 1.0),
    "greedy text": ({"text": GREEDY}, 1.0),
    "+ audio T 0.7": ({"text": GREEDY, "audio": SamplingParams(0.7)}, 1.0),
    "+ guidance 2": ({"text": GREEDY, "audio": SamplingParams(0.7)}, 2.0),
}


def parse_interleaved_args(parser: argparse.ArgumentParser) -> tuple[argparse.Namespace, AnyGenPipeline]:
    """:func:`parse_and_load` with the interleaved benchmarks' ``--n`` and ``--seeds``."""
    parser.add_argument("--n", type=int, default=12, help="documents per kind, as anygen eval --n")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 0], help="item-set seeds (the card's is 0)")
    return parse_and_load(parser)


def answered(pipe: AnyGenPipeline, args: argparse.Namespace, settings: Iterable[Mapping[str, Any]]
             ) -> Iterator[tuple[str, list[EvalResult]]]:
    """For each seed and split of ``args``: the first cells of its table row and the interleaved suite's result
    under each of ``settings`` (``generate``'s keyword arguments), every call seeded and judged as in ``anygen
    eval``."""
    classifier = default_classifier()
    for seed in args.seeds:
        for split in args.splits:
            documents = build_items("interleaved", args.n, seed, split)["documents"]
            yield f"| {seed} | {split} | {len(documents)} | ", [
                evaluate_interleaved(pipeline_callables(pipe, seed, generate_options=options).generate, documents,
                                     classifier) for options in settings]


def main() -> None:
    args, pipe = parse_interleaved_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    lines = section_head("generate(sampling=...): what an interleaved answer is sampled with",
                         "Documents answered with every part right (module docstring); seed 0 is the model card's "
                         "draw.", ["seed", "split", "documents", *SETTINGS])
    settings = [dict(sampling=sampling, guidance_scale=scale, num_candidates=1, check_captions=False)
                for sampling, scale in SETTINGS.values()]
    for head, results in answered(pipe, args, settings):
        lines.append(head + " | ".join(f"{r.overall:.3f}" for r in results) + " |")
        print(lines[-1], flush=True)
    publish("generate-sampling", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
