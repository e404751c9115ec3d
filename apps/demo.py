"""Launch the anygen Gradio demo from a source checkout: ``python apps/demo.py --model path/to/model``.

The same app is ``anygen demo`` once the package is installed; see :mod:`anygen.apps.demo`.
"""

from __future__ import annotations

import argparse
import sys


def run(argv: list[str] | None = None) -> int:
    """Parse the demo's options and serve it until interrupted; expected failures print one line."""
    from anygen.apps.demo import add_arguments, main
    from anygen.errors import AnygenError

    parser = argparse.ArgumentParser(prog="apps/demo.py", description="anygen interleaved Gradio demo")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except AnygenError as err:
        print(f"apps/demo.py: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(run())
