"""Does ``generate`` gain from checking the captions it writes? Writes the ``generate-captions`` section of
benchmarks/RESULTS.md.

The interleaved suite (``--n`` documents per kind, for each of ``--seeds``, as ``anygen eval --suite interleaved``)
is answered with ``generate``'s defaults, every call seeded as ``anygen eval`` seeds it, and judged as there,
twice: *as written* (``check_captions=False``: each text as the model wrote it) and *checked*
(the default: a text that describes a scene is checked against the picture before it, as ``caption`` checks its
captions). Both answers are sampled under the same seed, so they differ only in the checked texts.

    python benchmarks/generate_captions.py --seeds 1 2 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import section_head  # noqa: E402
from generate_sampling import answered, parse_interleaved_args  # noqa: E402
from results_file import publish  # noqa: E402

from anygen.data.interleaved import DOC_KINDS  # noqa: E402

SETTINGS = {"as written": False, "checked": True}


def main() -> None:
    args, pipe = parse_interleaved_args(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    columns = [f"{name}: {kind}" for name in SETTINGS for kind in (*DOC_KINDS, "all")]
    lines = section_head("generate(check_captions=...): interleaved answers with their captions checked",
                         "Documents answered with every part right, per kind and in all (module docstring); seed 0 "
                         "is the model card's draw.", ["seed", "split", "documents", *columns])
    for head, results in answered(pipe, args, [{"check_captions": check} for check in SETTINGS.values()]):
        cells = [f"{x:.3f}" for r in results for x in (*(r.per_category[kind] for kind in DOC_KINDS), r.overall)]
        lines.append(head + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    publish("generate-captions", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
