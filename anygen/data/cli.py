"""``anygen data build``: write the synthetic corpus as sharded JSONL plus media.

Example::

    anygen data build --seed 0                                        # default sizes into runs/corpus (a minute)
    anygen data build --out runs/tiny --scale 0.05 --size edit=100    # smaller, with 100 edit pairs
    anygen data build --out runs/c --config configs/data/default.yaml --set image_size=32
"""

from __future__ import annotations

import argparse
import json
import time

from anygen.config import load_config
from anygen.data.corpus import TASKS, DataConfig
from anygen.data.shapes import SPLITS
from anygen.data.shards import write_corpus
from anygen.errors import InvalidArgumentError, check_range
from anygen.paths import check_output_dir

MAX_SCALE = 1000.0  # x the default sizes: millions of items, more than one disk should hold


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``build`` under ``anygen data``."""
    commands = parser.add_subparsers(dest="data_command", required=True)
    build = commands.add_parser("build", help="generate the training corpus (JSONL shards + media)")
    build.add_argument("--out", default="runs/corpus",
                       help="output directory, must be empty unless --overwrite (default: runs/corpus)")
    build.add_argument("--seed", type=int, default=None, help="master seed (default 0, or the config's)")
    build.add_argument("--config", default=None, help="YAML file for DataConfig (e.g. configs/data/default.yaml)")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a DataConfig field, e.g. --set image_size=32")
    build.add_argument("--size", action="append", default=[], metavar="TASK=N",
                       help=f"training items for one task; tasks: {', '.join(TASKS)}")
    build.add_argument("--scale", type=float, default=1.0, help="multiply every task's size (e.g. 0.1)")
    build.add_argument("--splits", default=",".join(SPLITS), help="comma-separated splits to build")
    build.add_argument("--shard-size", type=int, default=1000, help="items per JSONL shard")
    build.add_argument("--overwrite", action="store_true", help="replace an existing non-empty --out")


def config_from_args(args: argparse.Namespace) -> DataConfig:
    """DataConfig from --config / --set, then --seed, --scale and --size applied on top."""
    cfg = load_config(DataConfig, args.config, args.overrides)
    if args.seed is not None:
        cfg.seed = args.seed
    check_range("--scale", args.scale, 0, MAX_SCALE)
    sizes = {task: int(round(n * args.scale)) for task, n in cfg.sizes.items()}
    for item in args.size:
        task, _, value = item.partition("=")
        if task not in TASKS or not value.isdigit():
            raise InvalidArgumentError(f"--size {item!r} must be TASK=N with TASK in {list(TASKS)}")
        sizes[task] = int(value)
    return DataConfig(cfg.seed, cfg.image_size, sizes, cfg.eval_fraction, cfg.digit_fraction, cfg.chord_fraction)


def main(args: argparse.Namespace) -> int:
    """Run ``anygen data build``; prints the manifest's counts. Returns the exit status."""
    if args.data_command != "build":
        raise InvalidArgumentError(f"unknown data command {args.data_command!r}; use `anygen data build`")
    check_output_dir("--out", args.out)
    cfg = config_from_args(args)
    splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
    start = time.perf_counter()
    manifest = write_corpus(cfg, args.out, splits, args.shard_size, args.overwrite)
    counts = {split: info["tasks"] for split, info in manifest["splits"].items()}
    print(json.dumps(counts, indent=2))
    print(f"wrote {sum(i['count'] for i in manifest['splits'].values())} items to {args.out} "
          f"in {time.perf_counter() - start:.1f} s")
    return 0
