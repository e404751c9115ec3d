"""How far from trained a saved model starts on a new tokenizer of one modality: the loss of the tasks of that
modality (audio: text -> speech, speech -> text, text -> melody, melody -> text; image: text -> image, image ->
text, edit) on fresh validation rows, on its own tokenizer and after ``model.replace_tokenizers`` swaps in
``--codec`` with its rows kept or aligned on 256 / 2,048 generated items (``model.align_items``). Writes the
``codec-swap-<modality>`` section of benchmarks/RESULTS.md (docs/tokenizers.md quotes it).

    python benchmarks/codec_swap.py --codec runs/tokenizers/audio-v5-fsq/final --threads 2
    python benchmarks/codec_swap.py --modality image --codec runs/tokenizers/image-local/final --threads 2
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

TASKS = {"audio": ("text_to_speech", "speech_to_text", "text_to_melody", "melody_to_text"),
         "image": ("text_to_image", "image_to_text", "edit")}
KINDS = {"audio": "audio_codec", "image": "image_vq"}
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "train" / "tiny-v5.yaml"


def task_losses(model: recipe.AnyGen, config: recipe.CoreTrainConfig, tasks: tuple[str, ...], batches: int,
                rows: int) -> dict[str, float]:
    """Mean loss per target modality over ``batches`` batches of fresh validation rows of ``tasks``."""
    source = StreamRows(config.data.corpus, model.processor, dict.fromkeys(tasks, 1.0), 0.0, rows, 99,
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
    parser.add_argument("--modality", choices=sorted(TASKS), default="audio")
    parser.add_argument("--codec", required=True, help="the new tokenizer's directory (same codebook layout)")
    parser.add_argument("--batches", type=int, default=4, help="batches of 16 rows")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    m = args.modality
    swap = f"model.replace_tokenizers.{m}={{kind: {KINDS[m]}, path: {args.codec}}}"
    starts = [("its own tokenizer", []), ("new tokenizer, rows kept (`align_items=0`)", [swap, "model.align_items=0"]),
              ("new tokenizer, aligned on 256 items", [swap, "model.align_items=256"]),
              ("new tokenizer, aligned on 2,048 items (the default)", [swap, "model.align_items=2048"])]
    lines = [f"| start | {m}-token loss | text-token loss | build time |", "|---|---|---|---|"]
    for label, overrides in starts:
        config = load_config(recipe.CoreTrainConfig, CONFIG,
                             [f"model.init_from={args.model}", "train.out_dir=unused", *overrides])
        began = time.perf_counter()
        model = recipe.build_model(config, None)
        seconds = time.perf_counter() - began
        losses = task_losses(model, config, TASKS[m], args.batches, 16)
        lines.append(f"| {label} | {losses[m]:.2f} | {losses['text']:.2f} | {seconds:.0f} s |")
        print(lines[-1], flush=True)
    body = "\n".join([
        f"## Swapping in a new {m} tokenizer (`model.replace_tokenizers`)", "",
        f"`python benchmarks/codec_swap.py {shlex.join(argv if argv is not None else sys.argv[1:])}`: the "
        f"loss of {args.model}'s {m} tasks ({', '.join(TASKS[m])}) on {16 * args.batches} fresh validation rows, "
        f"{args.threads} thread(s). A uniform guess over 1,024 codes costs 6.93.", "", *lines])
    if not args.no_write:
        write_section(f"codec-swap-{m}", body)
    print(body)


if __name__ == "__main__":
    main()
