from __future__ import annotations

import re
from pathlib import Path

from anygen.apps import showcase_requests as requests
from anygen.cli import main
from anygen.model import AnyGen


def test_anygen_run_writes_a_complete_showcase(tiny_model: AnyGen, tmp_path: Path, capsys) -> None:
    tiny_model.save_pretrained(tmp_path / "model")
    assert main(["run", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "show")]) == 0
    assert "index.html" in capsys.readouterr().out
    page = (tmp_path / "show" / "index.html").read_text()
    for title in ("Text to image", "Image editing", "Image to text", "speech", "melody", "Interleaved"):
        assert title in page
    # the page says which picks are not the model's own: music is picked by the pipeline's pitch tracker
    assert page.count("pitch tracker, not the judge") == 2
    # and captions, in the captioning and interleaved sections, are the model's own check of what it decoded
    assert page.count("checked by the model itself") == 2
    # Every request's every sample is judged, and each section states its pass rate over them.
    rates = [tuple(map(int, m)) for m in re.findall(r"passed (\d+) of (\d+)", page)]
    n_images = len(requests.IMAGE_PROMPTS) * requests.IMAGES_PER_PROMPT
    assert [total for _, total in rates] == [n_images, len(requests.EDITS), len(requests.CAPTION_SCENES),
                                             len(requests.SPEECH), len(requests.MUSIC), 4]
    assert sum(passed for passed, _ in rates) == page.count("&#10003;") - 1  # one tick explains the marks
    linked = re.findall(r'src="([^"]+)"', page)
    assert sum(name.endswith(".png") for name in linked) >= 8 and sum(n.endswith(".wav") for n in linked) >= 3
    assert all((tmp_path / "show" / name).is_file() for name in linked)


def test_anygen_run_refuses_a_decoder_the_model_lacks(tiny_model: AnyGen, tmp_path: Path, capsys) -> None:
    tiny_model.save_pretrained(tmp_path / "model")
    args = ["run", "--model", str(tmp_path / "model"), "--out", str(tmp_path / "show"), "--decoder", "diffusion"]
    assert main(args) == 2
    assert "train-decoder" in capsys.readouterr().err
    assert not (tmp_path / "show" / "index.html").exists()
