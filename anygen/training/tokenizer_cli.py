"""Command line of the tokenizer recipe: ``anygen train-tokenizer --config FILE [--set key=value ...] [--out DIR]``.

Also runnable as ``python -m anygen.training.tokenizer_cli --config FILE``. The trained codec goes to
``<out>/final`` unless the config names a ``final_dir``.
"""

from __future__ import annotations

import argparse
import sys
import json
from dataclasses import asdict

from anygen.training.cli_args import add_run_arguments, load_run_config, with_output_dir
from anygen.training.tokenizer import TokenizerTrainConfig
from anygen.training.tokenizer import main as train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--set`` and ``--out`` to ``parser``."""
    add_run_arguments(parser, "configs/tokenizer/image-tiny.yaml", "train.steps=100")


def main(args: argparse.Namespace) -> int:
    """Run the recipe with parsed ``args``; prints the final metrics as JSON and returns the exit status 0."""
    config = with_output_dir(load_run_config(TokenizerTrainConfig, args), args)
    result = train(config)
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":  # the same command as `anygen train-tokenizer`, for launchers that start modules
    from anygen.cli import run

    run(["train-tokenizer", *sys.argv[1:]])
