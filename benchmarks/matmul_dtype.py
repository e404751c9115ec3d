"""Does the server's ``--matmul-dtype bfloat16`` cost quality? Writes the ``matmul-dtype`` section of RESULTS.md.

Every evaluation suite (``anygen eval``'s, one sample per image and edit as the server draws by default) runs through
the batching scheduler twice per seed: with its matrix products in float32 and in bfloat16, the same items and the
same generators. Sampled answers part ways at the first token whose draw the rounding moves, so single items differ
between the two; what matters is whether the scores differ more than they do between two seeds of the same dtype,
which the table shows side by side.

    python benchmarks/matmul_dtype.py --seeds 0 1 --splits validation test --n 12
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import cpu_name, publish  # noqa: E402

from anygen.assets import model_dir  # noqa: E402
from anygen.evaluation.cli import pipeline_callables  # noqa: E402
from anygen.evaluation.suites import SUITES, default_classifier, run_suite  # noqa: E402
from anygen.generation.fast_decode import MATMUL_DTYPES, bf16_matmul_problem  # noqa: E402
from anygen.generation.scheduler import Scheduler  # noqa: E402
from anygen.model import AnyGen  # noqa: E402
from anygen.pipelines import AnyGenPipeline  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="anygen-tiny")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--splits", nargs="+", default=["validation", "test"], choices=["validation", "test"])
    parser.add_argument("--suites", nargs="+", default=[s for s in SUITES if s != "prompts"], choices=list(SUITES))
    parser.add_argument("--n", type=int, default=12, help="items per category, as anygen eval's --n")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    problem = bf16_matmul_problem(None)
    if problem:
        raise SystemExit(f"bfloat16 products: {problem}")
    torch.set_num_threads(args.threads)
    model = AnyGen.from_pretrained(model_dir(args.model))
    classifier = default_classifier()
    began = time.perf_counter()
    scores: dict[tuple[str, str, str], list[float]] = {}  # (split, suite, dtype) -> one score per seed
    for name, dtype in MATMUL_DTYPES.items():
        # Two blocks: an evaluation batch of 16 edits with three guidance branches is 48 rows.
        scheduler = Scheduler(model.core, model.vocab, block_rows=32, blocks=2, matmul_dtype=dtype)
        try:
            pipe = AnyGenPipeline(model, sampler=scheduler.decode_steps)
            pipe.set_progress_bar_config(disable=True)
            for split in args.splits:
                for seed in args.seeds:
                    for suite in args.suites:
                        callables = pipeline_callables(pipe, seed, num_candidates=1)
                        for result in run_suite(suite, args.n, seed, split, callables, classifier):
                            scores.setdefault((split, result.suite, name), []).append(result.overall)
                    print(f"[{time.perf_counter() - began:6.0f} s] {name} {split} seed {seed}", flush=True)
        finally:
            scheduler.close()
    command = "python benchmarks/matmul_dtype.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [
        "## Products in bfloat16: the evaluators through the server's scheduler",
        "",
        f"`{command}` ({cpu_name()}, {args.threads} thread(s), torch {torch.__version__}, model `{args.model}`): "
        f"each suite of `anygen eval` (n={args.n} per category, one sample per image and edit, the server's "
        "default) through the batching scheduler with its products in float32 and in bfloat16, the same items and "
        f"generators; overall scores for seeds {', '.join(map(str, args.seeds))} and their mean. A difference "
        "between the dtypes matters only where it is larger than the one between seeds.",
        "",
        "| split | direction | float32 (per seed) | bfloat16 (per seed) | float32 mean | bfloat16 mean |",
        "|---|---|---|---|---|---|",
    ]
    for split, suite, name in scores:
        if name != "float32":
            continue
        exact, rounded = scores[(split, suite, "float32")], scores[(split, suite, "bfloat16")]
        lines.append(f"| {split} | {suite} | {' / '.join(f'{v:.3f}' for v in exact)} | "
                     f"{' / '.join(f'{v:.3f}' for v in rounded)} | {statistics.mean(exact):.3f} | "
                     f"{statistics.mean(rounded):.3f} |")
    publish("matmul-dtype", lines, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
