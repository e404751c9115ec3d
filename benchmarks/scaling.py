"""Which core size and task mix learn the most per CPU-minute on this machine? Writes the ``scaling`` section of
MODEL_CARD.md.

Each run trains a new core of one size from scratch on the endless stream (``configs/train/tiny-v5.yaml``: the
shipped text BPE, image and audio tokenizers, so only the core differs), for about ``--budget`` CPU-minutes on one
thread, then scores it on the validation split (``anygen eval --suite all --n --eval-n``):

1. a probe of a few steps measures the run's CPU seconds per optimizer step (the stream's rendering included);
2. the run gets as many steps as fit the budget, its learning-rate schedule (warm-up, cosine decay) ending with them;
3. the stream's loss (every row is fresh, so it is a held-out loss) is read off ``metrics.jsonl`` at fixed
   CPU-minutes, and the final model is evaluated.

Runs are named ``SIZE`` or ``SIZE/MIX`` (sizes and mixes below). Every stage is skipped when its output exists, so
the same command continues an interrupted study:

    python benchmarks/scaling.py --out runs/scaling --runs S,M,L,M/gen --budget 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results_file import write_section  # noqa: E402

from anygen.assets import DEFAULT_MODEL  # noqa: E402
from anygen.core import CoreConfig  # noqa: E402
from anygen.model import AnyGen  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIG = "configs/train/tiny-v5.yaml"
SIZES = {
    "S": CoreConfig(hidden_size=192, num_layers=4, num_heads=3, num_kv_heads=1, intermediate_size=512,
                    max_position_embeddings=512),
    "M": CoreConfig(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, intermediate_size=704,
                    max_position_embeddings=512),
    "L": CoreConfig(hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=2, intermediate_size=1024,
                    max_position_embeddings=512),  # the shipped core's shape
}
MIXES = {
    # the v5 stream legs' mix (configs/train/tiny-v5.yaml)
    "v5": {"text_to_image": 3.0, "image_to_text": 2.0, "edit": 2.5, "text_to_speech": 1.0, "speech_to_text": 1.0,
           "text_to_melody": 1.5, "melody_to_text": 1.5, "interleaved": 1.5, "text": 0.5},
    # the first versions' mix (configs/train/tiny.yaml): more text -> image, less of the rest
    "gen": {"text_to_image": 4.0, "image_to_text": 2.0, "edit": 2.0, "text_to_speech": 1.0, "speech_to_text": 1.0,
            "text_to_melody": 1.0, "melody_to_text": 1.0, "interleaved": 1.0, "text": 0.5},
}
FINAL = 10_000  # CPU-minutes past any run: the last records
SUITE_KEYS = {"shapes": "ShapesEval", "prompts": "prompts", "caption": "caption", "edit": "edit",
              "text_to_speech": "t2s", "speech_to_text": "s2t", "text_to_melody": "t2m", "melody_to_text": "m2t",
              "interleaved": "interleaved"}


@dataclass
class Run:
    name: str
    size: str
    mix: str
    out: Path

    @classmethod
    def parse(cls, spec: str, root: Path) -> "Run":
        size, _, mix = spec.partition("/")
        mix = mix or "v5"
        if size not in SIZES or mix not in MIXES:
            raise SystemExit(f"--runs: {spec!r} is not SIZE[/MIX] with SIZE in {list(SIZES)}, MIX in {list(MIXES)}")
        return cls(spec, size, mix, root / spec.replace("/", "-"))


def parameters(model: AnyGen) -> int:
    return sum(p.numel() for p in model.core.parameters())


def make_init(run: Run, seed: int) -> int:
    """A new core of ``run.size`` over the shipped tokenizers, saved to ``<out>/init``; its parameter count."""
    shipped = AnyGen.from_pretrained(DEFAULT_MODEL)
    torch.manual_seed(seed)
    model = AnyGen.create(shipped.text_tokenizer, shipped.tokenizers, SIZES[run.size])
    if not (run.out / "init" / "config.json").exists():
        model.save_pretrained(run.out / "init")
    return parameters(model)


def train(run: Run, out_dir: Path, steps: int, extra: list[str]) -> None:
    weights = "{" + ", ".join(f"{k}: {v}" for k, v in MIXES[run.mix].items()) + "}"
    sets = [f"model.init_from={run.out / 'init'}", f"train.out_dir={out_dir}", f"optim.steps={steps}",
            f"data.task_weights={weights}", "optim.lr=0.001", "optim.min_lr=0.0001",
            f"optim.warmup_steps={max(1, min(100, steps // 10))}", "train.threads=1", "train.eval_every=0",
            "train.checkpoint_every=50", *extra]
    cmd = [sys.executable, "-m", "anygen", "train", "--config", CONFIG]
    for item in sets:
        cmd += ["--set", item]
    subprocess.run(cmd, check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})


def records(path: Path) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if "loss" in r]


def cpu_per_step(run: Run) -> float:
    """CPU seconds per optimizer step, from a 12-step probe (the first 4 steps, with start-up, not counted)."""
    probe = run.out / "probe"
    if not (probe / "metrics.jsonl").exists() or len(records(probe / "metrics.jsonl")) < 12:
        train(run, probe, 12, ["train.log_every=1", "train.checkpoint_every=1000"])
    rows = {r["step"]: r["cpu_s"] for r in records(probe / "metrics.jsonl")}
    return (rows[12] - rows[4]) / 8


def loss_at(rows: list[dict], cpu_minutes: float, window: int = 10) -> dict | None:
    """Mean loss (and per-modality losses) of the ``window`` records logged just before ``cpu_minutes``."""
    before = [r for r in rows if (r["cpu_s"] - rows[0]["cpu_s"]) / 60 <= cpu_minutes]
    if len(before) < window:
        return None
    last = before[-window:]
    parts = sorted(last[-1]["losses"])
    return {"loss": sum(r["loss"] for r in last) / window,
            **{k: sum(r["losses"][k] for r in last) / window for k in parts}}


def evaluate(run: Run, n: int) -> dict:
    path = run.out / "eval.json"
    if not path.exists():
        subprocess.run([sys.executable, "-m", "anygen", "eval", "--model", str(run.out / "train" / "final"),
                        "--suite", "all", "--n", str(n), "--seed", "0", "--split", "validation",
                        "--json", str(path)], check=True, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(path.read_text())


def scores(result: dict) -> dict[str, float]:
    """suite -> overall score, from ``anygen eval --json``."""
    return {r["suite"]: r["overall"] for r in result["results"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/scaling"))
    parser.add_argument("--runs", default="S,M,L", help="comma-separated SIZE[/MIX] (default: S,M,L)")
    parser.add_argument("--budget", type=float, default=20.0, help="CPU-minutes of training per run")
    parser.add_argument("--eval-n", type=int, default=4, help="validation items per category")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-write", action="store_true", help="print the table; leave MODEL_CARD.md alone")
    args = parser.parse_args()
    runs = [Run.parse(spec, args.out.resolve()) for spec in args.runs.split(",")]
    marks = [m for m in (5, 10, 15, 20, 30, 45, 60) if m <= args.budget]
    table = [study(run, args, marks) for run in runs]
    body = render(table, marks, args)
    print(body)
    if not args.no_write:
        write_section("scaling", body, ROOT / "MODEL_CARD.md")


def study(run: Run, args: argparse.Namespace, marks: list[int]) -> dict:
    """Probe, train and evaluate one run (each stage skipped when done); its row of the table, also written to
    ``<out>/summary.json``."""
    run.out.mkdir(parents=True, exist_ok=True)
    params = make_init(run, args.seed)
    per_step = cpu_per_step(run)
    steps = max(20, int(args.budget * 60 / per_step))
    print(f"[{run.name}] {params / 1e6:.1f}M parameters, {per_step:.2f} CPU-s per step -> {steps} steps", flush=True)
    while not (run.out / "train" / "final" / "config.json").exists():
        # the step count sets the budget; the wall-clock cap only splits a run slowed by other work (it continues)
        train(run, run.out / "train", steps, [f"train.max_minutes={4 * args.budget}"])
    rows = records(run.out / "train" / "metrics.jsonl")
    row = {"run": run.name, "size": run.size, "mix": run.mix, "params": params, "steps": steps,
           "core": asdict(SIZES[run.size]), "cpu_minutes": (rows[-1]["cpu_s"] - rows[0]["cpu_s"]) / 60,
           "loss": {m: loss_at(rows, m) for m in [*marks, FINAL]}, "scores": scores(evaluate(run, args.eval_n))}
    (run.out / "summary.json").write_text(json.dumps(row, indent=1))
    return row


def render(table: list[dict], marks: list[int], args: argparse.Namespace) -> str:
    lines = [f"From `python benchmarks/scaling.py --runs {args.runs} --budget {args.budget:g} --eval-n {args.eval_n}`"
             f" (one thread per run; CPU-minutes include the stream's rendering):", "",
             "| run | core (hidden x layers) | parameters | steps x 32 rows | CPU-min | "
             + " | ".join(f"loss at {m} CPU-min" for m in marks) + " | final loss (text / image / audio) |",
             "|---" * (6 + len(marks)) + "|"]
    for row in table:
        core = row["core"]
        final = row["loss"][FINAL]
        losses = [row["loss"][m] for m in marks]
        lines.append(f"| {row['run']} | {core['hidden_size']} x {core['num_layers']} | {row['params'] / 1e6:.1f}M | "
                     f"{row['steps']} | {row['cpu_minutes']:.1f} | "
                     + " | ".join("-" if v is None else f"{v['loss']:.3f}" for v in losses)
                     + f" | {final['loss']:.3f} ({final.get('text', 0):.2f} / {final.get('image', 0):.2f} / "
                       f"{final.get('audio', 0):.2f}) |")
    suites = list(SUITE_KEYS)
    lines += ["", f"Validation scores ({args.eval_n} items per category):", "",
              "| run | " + " | ".join(SUITE_KEYS[s] for s in suites) + " |", "|---" * (1 + len(suites)) + "|"]
    for row in table:
        lines.append(f"| {row['run']} | " + " | ".join(
            f"{row['scores'][s]:.3f}" if s in row["scores"] else "-" for s in suites) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
