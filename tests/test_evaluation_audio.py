"""Audio and interleaved judges validated on ground truth, the keyword classifier's contract, and `anygen eval`."""

from __future__ import annotations

import argparse
import json
import shutil

import numpy as np
import pytest
import torch

from anygen.data.melody import render_chord, render_notes, sample_melody
from anygen.errors import CheckpointError, InvalidArgumentError
from anygen.evaluation import cli as eval_cli
from anygen.evaluation.interleaved import score_document
from anygen.evaluation.melody import evaluate_text_to_melody, parse_music_text, recognise_chord, transcribe_notes
from anygen.evaluation.speech import KeywordClassifier, default_classifier, transcript_correct
from anygen.evaluation.validation import interleaved_rates, melody_rates, speech_rates

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng not installed")


@pytest.fixture(scope="module")
def classifier() -> KeywordClassifier:
    torch.set_num_threads(1)  # small tensors on a shared 2-core machine: threads only add contention
    return default_classifier()


@needs_espeak
def test_keyword_classifier_on_held_out_voices(classifier):
    rates = speech_rates(classifier, n_per_word=5, seed=1)
    assert rates.n_correct == 150 and rates.correct >= 0.97 and rates.mismatched <= 0.03


@needs_espeak
def test_keyword_classifier_round_trip_and_bad_files(classifier, tmp_path):
    classifier.save(tmp_path / "kw.safetensors")
    loaded = KeywordClassifier.load(tmp_path / "kw.safetensors")
    clip = torch.from_numpy(np.sin(np.arange(16000) / 7.0).astype(np.float32))
    assert loaded.predict([clip]) == classifier.predict([clip]) and loaded.labels == classifier.labels
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        KeywordClassifier.load(tmp_path / "bad.safetensors")
    silence = classifier.predict([torch.zeros(8000)])  # no NaN from silence; some label comes out
    assert silence[0] in classifier.labels


@needs_espeak
def test_interleaved_judge_on_ground_truth(classifier):
    rates = interleaved_rates(classifier, n_per_kind=4, seed=1)
    assert rates.correct >= 0.97 and rates.mismatched <= 0.03


def test_melody_judges_on_ground_truth():
    for audio in (True, False):
        rates = melody_rates(n=60, seed=1, audio=audio)
        assert rates.correct >= 0.97 and rates.mismatched <= 0.03


def test_melody_judge_details():
    wave = torch.cat([torch.zeros(3000), render_notes(["G4", "A5", "C6", "D4"], "brass")])  # late start
    assert transcribe_notes(wave, 16000, 4) == ["G4", "A5", "C6", "D4"]
    assert transcribe_notes(render_notes(["C4"]), 16000, 3)[1:] == [None, None]  # missing slots
    assert recognise_chord(render_chord("A", "minor", "pluck"), 16000) == ("A", "minor")
    assert recognise_chord(render_notes(["C4", "E4", "G4"]), 16000) is None  # arpeggio is not a chord
    assert parse_music_text("That was c4 E4 g5.") == ["C4", "E4", "G5"]
    assert parse_music_text("an F major chord") == ("F", "major")
    sample = sample_melody(np.random.default_rng(0))
    octave_up = evaluate_text_to_melody(lambda text: (render_notes([n[0] + "6" for n in sample.notes]), 16000),
                                        [sample])
    assert octave_up.overall == 0.0 and octave_up.metrics["note_accuracy"] == 0.0
    assert transcript_correct(" Red  circle!", "red circle") and not transcript_correct("red", "read")


def test_interleaved_needs_every_segment_in_order():
    from anygen.data.interleaved import sample_document

    doc = sample_document(np.random.default_rng(0), "play_notes")
    assert score_document(doc.target, doc.checks)["passed"]
    assert score_document(list(reversed(doc.target)), doc.checks)["present"] == [True, False]
    assert not score_document([], doc.checks)["passed"]


def test_eval_cli_ground_truth(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    args = parser.parse_args(["--ground-truth", "--suite", "edit", "--n", "3", "--json", str(tmp_path / "r.json")])
    assert eval_cli.main(args) == 0
    assert "edit" in capsys.readouterr().out
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["results"][0]["overall"] == 1.0 and payload["results"][0]["n"] == 15
    missing = parser.parse_args(["--model", str(tmp_path / "nope"), "--suite", "shapes"])
    with pytest.raises(InvalidArgumentError, match="--model"):
        eval_cli.main(missing)
    with pytest.raises(InvalidArgumentError, match="--threads"):
        eval_cli.main(parser.parse_args(["--ground-truth", "--suite", "edit", "--n", "1", "--threads", "-1"]))


def test_eval_cli_runs_on_the_threads_it_is_given_and_records_them(tmp_path):
    parser = argparse.ArgumentParser()
    eval_cli.add_arguments(parser)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        args = parser.parse_args(["--ground-truth", "--suite", "caption", "--n", "1", "--threads", "1",
                                  "--json", str(tmp_path / "r.json")])
        assert eval_cli.main(args) == 0
        assert torch.get_num_threads() == 1
        assert json.loads((tmp_path / "r.json").read_text())["threads"] == 1
    finally:
        torch.set_num_threads(before)
