"""Does the order of an edit's prompt matter? Two small cores are trained the same way on the same fresh edits
(anygen-tiny's tokenizers, edits only), one asking ``<picture> <instruction>`` and one ``<instruction> <picture>``
(the layout anygen uses), and scored on the same held-out edits: the loss on the target picture's codes and the
share of them predicted right (teacher forced), overall and on the codes that equal the source's code at the same
place (what an edit copies). Writes the ``edit-layout`` section of benchmarks/RESULTS.md.

    python benchmarks/edit_layout.py --steps 600 --threads 1
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

from anygen.assets import DEFAULT_MODEL  # noqa: E402
from anygen.core import CoreConfig  # noqa: E402
from anygen.data.corpus import DataConfig, build_item  # noqa: E402
from anygen.model import AnyGen  # noqa: E402
from anygen.training.core_data import IGNORE, collate, tokenize_corpus  # noqa: E402

LAYOUTS = {"picture, then instruction": lambda prompt: prompt[::-1], "instruction, then picture (anygen)": list}


def edit_rows(model: AnyGen, layout, seed: int, step: int, count: int) -> tuple[list, list[list[int]]]:
    """``count`` fresh edits of ``(seed, step)`` as (prompt, target) id rows, and each row's source codes."""
    items = [build_item(DataConfig(), "train" if seed >= 0 else "validation", "edit",
                        np.random.default_rng([abs(seed), step, row])) for row in range(count)]
    for item in items:
        item["prompt"] = layout(item["prompt"])  # items come instruction first
    corpus = tokenize_corpus(items, model.processor)
    sources = [[i for i in prompt if model.vocab.modality_of(torch.tensor(i)) == 1][:64] for prompt in corpus.prompt]
    return list(zip(corpus.prompt, corpus.target)), sources


def score(model: AnyGen, rows: list, sources: list[list[int]]) -> dict[str, float]:
    """Target-image code loss and accuracy, overall and where the target keeps the source's code."""
    batch = collate(rows, model.vocab)
    with torch.no_grad():
        logits = model.eval()(batch.input_ids, batch.attention_mask).logits[:, :-1]
    labels = batch.labels[:, 1:]
    image = (labels != IGNORE) & (model.vocab.modality_of(labels.clamp(min=0)) == 1)
    loss = torch.nn.functional.cross_entropy(logits[image], labels[image])
    right = logits.argmax(-1) == labels
    kept = torch.zeros_like(image)
    for r, (prompt, target) in enumerate(rows):
        start = 1 + len(prompt) + 1  # bos, prompt, <|image|>; labels are shifted by one
        codes = torch.tensor(target[1:65])
        kept[r, start - 1:start - 1 + 64] = codes == torch.tensor(sources[r])
    return {"loss": float(loss), "accuracy": float(right[image].float().mean()),
            "kept_accuracy": float(right[kept & image].float().mean()), "kept_share": float(kept.sum() / image.sum())}


def train_one(layout, steps: int, batch: int, seed: int, held_out: tuple[list, list]) -> tuple[dict, float]:
    shipped = AnyGen.from_pretrained(DEFAULT_MODEL)
    torch.manual_seed(seed)
    model = AnyGen.create(shipped.text_tokenizer, shipped.tokenizers, CoreConfig(
        hidden_size=192, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=512,
        max_position_embeddings=256))
    model.train()
    optimizer = torch.optim.AdamW(model.core.parameters(), lr=1e-3, betas=(0.9, 0.95), weight_decay=0.1)
    began = time.perf_counter()
    for step in range(steps):
        rows, _ = edit_rows(model, layout, seed, step, batch)
        b = collate(rows, model.vocab)
        lr = 1e-3 * min(1.0, (step + 1) / 50) * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * step / steps)))
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = model.train()(b.input_ids, b.attention_mask, b.labels).loss
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.core.parameters(), 1.0)
        optimizer.step()
    return score(model, *held_out(model)), time.perf_counter() - began


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--held-out", type=int, default=128, help="validation edits scored")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-write", action="store_true", help="print the table only")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    lines = ["| prompt layout | target-code loss | codes right | codes kept from the source: right | "
             "train time |", "|---|---|---|---|---|"]
    for name, layout in LAYOUTS.items():
        held_out = lambda model, layout=layout: edit_rows(model, layout, -args.seed, 10**6, args.held_out)  # noqa: E731
        result, seconds = train_one(layout, args.steps, args.batch, args.seed, held_out)
        lines.append(f"| {name} | {result['loss']:.2f} | {100 * result['accuracy']:.1f} % | "
                     f"{100 * result['kept_accuracy']:.1f} % (of {100 * result['kept_share']:.0f} % of the codes) | "
                     f"{seconds / 60:.0f} min |")
        print(lines[-1], flush=True)
    body = "\n".join([
        "## Edit prompt layout", "",
        f"`python benchmarks/edit_layout.py {shlex.join(argv if argv is not None else sys.argv[1:])}`: two cores "
        f"(192 wide, 4 layers) trained {args.steps} steps x {args.batch} fresh edits each, same seeds, scored on "
        f"{args.held_out} validation edits (teacher forced).", "", *lines])
    if not args.no_write:
        write_section("edit-layout", body)
    print(body)


if __name__ == "__main__":
    main()
