"""What ``matmul_dtype="bfloat16"`` and ``"auto"`` buy anygen-tiny's tasks through the Python API: the calls of
``benchmarks/packed_weights.py`` with the library's default (float32 products), with bfloat16 products and with
``"auto"`` (bfloat16 only for a call that decodes enough rows), three pipelines over one model, alternated call by
call in one process (the order rotates each round); writes the
``pipeline-bfloat16-<maker>`` section of benchmarks/RESULTS.md. Only on a CPU that multiplies in bfloat16 natively
(``fast_decode.bf16_matmul_supported``); elsewhere the pipelines refuse ``"bfloat16"``.

    python benchmarks/pipeline_matmul_dtype.py --threads 2 --repeats 7
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packed_weights import api_calls, spread  # noqa: E402
from results_file import cpu_name, cpu_vendor, publish  # noqa: E402

import anygen  # noqa: E402
from anygen.generation import fast_decode  # noqa: E402
from anygen.pipelines import AnyGenPipeline  # noqa: E402

DTYPES = ("float32", "bfloat16", "auto")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if not fast_decode.bf16_matmul_supported():
        sys.exit("this CPU does not multiply in bfloat16 natively (AMX or AVX512-BF16): nothing to compare")
    torch.set_num_threads(args.threads)
    default = anygen.load()
    pipes = {"float32": default, **{d: AnyGenPipeline(default.model, matmul_dtype=d) for d in DTYPES[1:]}}
    calls = {}
    for dtype, pipe in pipes.items():
        pipe.set_progress_bar_config(disable=True)
        calls[dtype] = api_calls(pipe)
    seconds: dict[tuple[str, str], list[float]] = {}
    for round_ in range(args.repeats + 1):  # the first round warms up (and packs), uncounted
        for dtype in DTYPES[round_ % 3:] + DTYPES[:round_ % 3]:
            for name, call in calls[dtype].items():
                start = time.perf_counter()
                call()
                if round_:
                    seconds.setdefault((name, dtype), []).append(time.perf_counter() - start)
    command = "python benchmarks/pipeline_matmul_dtype.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [f"## Products in bfloat16 through the Python API (anygen-tiny; {cpu_vendor()} CPU)", "",
             f"`{command.strip()}` ({cpu_name()}, {args.threads} threads, torch {torch.__version__}): every call "
             "with the default float32 products, with `matmul_dtype=\"bfloat16\"` and with `matmul_dtype=\"auto\"`, "
             f"alternated (the order rotates each round); seconds are medians (min-max) of {args.repeats} rounds, "
             "the speed-ups the medians of the per-round ratios to float32.", "",
             "| task | float32 (s) | bfloat16 (s) | auto (s) | bfloat16 speed-up | auto speed-up |",
             "|---|---|---|---|---|---|"]
    for name in calls["float32"]:
        base, bf16, auto = (seconds[(name, dtype)] for dtype in DTYPES)
        gains = [spread([b / a for b, a in zip(base, other)]) for other in (bf16, auto)]
        lines.append(f"| {name} | {spread(base)} | {spread(bf16)} | {spread(auto)} | {gains[0]}x | {gains[1]}x |")
    publish(f"pipeline-bfloat16-{cpu_vendor()}", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
