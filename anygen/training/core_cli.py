"""Command line of the core recipe: ``anygen train --config FILE [--set key=value ...] [--out DIR]``.

Also runnable as ``python -m anygen.training.core_cli --config FILE``, which is what ``accelerate launch`` and
``torchrun`` start on each process. Running the same command again resumes from ``<out>/checkpoints``.
"""

from __future__ import annotations

import argparse
import sys
import json
from dataclasses import asdict

from accelerate import PartialState

from anygen.training.cli_args import add_run_arguments, load_run_config, with_train_out_dir
from anygen.training.core_recipe import CoreTrainConfig
from anygen.training.core_recipe import main as train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config``, ``--set`` and ``--out`` to ``parser``."""
    add_run_arguments(parser, "configs/train/tiny.yaml", "optim.steps=100")


def main(args: argparse.Namespace) -> int:
    """Run the recipe with parsed ``args``; the main process prints the result as JSON. Returns the exit status 0.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> main(parser.parse_args(["--config", "configs/train/smoke.yaml"]))  # doctest: +SKIP
        0
    """
    config = with_train_out_dir(load_run_config(CoreTrainConfig, args), args)
    result = train(config)
    if PartialState().is_main_process:
        print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":  # the same command as `anygen train`, for launchers that start modules
    from anygen.cli import run

    run(["train", *sys.argv[1:]])
