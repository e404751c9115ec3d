"""The ``anygen`` console script: a plain dict of sub-commands, each a module with ``add_arguments`` and ``main``.

Only the module of the command being run is imported, so ``anygen --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from anygen.errors import AnygenError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("anygen.apps.showcase", "generate a showcase of every task into a folder with an index.html"),
    "data": ("anygen.data.cli", "build the synthetic training corpus (shapes, edits, digits, speech, melodies)"),
    "eval": ("anygen.evaluation.cli", "run the automatic evaluators on a model or on ground truth"),
    "train": ("anygen.training.core_cli", "train the core on the mixed corpus from a YAML config"),
    "train-tokenizer": ("anygen.training.tokenizer_cli", "train an image or audio tokenizer from a YAML config"),
    "extend": ("anygen.training.extend_cli", "add a new modality to a trained model and train it (rows/lora/full)"),
    "train-decoder": ("anygen.training.decoder_cli", "train a diffusion decoder for an image tokenizer (YAML config)"),
    "demo": ("anygen.apps.demo", "serve the Gradio demo: interleaved chat, text to image, image editing, speech"),
    "serve": ("anygen.apps.serve", "serve an OpenAI-compatible HTTP API (chat, images, audio), batching all requests"),
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anygen``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="anygen", description="Any-to-any generation: text, images and audio.")
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND",
                     help="; ".join(f"{name}: {desc}" for name, (_, desc) in sorted(COMMANDS.items())))
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else 2
    name = top.parse_args(argv[:1]).command
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"anygen {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.main(args) or 0)
    except AnygenError as err:  # expected failures: one clear line, no traceback
        print(f"anygen {name}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
