"""How far from trained a saved model starts on a new codec: the loss of its audio tasks (text -> speech,
speech -> text, text -> melody, melody -> text) on fresh validation rows, on its own codec and after
``model.replace_tokenizers`` swaps in ``--codec`` with its rows kept or aligned on 256 / 2,048 clips
(``model.align_items``). Writes the ``codec-swap`` section of benchmarks/RESULTS.md (docs/tokenizers.md quotes it).

    python benchmarks/codec_swap.py --codec runs/tokenizers/audio-v5-fsq/final --threads 2
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

from anygen.config import load_config  # noqa: E402
from anygen.training import core_recipe as recipe  # noqa: E402
from anygen.training.core_data import RowKey, collate  # noqa: E402
from anygen.training.stream import StreamRows  # noqa: E402

AUDIO_TASKS = {"text_to_speech": 1.0, "speech_to_text": 1.0, "text_to_melody": 1.0, "melody_to_text": 1.0}
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-v5.yaml"


def task_losses(model: recipe.AnyGen, config: recipe.CoreTrainConfig, batches: int, rows: int) -> dict[str, float]:
    """Mean loss per target modality over ``batches`` batches of fresh validation rows of the audio tasks."""
    source = StreamRows(config.data.corpus, model.processor, AUDIO_TASKS, 0.0, rows, 99,
                        model.core.config.max_position_embeddings, split="validation")
    sums: dict[str, list[float]] = {}
    model.eval()
    for step in range(batches):
        batch = collate(source.rows(RowKey(step)), model.vocab)
        with torch.no_grad():
            out = model(batch.input_ids, batch.attention_mask, batch.labels)
        for name, value in out.losses.items():
            sums.setdefault(name, []).append(float(value))
    return {name: sum(v) / len(v) for name, v in sums.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="pkg://anygen-tiny", help="saved model (default: the shipped one)")
    parser.add_argument("--codec", required=True, help="the new audio codec's directory (same codebook layout)")
    parser.add_argument("--batches", type=int, default=4, help="batches of 16 rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    swap = f"model.replace_tokenizers.audio={{kind: audio_codec, path: {args.codec}}}"
    starts = [("its own codec", []), ("new codec, rows kept (`align_items=0`)", [swap, "model.align_items=0"]),
              ("new codec, aligned on 256 clips", [swap, "model.align_items=256"]),
              ("new codec, aligned on 2,048 clips (the default)", [swap, "model.align_items=2048"])]
    lines = ["| start | audio-token loss | text-token loss | build time |", "|---|---|---|---|"]
    for label, overrides in starts:
        config = load_config(recipe.CoreTrainConfig, CONFIG,
                             [f"model.init_from={args.model}", "train.out_dir=unused", *overrides])
        began = time.perf_counter()
        model = recipe.build_model(config, None)
        seconds = time.perf_counter() - began
        losses = task_losses(model, config, args.batches, 16)
        lines.append(f"| {label} | {losses['audio']:.2f} | {losses['text']:.2f} | {seconds:.0f} s |")
        print(lines[-1], flush=True)
    body = "\n".join([
        "## Swapping in a new codec (`model.replace_tokenizers`)", "",
        f"`python benchmarks/codec_swap.py {shlex.join(argv if argv is not None else sys.argv[1:])}`: the "
        f"loss of {args.model}'s audio tasks on {16 * args.batches} fresh validation rows, {args.threads} "
        "thread(s). A uniform guess over 1,024 codes costs 6.93.", "", *lines])
    if not args.no_write:
        write_section("codec-swap", body)
    print(body)


if __name__ == "__main__":
    main()
