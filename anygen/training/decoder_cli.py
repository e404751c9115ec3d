"""Command line of the decoder recipe: ``anygen train-decoder --config FILE [--set key=value ...] [--out DIR]``
(a diffusion or an upscale decoder, as the config's ``kind`` says).

Also runnable as ``python -m anygen.training.decoder_cli --config FILE``. The trained decoder goes to
``<out>/final`` unless the config names a ``final_dir``, so a trial run (``--out runs/trial``) never replaces the
decoder of a full one.
"""

from __future__ import annotations

import argparse
import sys
import json
from dataclasses import asdict

from anygen.training.cli_args import add_run_arguments, with_output_dir
from anygen.training.decoder_recipe import decoder_train_config
from anygen.training.decoder_recipe import main as train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--set`` and ``--out`` to ``parser``."""
    add_run_arguments(parser, "configs/decoder/image-tiny.yaml", "train.steps=100")


def main(args: argparse.Namespace) -> int:
    """Run the recipe with parsed ``args``; prints the final metrics as JSON and returns the exit status 0."""
    config = with_output_dir(decoder_train_config(args.config, args.overrides), args)
    result = train(config)
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":  # the same command as `anygen train-decoder`, for launchers that start modules
    from anygen.cli import run

    run(["train-decoder", *sys.argv[1:]])
