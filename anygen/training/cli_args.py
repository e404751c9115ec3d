"""What the training commands share on the command line: ``--config FILE``, ``--set key=value`` and ``--out DIR``.

``--out`` is the one folder a run writes to (checkpoints, metrics, the final model in ``DIR/final``); without it
the config's own output folder is used (under ``./runs`` in every shipped config). The folder is checked before
anything is built or loaded.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import TypeVar

from anygen.config import load_config
from anygen.paths import check_output_dir

T = TypeVar("T")


def add_run_arguments(parser: argparse.ArgumentParser, example_config: str, example_set: str) -> None:
    """Add ``--config``, ``--set`` and ``--out`` to ``parser``."""
    parser.add_argument("--config", required=True, help=f"YAML file, e.g. {example_config}")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help=f"override one config value, e.g. --set {example_set} (repeatable)")
    parser.add_argument("--out", default=None, metavar="DIR",
                        help="folder the run writes to (checkpoints, metrics, DIR/final); default: the config's")


def load_run_config(cls: type[T], args: argparse.Namespace) -> T:
    """The config of ``--config`` and ``--set``."""
    return load_config(cls, args.config, args.overrides)


def with_train_out_dir(config: T, args: argparse.Namespace) -> T:
    """A config with a ``train.out_dir`` (core and extend recipes): ``--out`` applied, the folder checked."""
    train = config.train  # type: ignore[attr-defined]
    if args.out is not None:
        train = dataclasses.replace(train, out_dir=args.out)
    check_output_dir("--out" if args.out is not None else "train.out_dir", train.out_dir)
    return dataclasses.replace(config, train=train)  # type: ignore[type-var]


def with_output_dir(config: T, args: argparse.Namespace) -> T:
    """A config with ``output_dir`` / ``final_dir`` (tokenizer and decoder recipes), both folders checked.

    With ``--out DIR`` the run writes only under DIR (the final model to DIR/final); without it, the final model
    goes to the config's ``final_dir``, or to ``<output_dir>/final`` when that is empty.
    """
    if args.out is not None:
        output_dir, final_dir, flag = args.out, str(Path(args.out) / "final"), "--out"
    else:
        output_dir, flag = config.output_dir, "output_dir"  # type: ignore[attr-defined]
        final_dir = config.final_dir or str(Path(output_dir) / "final")  # type: ignore[attr-defined]
    check_output_dir(flag, output_dir)
    check_output_dir("final_dir", final_dir)
    return dataclasses.replace(config, output_dir=output_dir, final_dir=final_dir)  # type: ignore[type-var]
