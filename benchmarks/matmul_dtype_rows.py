"""Where bfloat16 products pay in the eager decoding loop: float32 against ``matmul_dtype=torch.bfloat16`` over
Llama cores of several sizes and row counts (greedy text, random weights), alternated in one process (the order
flips each round); writes the ``matmul-dtype-rows-<maker>`` section of benchmarks/RESULTS.md. The thresholds of
``matmul_dtype="auto"`` (``fast_decode.AUTO_BF16_MIN_ROWS`` and ``AUTO_BF16_MIN_BYTES``) come from this table.
Only on a CPU that multiplies in bfloat16 natively (``fast_decode.bf16_matmul_supported``).

    python benchmarks/matmul_dtype_rows.py --threads 1 --repeats 5
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from packed_weights import spread  # noqa: E402
from results_file import cpu_name, cpu_vendor, publish  # noqa: E402

from anygen.core import CoreConfig, build_core  # noqa: E402
from anygen.generation import SamplingParams, decode_steps, fast_decode, span_rules  # noqa: E402
from anygen.vocab import Vocab  # noqa: E402

CORES = {  # name: (text vocabulary, config)
    "6M": (4096, CoreConfig(hidden_size=256, num_layers=6, num_heads=8, num_kv_heads=4, intermediate_size=688)),
    "14M": (4096, CoreConfig(hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=2, intermediate_size=1024)),
    "28M": (8192, CoreConfig(hidden_size=512, num_layers=8, num_heads=8, num_kv_heads=4, intermediate_size=1376)),
    "54M": (12288, CoreConfig(hidden_size=640, num_layers=10, num_heads=10, num_kv_heads=5,
                              intermediate_size=1728)),
}
GREEDY = SamplingParams(do_sample=False)


def decode(core: torch.nn.Module, vocab: Vocab, rows: int, new_tokens: int, dtype: torch.dtype) -> None:
    prompts = [[vocab.bos_id, *range(5 + r, 21 + r)] for r in range(rows)]
    for _ in decode_steps(core, vocab, span_rules(vocab, {}, {}), prompts, max_new_tokens=new_tokens,
                          open_modalities=[], sampling={"text": GREEDY}, matmul_dtype=dtype):
        pass


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    if not fast_decode.bf16_matmul_supported():
        sys.exit("this CPU does not multiply in bfloat16 natively (AMX or AVX512-BF16): nothing to compare")
    torch.set_num_threads(args.threads)
    command = "python benchmarks/matmul_dtype_rows.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    lines = [f"## Products in bfloat16 by core size and rows (eager loop; {cpu_vendor()} CPU)", "",
             f"`{command.strip()}` ({cpu_name()}, {args.threads} thread(s), torch {torch.__version__}): "
             f"{args.new_tokens} greedy text tokens per row from the eager loop over a random Llama core, with "
             "float32 and with bfloat16 products, alternated (the order flips each round); the speed-up is the "
             f"median (min-max) of {args.repeats} per-round ratios. `matmul_dtype=\"auto\"` multiplies in bfloat16 "
             f"at {fast_decode.AUTO_BF16_MIN_ROWS} rows or more, or at any row count for a core of at least "
             f"{fast_decode.AUTO_BF16_MIN_BYTES / 2**20:.0f} MiB of float32 weights.", "",
             "| core | float32 weights (MiB) | " + " | ".join(f"{r} row{'s' * (r > 1)}" for r in args.rows) + " |",
             "|---|---|" + "---|" * len(args.rows)]
    for name, (text_size, config) in CORES.items():
        torch.manual_seed(0)
        vocab = Vocab(text_size, [])
        core = build_core(config, vocab.size).eval()
        mib = sum(p.numel() * p.element_size() for p in core.parameters()) / 2**20
        cells = []
        for rows in args.rows:
            ratios = []
            for round_ in range(args.repeats + 1):  # the first round warms up (and packs), uncounted
                seconds = {}
                for dtype in (torch.float32, torch.bfloat16) if round_ % 2 else (torch.bfloat16, torch.float32):
                    start = time.perf_counter()
                    decode(core, vocab, rows, args.new_tokens, dtype)
                    seconds[dtype] = time.perf_counter() - start
                if round_:
                    ratios.append(seconds[torch.float32] / seconds[torch.bfloat16])
            cells.append(f"{spread(ratios)}x")
        lines.append(f"| {name} | {mib:.0f} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    publish(f"matmul-dtype-rows-{cpu_vendor()}", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
