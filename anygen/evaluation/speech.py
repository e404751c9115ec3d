"""Spoken-keyword accuracy (text -> speech) and transcript accuracy (speech -> text).

:class:`KeywordClassifier` names which of :data:`~anygen.data.speech.KEYWORDS` a clip says. Features: 40-band
log-mel (25 ms hop 10 ms at 16 kHz), the clip's time axis stretched to 24 frames, each band's mean removed
(so loudness and channel do not matter), standardised; the model is a multinomial logistic regression fitted on
espeak-ng renders of the *training* voices only, deterministically (720 clips, about 20 seconds on two cores). Weights
round-trip through a small safetensors file.

Example:
    >>> from anygen.evaluation.speech import KeywordClassifier, transcript_correct
    >>> transcript_correct("Seven.", "seven")
    True
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from anygen.audio import check_waveform, log_mel, resample
from anygen.data.speech import KEYWORDS, SAMPLE_RATE, SpeechSample, render_many, sample_voice
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.evaluation.result import EvalResult, build_result

N_MELS, N_FRAMES = 40, 24


def keyword_features(waveform: torch.Tensor, sample_rate: int = SAMPLE_RATE) -> torch.Tensor:
    """Fixed-size features of one clip: ``(N_MELS * N_FRAMES,)``."""
    wave = check_waveform(waveform)
    if sample_rate != SAMPLE_RATE:
        wave = resample(wave, sample_rate, SAMPLE_RATE)
    mel = log_mel(wave, SAMPLE_RATE, n_fft=512, hop_length=160, n_mels=N_MELS)  # (M, F)
    mel = torch.nn.functional.interpolate(mel[None], size=N_FRAMES, mode="linear", align_corners=True)[0]
    return (mel - mel.mean(dim=1, keepdim=True)).flatten()  # (M * N_FRAMES,)


def render_keyword_set(n_per_word: int, seed: int, split: str) -> list[SpeechSample]:
    """``n_per_word`` espeak-ng clips of every keyword in random voices of ``split`` (deterministic)."""
    rng = np.random.default_rng([seed, 4242])
    return render_many([(word, sample_voice(rng, split)) for word in KEYWORDS for _ in range(n_per_word)])


def fit_softmax_regression(x: torch.Tensor, y: torch.Tensor, n_classes: int, c: float = 0.05,
                           max_iter: int = 200) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS: minimises ``c * sum CE + |W|^2 / 2``.

    Returns ``(weight (K, D), bias (K,))``. Deterministic: zero init, no sampling.
    """
    weight = torch.zeros(n_classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(n_classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, tolerance_grad=1e-6,
                                  history_size=20, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ weight.T + bias, y, reduction="sum")
        loss = loss + (weight ** 2).sum() / (2.0 * c)
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


class KeywordClassifier:
    """Which keyword a clip says: standardised keyword features -> linear layer -> argmax."""

    def __init__(self, mean: torch.Tensor, scale: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 labels: Sequence[str] = KEYWORDS) -> None:
        self.mean, self.scale, self.weight, self.bias = mean, scale, weight, bias
        self.labels = tuple(labels)

    @classmethod
    def fit(cls, n_per_word: int = 24, seed: int = 0, c: float = 0.05) -> KeywordClassifier:
        """Fit on espeak-ng renders of the training voices (same arguments -> same weights).

        ``c`` is the inverse L2 strength, as in scikit-learn's ``LogisticRegression(C=c)``.
        """
        samples = render_keyword_set(n_per_word, seed, "train")
        feats = torch.stack([keyword_features(s.waveform) for s in samples]).double()  # (N, D)
        labels = torch.tensor([KEYWORDS.index(s.text) for s in samples])
        mean, scale = feats.mean(0), feats.std(0) + 1e-6
        weight, bias = fit_softmax_regression((feats - mean) / scale, labels, len(KEYWORDS), c)
        return cls(mean.float(), scale.float(), weight.float(), bias.float())

    def predict(self, waveforms: Sequence[torch.Tensor], sample_rate: int = SAMPLE_RATE) -> list[str]:
        """The keyword each clip most likely says."""
        feats = torch.stack([keyword_features(w, sample_rate) for w in waveforms])  # (N, D)
        logits = ((feats - self.mean) / self.scale) @ self.weight.T + self.bias  # (N, K)
        return [self.labels[i] for i in logits.argmax(dim=1).tolist()]

    def save(self, path: str | Path) -> None:
        """Write the weights (and label list) to a safetensors file."""
        from safetensors.torch import save_file

        tensors = {"mean": self.mean, "scale": self.scale, "weight": self.weight, "bias": self.bias}
        tensors = {k: v.contiguous() for k, v in tensors.items()}
        save_file(tensors, str(path), metadata={"labels": ",".join(self.labels)})

    @classmethod
    def load(cls, path: str | Path) -> KeywordClassifier:
        """Read weights written by :meth:`save`."""
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as handle:
                tensors = {k: handle.get_tensor(k) for k in ("mean", "scale", "weight", "bias")}
                labels = (handle.metadata() or {}).get("labels", "").split(",")
        except Exception as exc:  # safetensors raises several types for missing / malformed files
            raise CheckpointError(f"cannot load keyword classifier from {path}: {exc}") from exc
        if tensors["weight"].shape != (len(labels), tensors["mean"].shape[0]):
            raise CheckpointError(f"{path}: weight shape {tuple(tensors['weight'].shape)} does not match "
                                  f"{len(labels)} labels x {tensors['mean'].shape[0]} features")
        return cls(labels=labels, **tensors)


@functools.lru_cache(maxsize=1)
def default_classifier() -> KeywordClassifier:
    """``KeywordClassifier.fit()`` with default arguments, fitted once per process."""
    return KeywordClassifier.fit()


def normalize_transcript(text: str) -> str:
    """Lower case, words only, single spaces."""
    return " ".join(re.findall(r"[a-z0-9']+", text.lower()))


def transcript_correct(hypothesis: str, reference: str) -> bool:
    """Exact match after :func:`normalize_transcript`."""
    return normalize_transcript(hypothesis) == normalize_transcript(reference)


def speech_samples(n_per_word: int = 4, seed: int = 0, split: str = "test") -> list[SpeechSample]:
    """Spoken keywords for evaluation (held-out voices in ``test``)."""
    if n_per_word < 1:
        raise InvalidArgumentError(f"n_per_word={n_per_word} must be >= 1")
    return render_keyword_set(n_per_word, seed + 1, split)


def evaluate_text_to_speech(speak: Callable[[str], tuple[torch.Tensor, int]], classifier: KeywordClassifier,
                            words: Sequence[str] = KEYWORDS, repeats: int = 2) -> EvalResult:
    """Call ``speak(word) -> (waveform, sample_rate)`` for every keyword and check the classifier hears it."""
    details: list[dict[str, Any]] = []
    for word in [w for w in words for _ in range(repeats)]:
        waveform, sr = speak(word)
        heard = classifier.predict([torch.as_tensor(waveform)], sr)[0]
        details.append({"text": word, "heard": heard, "passed": heard == word})
    return build_result("text_to_speech", ["text_to_speech"] * len(details), [d["passed"] for d in details], details)


def evaluate_speech_to_text(transcribe: Callable[[torch.Tensor, int], str],
                            samples: Sequence[SpeechSample]) -> EvalResult:
    """Call ``transcribe(waveform, sample_rate) -> str`` on each clip; exact normalised match."""
    details = []
    for sample in samples:
        text = transcribe(sample.waveform, sample.sample_rate)
        details.append({"text": sample.text, "transcript": text, "voice": sample.voice.name,
                        "passed": transcript_correct(text, sample.text)})
    return build_result("speech_to_text", ["speech_to_text"] * len(details), [d["passed"] for d in details],
                        details)
