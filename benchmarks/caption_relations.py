"""Can ``caption()`` check the relation a caption states? Writes the ``caption-relations`` section of
benchmarks/RESULTS.md.

Per scene of two single objects in the caption suite (``--n`` per category, for each of ``--seeds``, as ``anygen
eval --suite caption``), the scene's own objects are described four times, once with each relation ("a red circle
left of a blue square", "... right of ...", "... above ...", "... below ..."; exactly one holds), and each text is
scored both ways: the picture's log-likelihood after the text (text -> image) and the text's after the picture
(image -> text). The columns give how often the relation scored highest is the one that holds (chance: 0.25), by
*picture*, *text* and their *sum*, and *stated*: how often the likeliest text with a relation beats the same objects
with none (what a greedy caption would need to state one).

    python benchmarks/caption_relations.py --seeds 1 2 3
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import parse_and_load, section_head  # noqa: E402
from results_file import publish  # noqa: E402

from anygen.data.language import RELATIONS, Relation, describe, holds, scene_spec  # noqa: E402
from anygen.data.scenes import render_scene  # noqa: E402
from anygen.evaluation.suites import build_items  # noqa: E402
from anygen.pipeline_inputs import image_tensors  # noqa: E402

CATEGORIES = ("position", "two_object", "color_attr")
COLUMNS = ("picture", "text", "sum", "stated")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="scenes per category, as anygen eval --n")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="item-set seeds (the card's is 0)")
    args, pipe = parse_and_load(parser)
    lines = section_head("caption(): can the model tell which relation holds?",
                         "Scenes of two objects over all seeds; shares of scenes (module docstring).",
                         ["split", "category", "scenes", *COLUMNS])
    for split in args.splits:
        hits: dict[str, list[list[bool]]] = {c: [] for c in CATEGORIES}
        for seed in args.seeds:
            for sample in build_items("caption", args.n, seed, split)["shapes"]:
                objects = sample.scene.objects
                if sample.category not in CATEGORIES or len(objects) != 2:
                    continue
                spec = scene_spec(sample.scene)
                texts = [describe(replace(spec, relation=Relation(0, r, 1))) for r in RELATIONS] + [describe(spec)]
                span = pipe._picture_ids(image_tensors(render_scene(sample.scene), pipe.image_size))
                picture, text = pipe._picture_scores(span, [texts])[0], pipe._text_scores(span, [texts])[0]
                both = [p + t for p, t in zip(picture, text)]
                true = [holds(objects[0], r, objects[1]) for r in RELATIONS]
                hits[sample.category].append([true[int(np.argmax(scores[:4]))] for scores in (picture, text, both)]
                                             + [max(text[:4]) > text[4]])
        for category, rows in hits.items():
            shares = np.mean(rows, axis=0)
            lines.append(f"| {split} | {category} | {len(rows)} | " + " | ".join(f"{x:.3f}" for x in shares) + " |")
            print(lines[-1], flush=True)
    publish("caption-relations", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
