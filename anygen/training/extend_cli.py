"""Command line of the extension recipe:
``anygen extend --model DIR --modality NAME --config FILE [--set key=value ...] [--out DIR]``.

Also runnable as ``python -m anygen.training.extend_cli ...`` (what ``accelerate launch`` starts on each process).
Running the same command again resumes from ``<out>/checkpoints``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from accelerate import PartialState

from anygen.assets import model_dir
from anygen.errors import InvalidArgumentError
from anygen.training.cli_args import add_run_arguments, load_run_config, with_train_out_dir
from anygen.training.extend_recipe import ExtendConfig
from anygen.training.extend_recipe import main as extend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--modality``, ``--config``, ``--set`` and ``--out`` to ``parser``."""
    parser.add_argument("--model", required=True,
                        help="directory of the trained model to extend, or anygen-tiny for the shipped one")
    parser.add_argument("--modality", required=True, help="name of the new modality; must match the config's "
                                                          "modality.name, e.g. signal")
    add_run_arguments(parser, "configs/extend/signal.yaml", "mode=rows")


def main(args: argparse.Namespace) -> int:
    """Run the recipe with parsed ``args``; the main process prints the result as JSON. Returns 0.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> main(parser.parse_args(["--model", "anygen-tiny", "--modality", "signal",
        ...                         "--config", "configs/extend/signal.yaml"]))  # doctest: +SKIP
        0
    """
    config = with_train_out_dir(load_run_config(ExtendConfig, args), args)
    if config.modality.name != args.modality:
        raise InvalidArgumentError(f"--modality={args.modality!r} but {args.config} extends "
                                   f"modality.name={config.modality.name!r}")
    result = extend(dataclasses.replace(config, model=str(model_dir(args.model))))
    if PartialState().is_main_process:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0


if __name__ == "__main__":  # the same command as `anygen extend`, for launchers that start modules
    from anygen.cli import run

    run(["extend", *sys.argv[1:]])
