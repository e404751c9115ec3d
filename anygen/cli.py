"""The ``anygen`` console script: a plain dict of sub-commands, each a module with ``add_arguments`` and ``main``.

Only the module of the command being run is imported, so ``anygen --help`` stays fast. A user error (a bad flag, a
missing file, an :class:`~anygen.errors.AnygenError` from the library) is one line on stderr and exit status 2;
each command checks its flags and paths before it loads a model.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from types import ModuleType
from typing import NoReturn, Sequence

from anygen import __version__
from anygen.errors import AnygenError

COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("anygen.apps.showcase", "generate a showcase of every task into a folder with an index.html"),
    "data": ("anygen.data.cli", "build the synthetic training corpus (shapes, edits, digits, speech, melodies)"),
    "eval": ("anygen.evaluation.cli", "run the automatic evaluators on a model or on ground truth"),
    "train": ("anygen.training.core_cli", "train the core on the mixed corpus from a YAML config"),
    "train-tokenizer": ("anygen.training.tokenizer_cli", "train an image or audio tokenizer from a YAML config"),
    "extend": ("anygen.training.extend_cli", "add a modality to a trained model (modes gated, lora, rows, full)"),
    "train-decoder": ("anygen.training.decoder_cli", "train an upscale or diffusion image decoder (YAML config)"),
    "demo": ("anygen.apps.demo", "serve the Gradio demo: interleaved chat, text to image, image editing, speech"),
    "serve": ("anygen.apps.serve", "serve an OpenAI-compatible HTTP API (chat, images, audio), batching all requests"),
    "convert": ("anygen.interop.convert",
                "convert a local Chameleon/Anole, Janus or Emu3 checkpoint to an anygen model"),
}
USER_ERROR = 2


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose usage errors are one line (the usage itself stays in ``--help``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")


def one_line(text: str) -> str:
    """``text`` with its lines joined, so that an error is one line on the terminal."""
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip())


def command_parser(name: str, module: ModuleType) -> argparse.ArgumentParser:
    """The parser of ``anygen NAME``, with the arguments of its ``module``."""
    parser = OneLineParser(prog=f"anygen {name}", description=COMMANDS[name][1])
    module.add_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``anygen``; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    width = max(map(len, COMMANDS))
    top = OneLineParser(prog="anygen", description="Any-to-any generation: text, images and audio.",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="commands (anygen COMMAND --help for their options):\n" + "\n".join(
                            f"  {name:<{width}}  {desc}" for name, (_, desc) in COMMANDS.items()))
    top.add_argument("--version", action="version", version=f"anygen {__version__}")
    top.add_argument("command", choices=sorted(COMMANDS), metavar="COMMAND", help="one of the commands below")
    if not argv or argv[0] in ("-h", "--help"):
        top.print_help()
        return 0 if argv else USER_ERROR
    name = top.parse_args(argv[:1]).command
    try:
        module = importlib.import_module(COMMANDS[name][0])
        return int(module.main(command_parser(name, module).parse_args(argv[1:])) or 0)
    except AnygenError as err:  # expected failures: one clear line, no traceback
        print(f"anygen {name}: error: {one_line(err)}", file=sys.stderr)
        return USER_ERROR
    finally:
        _leave_process_group()


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """Run ``anygen`` as a program (the console script, ``python -m anygen`` and the recipes' modules) and exit with
    its status. One of several processes a launcher started (``WORLD_SIZE`` > 1: torchrun, ``accelerate launch``)
    exits at once once its output is flushed, skipping the interpreter's teardown: there gloo's threads, still
    holding tensors, can abort a process whose work is done ("terminate called without an active exception"),
    even after :func:`main` destroyed the process group."""
    code = main(argv)
    if int(os.environ.get("WORLD_SIZE") or 1) > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(code)
    sys.exit(code)


def _leave_process_group() -> None:
    """Destroy the process group a multi-process command (``anygen train`` under ``accelerate launch``) created,
    while the interpreter is whole."""
    dist = sys.modules.get("torch.distributed")  # never imports torch for commands that did not
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    run()
