"""Judges for the signal modality: read a signal's shape, cycle count, amplitude and noise back by template fitting.

A signal (any length) is resampled to :data:`ANALYSIS_LENGTH` points and fitted, by least squares with an
offset, against every (shape, cycles) template at :data:`PHASES` phases; the template with the smallest residual
gives shape and cycle count, the fitted gain the amplitude level (nearest of :data:`AMPLITUDES`), and the
residual's robust spread (1.4826 x its median absolute value) whether the signal is noisy (above
:data:`NOISE_THRESHOLD`). Text is judged by parsing its
description. ``python -m anygen.evaluation.signals --validate`` measures both judges on ground truth (correct
pairs must pass, mismatched pairs fail); ``--model DIR`` scores a saved model, ``--ground-truth`` the references.

Example:
    >>> import numpy as np
    >>> from anygen.data.signals import SignalSpec, render_signal
    >>> spec = SignalSpec("square", 3, "high", noisy=False)
    >>> read_signal(render_signal(spec, phase=0.3)).spec == spec
    True
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anygen.data.shapes import SPLITS
from anygen.data.signals import (
    AMPLITUDES,
    CYCLES,
    MODALITY,
    SHAPES,
    SignalSample,
    SignalSpec,
    parse_signal_text,
    render_signal,
    sample_signal,
    unit_wave,
)
from anygen.errors import InvalidArgumentError, MediaError, check_range
from anygen.evaluation.result import EvalResult, build_result
from anygen.evaluation.validation import Rates
from anygen.tokenizers.signal import resample_signal

ANALYSIS_LENGTH = 64
PHASES = 256
OVERSAMPLE = 8
NOISE_THRESHOLD = 0.022  # residual spread: clean references sit at 0.011 (max 0.020), noisy ones at 0.041 (min 0.026)


@dataclass(frozen=True)
class SignalReading:
    """What the judge read: the spec, the fitted peak ``gain`` and the robust spread of the fit's residual."""

    spec: SignalSpec
    gain: float
    residual: float


@functools.lru_cache(maxsize=1)
def _templates() -> tuple[np.ndarray, list[tuple[str, int]]]:
    """Zero-mean, unit-peak templates ``(shapes * cycles * PHASES, ANALYSIS_LENGTH)`` as the tokenizer sees them
    (rendered finely, then averaged over each analysis bin)."""
    fine = ANALYSIS_LENGTH * OVERSAMPLE
    t = (np.arange(fine) + 0.5) / fine  # (fine,) in windows
    phases = np.arange(PHASES)[:, None] / PHASES  # (P, 1)
    rows, keys = [], []
    for shape in SHAPES:
        for cycles in CYCLES:
            wave = unit_wave(shape, cycles * t[None, :] + phases)  # (P, fine)
            binned = wave.reshape(PHASES, ANALYSIS_LENGTH, OVERSAMPLE).mean(-1)  # (P, L)
            rows.append(binned - binned.mean(-1, keepdims=True))
            keys += [(shape, cycles)] * PHASES
    return np.concatenate(rows), keys


def read_signal(signal: torch.Tensor | np.ndarray) -> SignalReading:
    """Fit every template to ``signal`` (``(T,)``, any ``T >= 2``) and read its spec."""
    x = torch.as_tensor(np.asarray(signal, dtype=np.float32) if isinstance(signal, np.ndarray) else signal).float()
    if x.dim() != 1 or x.numel() < 2 or not bool(torch.isfinite(x).all()):
        raise MediaError(f"signal must be a finite (T,) tensor with T >= 2, got shape {tuple(x.shape)}")
    points = resample_signal(x, ANALYSIS_LENGTH).double().numpy()
    points = points - points.mean()
    templates, keys = _templates()
    norms = (templates ** 2).sum(-1)  # (K,)
    dots = templates @ points  # (K,)
    gains = dots / norms
    residuals = (points ** 2).sum() - np.where(gains > 0, dots * gains, 0.0)  # only positive gains fit
    best = int(np.argmin(residuals))
    shape, cycles = keys[best]
    gain = float(gains[best])
    amplitude = min(AMPLITUDES, key=lambda name: abs(AMPLITUDES[name] - gain))
    # Noise shows at every point, a slightly misplaced edge at one or two per cycle: a median-based spread
    # (scaled to a Gaussian's std) hears the first and ignores the second.
    spread = 1.4826 * float(np.median(np.abs(points - gain * templates[best])))
    return SignalReading(SignalSpec(shape, cycles, amplitude, spread > NOISE_THRESHOLD), gain, spread)


def score_signal(signal: torch.Tensor, spec: SignalSpec) -> dict[str, Any]:
    """Judge a signal against the spec it should show: ``passed`` needs all four attributes right."""
    reading = read_signal(signal)
    got = reading.spec
    checks = {"shape": got.shape == spec.shape, "cycles": got.cycles == spec.cycles,
              "amplitude": got.amplitude == spec.amplitude, "noise": got.noisy == spec.noisy}
    return {"passed": all(checks.values()), **checks, "read": got.text, "gain": reading.gain,
            "residual": reading.residual}


def score_signal_text(text: str, spec: SignalSpec) -> bool:
    """Whether ``text`` describes exactly ``spec`` (shape, cycles, amplitude and noise)."""
    return parse_signal_text(text) == spec


def signal_samples(n_per_shape: int, seed: int = 0, split: str = "test") -> list[SignalSample]:
    """``n_per_shape`` random signals per shape of ``split`` (deterministic from ``seed``)."""
    check_range("n_per_shape", n_per_shape, 1, 100_000)
    rng = np.random.default_rng([seed, 4242, SPLITS.index(split)])
    return [sample_signal(rng, split, shape) for shape in SHAPES for _ in range(n_per_shape)]


def evaluate_text_to_signal(make_signal: Callable[[str], torch.Tensor | None],
                            samples: Sequence[SignalSample]) -> EvalResult:
    """Call ``make_signal(description) -> (T,) signal`` (None: no signal produced) per sample."""
    details = []
    for sample in samples:
        signal = make_signal(sample.text)
        result = {"passed": False, "read": None} if signal is None else score_signal(signal, sample.spec)
        details.append({"text": sample.text, **result})
    return build_result("text_to_signal", [s.spec.shape for s in samples], [d["passed"] for d in details], details,
                        _attribute_accuracy(details))


def evaluate_signal_to_text(describe: Callable[[torch.Tensor], str], samples: Sequence[SignalSample]) -> EvalResult:
    """Call ``describe(signal) -> text`` per sample; a pass names the sample's spec exactly."""
    details = []
    for sample in samples:
        text = describe(sample.waveform)
        parsed = parse_signal_text(text)
        checks = {key: parsed is not None and getattr(parsed, attr) == getattr(sample.spec, attr)
                  for key, attr in (("shape", "shape"), ("cycles", "cycles"), ("amplitude", "amplitude"),
                                    ("noise", "noisy"))}
        details.append({"text": sample.text, "transcript": text, "passed": parsed == sample.spec, **checks})
    return build_result("signal_to_text", [s.spec.shape for s in samples], [d["passed"] for d in details], details,
                        _attribute_accuracy(details))


def _attribute_accuracy(details: list[dict[str, Any]]) -> dict[str, float]:
    """Share of items with each attribute right (an item without output counts as wrong)."""
    return {f"{key}_accuracy": float(np.mean([bool(d.get(key, False)) for d in details]))
            for key in ("shape", "cycles", "amplitude", "noise")}


# ---- validation on ground truth --------------------------------------------------------------------------------
def signal_rates(n_per_shape: int = 50, seed: int = 0, split: str = "test", tokenized: bool = True,
                 text: bool = False) -> Rates:
    """Judge each reference (as the tokenizer returns it when ``tokenized``) against its own spec and against
    the next sample's different spec; ``text=True`` judges the descriptions instead of the signals."""
    from anygen.tokenizers.signal import SignalTokenizer

    tok = SignalTokenizer()
    samples = signal_samples(n_per_shape, seed, split)
    good, bad = [], []
    for i, sample in enumerate(samples):
        other = next(o for o in samples[i + 1:] + samples[:i] if o.spec != sample.spec)
        if text:
            good.append(score_signal_text(sample.text, sample.spec))
            bad.append(score_signal_text(other.text, sample.spec))
            continue
        signal = tok.decode(tok.encode([sample.waveform]))[0] if tokenized else sample.waveform
        good.append(score_signal(signal, sample.spec)["passed"])
        bad.append(score_signal(signal, other.spec)["passed"])
    return Rates(sum(good) / len(good), sum(bad) / len(bad), len(good), len(bad))


def measure_rates(n_per_shape: int = 50, seed: int = 0) -> dict[str, Rates]:
    """Both judges on both the test (held-out combos) and validation splits."""
    out = {}
    for split in ("test", "validation"):
        out[f"signal_tokenized_{split}"] = signal_rates(n_per_shape, seed, split)
        out[f"signal_raw_{split}"] = signal_rates(n_per_shape, seed, split, tokenized=False)
        out[f"text_{split}"] = signal_rates(n_per_shape, seed, split, text=True)
    return out


# ---- models -------------------------------------------------------------------------------------------------------
@dataclass
class SignalCallables:
    """A model's two directions (see :func:`pipeline_signal_callables`)."""

    text_to_signal: Callable[[str], torch.Tensor | None]
    signal_to_text: Callable[[torch.Tensor], str]


def pipeline_signal_callables(pipe: Any, seed: int = 0, temperature: float = 0.0) -> SignalCallables:
    """Adapt an ``AnyGenPipeline`` through its generic :meth:`generate`: text is greedy; signal codes are greedy
    when ``temperature == 0``, else sampled at ``temperature`` (seeded)."""
    from anygen.generation.sampling import SamplingParams
    from anygen.types import MediaSegment, TextSegment

    check_range("temperature", temperature, 0.0, None)
    codes = SamplingParams(do_sample=False) if temperature == 0 else SamplingParams(temperature)
    greedy = SamplingParams(do_sample=False)
    span = pipe.model.tokenizers[MODALITY].default_shape + 2

    def text_to_signal(description: str) -> torch.Tensor | None:
        out = _answer(pipe, [TextSegment(description)], max_new_tokens=span + 8, output_modalities=[MODALITY],
                      sampling={"text": greedy, MODALITY: codes}, generator=torch.Generator().manual_seed(seed))
        signals = [s.data for s in out if isinstance(s, MediaSegment) and s.modality == MODALITY]
        return signals[0] if signals else None

    def signal_to_text(signal: torch.Tensor) -> str:
        out = _answer(pipe, [MediaSegment(MODALITY, signal)], max_new_tokens=40, output_modalities=[],
                      sampling={"text": greedy}, generator=torch.Generator().manual_seed(seed))
        return "".join(s.text for s in out if isinstance(s, TextSegment)).strip()

    return SignalCallables(text_to_signal, signal_to_text)


def _answer(pipe: Any, prompt: list, **kwargs: Any) -> list:
    """The pipeline's answer segments; an answer the model ends at once is empty (and scores as wrong)."""
    from anygen.pipelines import EmptyAnswerError

    try:
        return pipe.generate(prompt, **kwargs).segments
    except EmptyAnswerError:
        return []


def ground_truth_signal_callables(samples: Sequence[SignalSample]) -> SignalCallables:
    """Answers every sample with its reference: the description's canonical (phase 0, noise-seeded) render."""
    by_text = {s.text: s for s in samples}
    by_signal = {s.waveform.numpy().tobytes(): s.text for s in samples}

    def text_to_signal(text: str) -> torch.Tensor:
        spec = by_text[text].spec
        return render_signal(spec, 0.0, np.random.default_rng(0))

    return SignalCallables(text_to_signal, lambda signal: by_signal[signal.numpy().tobytes()])


def run_signal_suite(n: int, seed: int = 0, split: str = "test", model: SignalCallables | None = None
                     ) -> list[EvalResult]:
    """Both directions on ``n`` samples per shape (``model=None``: the ground truth)."""
    samples = signal_samples(n, seed, split)
    callables = model or ground_truth_signal_callables(samples)
    return [evaluate_text_to_signal(callables.text_to_signal, samples),
            evaluate_signal_to_text(callables.signal_to_text, samples)]


def main(argv: list[str] | None = None) -> int:
    """``python -m anygen.evaluation.signals (--model DIR | --ground-truth | --validate) [--n N] [--json PATH]``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", help="directory of a saved model that has the signal modality")
    source.add_argument("--ground-truth", action="store_true", help="score the references themselves")
    source.add_argument("--validate", action="store_true", help="pass rates on correct vs mismatched pairs")
    parser.add_argument("--n", type=int, default=12, help="signals per shape")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split", default="test", choices=list(SPLITS))
    parser.add_argument("--temperature", type=float, default=0.0, help="signal-code sampling (0: greedy)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args(argv)
    check_range("--n", args.n, 1, 100_000)
    if args.validate:
        payload: Any = {k: asdict(v) for k, v in measure_rates(args.n, args.seed).items()}
        print(json.dumps(payload, indent=2))
    else:
        model = None if args.ground_truth else _load(args.model, args.seed, args.temperature)
        results = run_signal_suite(args.n, args.seed, args.split, model)
        from anygen.evaluation.cli import format_table

        print(format_table(results))
        for r in results:
            print(r.suite, " ".join(f"{k}={v:.3f}" for k, v in r.metrics.items()))
        payload = {"source": args.model or "ground-truth", "n": args.n, "seed": args.seed, "split": args.split,
                   "temperature": args.temperature, "results": [json.loads(r.to_json()) for r in results]}
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
    return 0


def _load(path: str, seed: int, temperature: float) -> SignalCallables:
    from anygen.pipelines import AnyGenPipeline

    if not Path(path).is_dir():
        raise InvalidArgumentError(f"--model={path!r} is not a directory holding a saved model")
    pipe = AnyGenPipeline.from_pretrained(path)
    if MODALITY not in pipe.model.tokenizers:
        raise InvalidArgumentError(f"the model at {path} has no {MODALITY!r} modality (it has "
                                   f"{sorted(pipe.model.tokenizers)}); extend it with `anygen extend` first")
    return pipeline_signal_callables(pipe, seed, temperature)


if __name__ == "__main__":
    raise SystemExit(main())
