"""``anygen convert --from {chameleon,janus,emu3} SRC DST``: a local transformers checkpoint -> an anygen model.

    anygen convert --from janus Janus-Pro-1B janus-pro-1b-anygen
    anygen convert --from emu3 Emu3-Gen-hf emu3-anygen --image-size 720 720 --dtype bfloat16
    anygen convert --from chameleon Anole-7b-hf anole-anygen --vqgan vqgan.safetensors

``DST`` then loads with ``anygen.load(DST)`` (and runs in ``anygen demo --model DST``). Nothing is downloaded: SRC
is a directory holding the checkpoint's ``config.json``, safetensors weights and ``tokenizer.json``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from anygen.errors import InvalidArgumentError
from anygen.model import AnyGen
from anygen.saved_model import is_model_dir

FAMILIES: dict[str, str] = {"chameleon": "anygen.interop.chameleon:from_chameleon",
                            "janus": "anygen.interop.janus:from_janus", "emu3": "anygen.interop.emu3:from_emu3"}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Options a family takes besides the source directory and dtype.
OPTIONS = {"chameleon": ("vqgan_weights", "encoder_only", "image_size"), "janus": (), "emu3": ("image_size",)}


def converter(family: str) -> Callable[..., AnyGen]:
    """``from_chameleon`` / ``from_janus`` / ``from_emu3`` by family name."""
    import importlib

    if family not in FAMILIES:
        raise InvalidArgumentError(f"family={family!r}; choose one of {sorted(FAMILIES)}")
    module, _, name = FAMILIES[family].partition(":")
    return getattr(importlib.import_module(module), name)


def convert(family: str, source: str | Path, destination: str | Path, *, dtype: torch.dtype | None = None,
            overwrite: bool = False, **options: Any) -> AnyGen:
    """Convert the ``family`` checkpoint at ``source`` and save it to ``destination``; returns the model.

    ``options`` are the family's own (``vqgan_weights``, ``encoder_only``, ``image_size``); one the family does not
    take is refused before anything is read.
    """
    unknown = sorted(set(options) - set(OPTIONS.get(family, ())))
    if unknown:
        raise InvalidArgumentError(f"--from {family} does not take {unknown}; it takes {list(OPTIONS.get(family, ()))}")
    build = converter(family)
    destination = Path(destination)
    if not overwrite and destination.exists() and not is_model_dir(destination) and any(destination.iterdir()):
        raise InvalidArgumentError(f"DST={destination} is a non-empty folder that is not an anygen model; choose "
                                   "another or pass --overwrite")
    if not Path(source).is_dir():
        raise InvalidArgumentError(f"SRC={source} is not a directory (a local transformers checkpoint)")
    model = build(source, dtype=dtype, **options)
    model.save_pretrained(destination, overwrite=overwrite)
    return model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``anygen convert`` flags."""
    parser.add_argument("--from", dest="family", required=True, choices=sorted(FAMILIES),
                        help="the source checkpoint's family")
    parser.add_argument("source", metavar="SRC", help="a local transformers checkpoint directory")
    parser.add_argument("destination", metavar="DST", help="where the anygen model is written")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="load and store the weights in this dtype (default: the checkpoint's)")
    parser.add_argument("--image-size", type=int, nargs=2, metavar=("H", "W"), default=None,
                        help="image size (chameleon, emu3; Janus draws one size)")
    parser.add_argument("--vqgan", default=None, metavar="FILE",
                        help="chameleon: the released VQGAN (vqgan.ckpt converted to safetensors), its pixel decoder")
    parser.add_argument("--encoder-only", action="store_true",
                        help="chameleon: convert without a pixel decoder (the model reads images, cannot draw them)")
    parser.add_argument("--overwrite", action="store_true", help="replace DST whatever it holds")


def main(args: argparse.Namespace) -> int:
    """Run ``anygen convert``; prints one line about the result."""
    options: dict[str, Any] = {}
    if args.image_size is not None:
        options["image_size"] = tuple(args.image_size)
    if args.vqgan is not None:
        options["vqgan_weights"] = args.vqgan
    if args.encoder_only:
        options["encoder_only"] = True
    model = convert(args.family, args.source, args.destination, dtype=DTYPES.get(args.dtype), overwrite=args.overwrite,
                    **options)
    params = sum(p.numel() for p in model.core.parameters())
    print(f"converted {args.family} {args.source} -> {args.destination}: {type(model.core).__name__} core, "
          f"{params:,} parameters, {model.vocab}")
    return 0
