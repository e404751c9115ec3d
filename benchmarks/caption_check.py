"""How should ``caption()`` check what it decoded? Writes the ``caption-check`` section of benchmarks/RESULTS.md.

Per scene of the caption suite (``--n`` per category, for each of ``--seeds``, as ``anygen eval --suite caption``),
the shipped model's decoded (greedy) caption is compared with every near miss of it
(:func:`anygen.data.language.near_misses`), each scored both ways once: the picture's log-likelihood after the text
(text -> image) and the text's after the picture (image -> text). The columns re-rank the same options offline, so
they are paired: *decoded*: the caption as decoded (``check=False``); *picture only*: the option with the highest
picture log-likelihood; *w = x*: picture log-likelihood plus x times the text's, over the near misses in colour and
shape (``caption_options``, what ``caption()`` ranks, with ``w`` its ``CAPTION_TEXT_WEIGHT``); *all, w = 1*: the same
over every near miss (counts and relations too); *any*: some colour-and-shape option passes (a perfect checker).
Judged as in ``anygen eval``.

    python benchmarks/caption_check.py --seeds 1 2 0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from candidates import parse_and_load, section_head  # noqa: E402
from results_file import publish  # noqa: E402

from anygen.data.language import describe, near_misses, parse_text  # noqa: E402
from anygen.data.scenes import render_scene  # noqa: E402
from anygen.evaluation.caption import score_caption  # noqa: E402
from anygen.evaluation.suites import build_items  # noqa: E402
from anygen.generation.ranking import caption_options  # noqa: E402
from anygen.pipeline_inputs import image_tensors  # noqa: E402
from anygen.pipelines import AnyGenPipeline  # noqa: E402

WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
COLUMNS = ("decoded", "picture only", *(f"w = {w:g}" for w in WEIGHTS), "all, w = 1", "any")


def run(pipe: AnyGenPipeline, seed: int, split: str, n: int) -> dict[str, list[bool]]:
    rows: dict[str, list[bool]] = {c: [] for c in COLUMNS}
    for sample in tqdm(build_items("caption", n, seed, split)["shapes"], desc=f"captions (seed {seed}, {split})"):
        picture = render_scene(sample.scene, 64)
        decoded = pipe.caption(picture, check=False).texts[0]
        spec = parse_text(decoded)
        options = list(dict.fromkeys([describe(spec), *(describe(m) for m in near_misses(spec))]))
        checked = set(caption_options(decoded))
        span = pipe._picture_ids(image_tensors(picture, pipe.image_size))
        right = score_caption(decoded, sample.scene, sample.category)["passed"]
        passed = [score_caption(o, sample.scene, sample.category)["passed"] for o in options]
        if spec.objects:
            forward, backward = pipe._picture_scores(span, [options])[0], pipe._text_scores(span, [options])[0]
            kept = [j for j, o in enumerate(options) if o in checked]
            picks = {"picture only": max(kept, key=forward.__getitem__),
                     **{f"w = {w:g}": max(kept, key=lambda j, w=w: forward[j] + w * backward[j]) for w in WEIGHTS},
                     "all, w = 1": max(range(len(options)), key=lambda j: forward[j] + backward[j])}
        for column in COLUMNS[1:-1]:  # nothing to check (no shape named): the decoded caption stands
            rows[column].append(passed[picks[column]] if spec.objects else right)
        rows["decoded"].append(right)
        rows["any"].append(right or any(p for o, p in zip(options, passed) if o in checked))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12, help="scenes per category, as anygen eval --n")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 0], help="item-set seeds (the card's is 0)")
    args, pipe = parse_and_load(parser)
    lines = section_head("caption(check=True): what a decoded caption is checked against",
                         "Paired re-rankings of each decoded caption's options (module docstring); seed 0 is the "
                         "model card's draw.", ["seed", "split", "scenes", *COLUMNS])
    for seed in args.seeds:
        for split in args.splits:
            rows = run(pipe, seed, split, args.n)
            rates = " | ".join(f"{sum(rows[c]) / len(rows[c]):.3f}" for c in COLUMNS)
            lines.append(f"| {seed} | {split} | {len(rows['decoded'])} | {rates} |")
            print(lines[-1], flush=True)
    publish("caption-check", lines, write=not args.no_write)


if __name__ == "__main__":
    main()
