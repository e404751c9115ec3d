"""Speech data on a machine without the espeak-ng program: the library of the ``speech`` extra speaks instead, and
without either one line says what to install; ``make test`` installs what it can (scripts/system-deps.sh)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from anygen.data import speech
from anygen.data.speech import EspeakMissingError, Voice, espeak_available, espeak_command

REPO = Path(__file__).resolve().parents[1]
VOICE = Voice("en-us", "m1", 160, 50)


@pytest.fixture()
def no_program(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """PATH without espeak-ng, chromium or apt-get: only ``id``, which scripts/system-deps.sh needs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "id").symlink_to(shutil.which("id"))
    monkeypatch.setenv("PATH", str(bin_dir))
    return bin_dir


def _render(text: str) -> np.ndarray:
    """A clip rendered now (not from the cache), as float32 at 16 kHz."""
    return np.frombuffer(speech._render_cached.__wrapped__(text, VOICE, 16000), dtype=np.float32)


def test_the_bundled_library_speaks_without_the_program(no_program: Path) -> None:
    pytest.importorskip("espeakng_loader")
    assert shutil.which("espeak-ng") is None and espeak_available()
    assert espeak_command()[:2] == [sys.executable, "-S"]
    wave = _render("seven")
    assert 0.2 * 16000 < wave.size <= 2 * 16000
    assert np.sqrt(np.mean(wave**2)) > 0.02 and np.abs(wave).max() <= 1.0  # speech, not silence


def test_the_bundled_library_speaks_like_the_program(no_program: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("espeakng_loader")
    program = shutil.which("espeak-ng", path=os.defpath + ":/usr/local/bin")
    if program is None:
        pytest.skip("no espeak-ng program to compare with")
    bundled = _render("triangle")
    monkeypatch.setenv("PATH", str(Path(program).parent))
    installed = _render("triangle")
    # espeak-ng 1.51 (Debian) and the 1.52 library give the same samples for male voices (measured: 19 of 30 random
    # voices bit-identical, the others correlate >= 0.97 at the same length)
    assert bundled.size == installed.size and np.corrcoef(bundled, installed)[0, 1] > 0.95


def test_without_program_or_library_one_line_says_what_to_install(no_program: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "espeakng_loader", None)  # as if the speech extra were not installed
    assert not espeak_available()
    with pytest.raises(EspeakMissingError, match=r"apt-get install espeak-ng, or pip install 'anygen\[speech\]'"):
        espeak_command()


def test_system_deps_uses_the_venv_library_when_apt_is_unavailable(no_program: Path) -> None:
    pytest.importorskip("espeakng_loader")
    done = subprocess.run(["/bin/bash", str(REPO / "scripts" / "system-deps.sh"), sys.executable],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "apt-get" not in done.stdout and "browser tests will be skipped" in done.stderr


def test_system_deps_stops_with_one_line_when_nothing_can_speak(no_program: Path) -> None:
    bare_python = no_program / "python"  # a Python without site-packages: no espeakng_loader
    bare_python.write_text(f'#!/bin/sh\nexec {sys.executable} -S "$@"\n')
    bare_python.chmod(0o755)
    done = subprocess.run(["/bin/bash", str(REPO / "scripts" / "system-deps.sh"), str(bare_python)],
                          capture_output=True, text=True)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"the tests need espeak-ng: run 'apt-get install espeak-ng' as root, or '{bare_python} -m pip install "
        "espeakng-loader'"]
