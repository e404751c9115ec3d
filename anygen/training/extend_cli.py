"""Command line of the extension recipe:
``anygen extend --model DIR --modality NAME --config FILE [--set key=value ...]``.

Also runnable as ``python -m anygen.training.extend_cli ...`` (what ``accelerate launch`` starts on each process).
Running the same command again resumes from ``<train.out_dir>/checkpoints``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json

from accelerate import PartialState

from anygen.config import load_config
from anygen.errors import InvalidArgumentError
from anygen.training.extend_recipe import ExtendConfig
from anygen.training.extend_recipe import main as extend


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--model``, ``--modality``, ``--config`` and ``--set`` to ``parser``."""
    parser.add_argument("--model", required=True, help="directory of the trained model to extend")
    parser.add_argument("--modality", required=True, help="name of the new modality; must match the config's "
                                                          "modality.name, e.g. signal")
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/extend/signal.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set mode=rows (repeatable)")


def main(args: argparse.Namespace) -> int:
    """Run the recipe with parsed ``args``; the main process prints the result as JSON. Returns 0.

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_arguments(parser)
        >>> main(parser.parse_args(["--model", "anygen/assets/anygen-tiny", "--modality", "signal",
        ...                         "--config", "configs/extend/signal.yaml"]))  # doctest: +SKIP
        0
    """
    config = load_config(ExtendConfig, args.config, args.overrides)
    if config.modality.name != args.modality:
        raise InvalidArgumentError(f"--modality={args.modality!r} but {args.config} extends "
                                   f"modality.name={config.modality.name!r}")
    result = extend(dataclasses.replace(config, model=args.model))
    if PartialState().is_main_process:
        print(json.dumps(dataclasses.asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="anygen extend", description=__doc__)
    add_arguments(cli)
    raise SystemExit(main(cli.parse_args()))
