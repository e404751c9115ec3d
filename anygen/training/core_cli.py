"""Command line of the core recipe: ``anygen train --config FILE [--set key=value ...]``.

Also runnable as ``python -m anygen.training.core_cli --config FILE``, which is what ``accelerate launch`` and
``torchrun`` start on each process. Running the same command again resumes from ``<train.out_dir>/checkpoints``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from accelerate import PartialState

from anygen.config import load_config
from anygen.training.core_recipe import CoreTrainConfig
from anygen.training.core_recipe import main as train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--set`` to ``parser``."""
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/train/tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set optim.steps=100 (repeatable)")


def main(args: argparse.Namespace) -> int:
    """Run the recipe with parsed ``args``; the main process prints the result as JSON. Returns the exit status 0.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> main(parser.parse_args(["--config", "configs/train/smoke.yaml"]))  # doctest: +SKIP
        0
    """
    config = load_config(CoreTrainConfig, args.config, args.overrides)
    result = train(config)
    if PartialState().is_main_process:
        print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="anygen train", description=__doc__)
    add_arguments(cli)
    raise SystemExit(main(cli.parse_args()))
