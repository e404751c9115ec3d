"""``anygen eval``: run the evaluators on a saved model or on the ground truth, print a table, write JSON.

Example::

    anygen eval --ground-truth --suite all --n 12 --json runs/truth.json   # what a perfect model scores
    anygen eval --model anygen-tiny --suite shapes --n 24                  # the shipped model
    anygen eval --model anygen-tiny --suite all --n 12 --threads 1         # the model card's numbers
    anygen eval --model runs/anygen-tiny/final --suite all                 # a saved one
"""

from __future__ import annotations

import argparse
import itertools
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from anygen.assets import model_dir
from anygen.data.shapes import SPLITS
from anygen.errors import InvalidArgumentError, check_range
from anygen.evaluation.result import EvalResult
from anygen.evaluation.speech import KeywordClassifier
from anygen.evaluation.suites import SUITES, ModelCallables, run_suite
from anygen.paths import check_output_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the ``anygen eval`` options."""
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="directory of a saved model, or anygen-tiny / default for the shipped one")
    source.add_argument("--ground-truth", action="store_true", help="score the corpus' own references")
    parser.add_argument("--suite", default="all", choices=[*SUITES, "all"], help="which evaluator(s) to run")
    parser.add_argument("--n", type=int, default=12, help="items per category (speech: n // 10 per keyword)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the item sets and of sampling")
    parser.add_argument("--split", default="test", choices=list(SPLITS), help="split the items come from")
    parser.add_argument("--num-candidates", type=int, default=None,
                        help="num_candidates of text_to_image and edit_image (default: the pipelines', the "
                             "model's pick of 16 images and of 8 edits; 1 scores single samples)")
    parser.add_argument("--matmul-dtype", default="float32", choices=["float32", "bfloat16", "auto"],
                        help="what the core's matrix products multiply in (the pipelines' matmul_dtype; default "
                             "float32, as the model card measured)")
    parser.add_argument("--threads", type=int, default=0,
                        help="CPU threads of the model (default 0: torch's own choice); sampled results can differ "
                             "by an item between thread counts, so a published number names its count")
    parser.add_argument("--keyword-model", default=None,
                        help="safetensors file of the keyword classifier (fitted and saved here when missing)")
    parser.add_argument("--json", dest="json_path", default=None,
                        help="also write all results to this JSON file (its folder must exist)")


def pipeline_callables(pipe: Any, seed: int, num_candidates: int | None = None,
                       generate_options: Mapping[str, Any] | None = None) -> ModelCallables:
    """Adapt an AnyGenPipeline to the evaluators' callables.

    Every sampling call gets its own generator, seeded from ``seed`` and the call's index: the runs are
    reproducible, and the items' samples are independent (one shared seed would give every prompt the same noise,
    so a whole suite would pass or fail together with that one draw). ``num_candidates`` is passed to
    ``text_to_image`` and ``edit_image`` when given, ``generate_options`` (keyword arguments) to ``generate``.
    """
    candidates = {} if num_candidates is None else {"num_candidates": num_candidates}
    calls = itertools.count()
    gen = lambda: torch.Generator().manual_seed(seed * 1_000_003 + next(calls))  # noqa: E731
    pipe.set_progress_bar_config(disable=True)  # one bar per item would bury the evaluation's own output

    def text_to_image(prompts: list[str]) -> list:
        return [pipe.text_to_image(p, generator=gen(), **candidates).images[0] for p in prompts]

    def edit(image: Any, instruction: str) -> Any:
        return pipe.edit_image(image, instruction, generator=gen(), **candidates).images[0]

    def speak(text: str) -> tuple[torch.Tensor, int]:  # melodies use the same text -> audio span
        out = pipe.speak(text, generator=gen())
        return out.audios[0], out.sample_rate

    def transcribe(waveform: torch.Tensor, sample_rate: int) -> str:
        return pipe.transcribe(waveform, sample_rate).texts[0]

    def generate(segments: list) -> list:
        from anygen.pipelines import EmptyAnswerError

        try:
            return pipe.generate(segments, generator=gen(), **(generate_options or {})).segments
        except EmptyAnswerError:  # the model ended at once: scored as an answer with nothing in it
            return []

    return ModelCallables(text_to_image=text_to_image, caption=lambda image: pipe.caption(image).texts[0],
                          edit=edit, speak=speak, transcribe=transcribe, play=speak, transcribe_music=transcribe,
                          generate=generate)


def load_model(name_or_path: str, seed: int, num_candidates: int | None = None,
               matmul_dtype: str = "float32") -> ModelCallables:
    """Load a saved pipeline lazily (products in ``matmul_dtype``); a clear error when pipelines are unavailable or
    the path is wrong."""
    path = model_dir(name_or_path)
    try:
        from anygen.pipelines import AnyGenPipeline
    except ImportError as exc:
        raise InvalidArgumentError(f"anygen.pipelines is not available ({exc}); use --ground-truth") from exc
    return pipeline_callables(AnyGenPipeline.from_pretrained(path, matmul_dtype=matmul_dtype), seed, num_candidates)


def check_outputs(args: argparse.Namespace) -> None:
    """Everything ``anygen eval`` will write is checked before the evaluation starts."""
    if args.json_path is not None:
        check_output_file("--json", args.json_path)
    if args.keyword_model is not None and not Path(args.keyword_model).is_file():
        check_output_file("--keyword-model", args.keyword_model)


def keyword_classifier(path: str | None) -> KeywordClassifier | None:
    """Load the keyword classifier from ``path``, or fit it and save it there; None when no path is given."""
    if path is None:
        return None
    if Path(path).is_file():
        return KeywordClassifier.load(path)
    classifier = KeywordClassifier.fit()
    classifier.save(path)
    return classifier


def format_table(results: list[EvalResult]) -> str:
    """A plain-text table: suite, n, overall, then per-category scores."""
    rows = [("suite", "n", "overall", "per category")]
    for r in results:
        cats = "  ".join(f"{k}={v:.3f}" for k, v in r.per_category.items())
        rows.append((r.suite, str(r.n), f"{r.overall:.3f}", cats))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    return "\n".join(f"{a:<{widths[0]}}  {b:>{widths[1]}}  {c:>{widths[2]}}  {d}" for a, b, c, d in rows)


def main(args: argparse.Namespace) -> int:
    """Run ``anygen eval``. Returns the exit status."""
    check_range("--n", args.n, 1, 100_000)
    check_range("--threads", args.threads, 0, 1024)
    if args.num_candidates is not None:
        if args.ground_truth:
            raise InvalidArgumentError("--num-candidates applies to --model, not to --ground-truth")
        check_range("--num-candidates", args.num_candidates, 1, 64)
    check_outputs(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ground_truth and args.matmul_dtype != "float32":
        raise InvalidArgumentError("--matmul-dtype applies to --model, not to --ground-truth")
    model = None if args.ground_truth else load_model(args.model, args.seed, args.num_candidates, args.matmul_dtype)
    classifier = keyword_classifier(args.keyword_model)
    results = run_suite(args.suite, args.n, args.seed, args.split, model, classifier)
    print(format_table(results))
    if args.json_path:
        payload = {"source": "ground-truth" if args.ground_truth else args.model, "suite": args.suite,
                   "n": args.n, "seed": args.seed, "split": args.split, "threads": torch.get_num_threads(),
                   "matmul_dtype": args.matmul_dtype,
                   "results": [json.loads(r.to_json()) for r in results]}
        Path(args.json_path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return 0
