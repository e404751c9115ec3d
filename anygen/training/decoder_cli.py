"""Command line of the decoder recipe: ``anygen train-decoder --config FILE [--set key=value ...]``.

Also runnable as ``python -m anygen.training.decoder_cli --config FILE``.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from anygen.config import load_config
from anygen.training.decoder_recipe import DecoderTrainConfig
from anygen.training.decoder_recipe import main as train


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and ``--set`` to ``parser``."""
    parser.add_argument("--config", required=True, help="YAML file, e.g. configs/decoder/image-tiny.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override one config value, e.g. --set train.steps=100 (repeatable)")


def main(args: argparse.Namespace) -> int:
    """Run the recipe with parsed ``args``; prints the final metrics as JSON and returns the exit status 0."""
    config = load_config(DecoderTrainConfig, args.config, args.overrides)
    result = train(config)
    print(json.dumps(asdict(result), indent=2))
    return 0


if __name__ == "__main__":
    cli = argparse.ArgumentParser(prog="anygen train-decoder", description=__doc__)
    add_arguments(cli)
    raise SystemExit(main(cli.parse_args()))
