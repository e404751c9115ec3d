"""Can the training stream keep up with the core? Writes the ``stream`` section of benchmarks/RESULTS.md.

Alternates, ``--repeats`` times, one step of each contender on one thread each (as in training: the stream's
worker thread on one core, the core's step on the other):

- **stream**: the rows of one optimizer step drawn fresh from the generators, rendered and tokenized
  (:class:`anygen.training.stream.StreamRows`, the task mix of ``--config``);
- **core**: one optimizer step of the config's core on those rows (forward, backward, AdamW), grad_accum
  micro-batches sorted by length as the recipe does.

Both report tokens per second over the same rows (prompt + target, what the core reads); the stream keeps up when
its rate exceeds the core's. Medians and the spread (min-max) over the repeats.

    python benchmarks/stream.py --config configs/train/tiny.yaml --repeats 7
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
from results_file import cpu_name, write_section  # noqa: E402

from anygen.assets import DEFAULT_MODEL  # noqa: E402
from anygen.config import load_config  # noqa: E402
from anygen.model import AnyGen  # noqa: E402
from anygen.tokenizers.text import TextTokenizer  # noqa: E402
from anygen.training.core_data import RowKey, collate, split_by_length  # noqa: E402
from anygen.training.core_recipe import CoreTrainConfig, param_groups  # noqa: E402
from anygen.training.stream import StreamRows  # noqa: E402

DEFAULT_TEXT = DEFAULT_MODEL / "text_tokenizer"
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny.yaml"


def build(config: CoreTrainConfig) -> tuple[AnyGen, StreamRows]:
    """The config's model (random core, its trained tokenizers, the shipped BPE) and its stream."""
    tokenizers = {name: spec.build(f"model.tokenizers.{name}") for name, spec in config.model.tokenizers.items()}
    torch.manual_seed(0)
    model = AnyGen.create(TextTokenizer.from_pretrained(DEFAULT_TEXT), tokenizers, config.model.core).train()
    rows = config.optim.batch_size * config.optim.grad_accum
    source = StreamRows(config.data.corpus, model.processor, config.data.weights(), config.data.cond_dropout, rows,
                        seed=0, context=model.core.config.max_position_embeddings)
    return model, source


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):,.0f} ({min(values):,.0f}-{max(values):,.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    config = load_config(CoreTrainConfig, args.config)
    model, source = build(config)
    optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=1e-4)
    stream_rate, core_rate, row_tokens = [], [], []
    for step in range(args.repeats + 1):  # step 0 warms both up and is not counted
        began = time.perf_counter()
        rows = source.rows(RowKey(step, 0))
        stream_s = time.perf_counter() - began
        tokens = sum(len(p) + len(t) + 2 for p, t in rows)
        began = time.perf_counter()
        for part in split_by_length(rows, config.optim.grad_accum):
            batch = collate(part, model.vocab)
            model(batch.input_ids, batch.attention_mask, batch.labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        core_s = time.perf_counter() - began
        if step:
            stream_rate.append(tokens / stream_s)
            core_rate.append(tokens / core_s)
            row_tokens.append(tokens / len(rows))
    ratio = [s / c for s, c in zip(stream_rate, core_rate)]
    params = sum(p.numel() for p in model.core.parameters()) / 1e6
    body = "\n".join([
        "## Training stream vs core (tokens/s, one thread each)",
        "",
        f"`python benchmarks/stream.py {shlex.join(argv or sys.argv[1:])}` on {cpu_name()}, "
        f"torch {torch.__version__}: {len(rows)} rows per step ({config.optim.batch_size} x "
        f"{config.optim.grad_accum}), {statistics.median(row_tokens):.0f} tokens per row (median), a "
        f"{params:.1f}M-parameter core; median (min-max) of {args.repeats} alternated steps.",
        "",
        "| contender | tokens/s |",
        "|---|---|",
        f"| stream: draw, render, tokenize | {spread(stream_rate)} |",
        f"| core: forward, backward, AdamW | {spread(core_rate)} |",
        f"| stream / core | {statistics.median(ratio):.1f}x ({min(ratio):.1f}-{max(ratio):.1f}x) |",
    ])
    print(body)
    if not args.no_write:
        write_section("stream", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
