"""Every Python block and shell command of the README runs as written, in order, in a fresh folder
(tests/doc_blocks.py: how a comment before a block adjusts or skips it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from doc_blocks import REPO, parse_page, run_page

README = REPO / "README.md"
NOT_RUN = parse_page(README).not_run()


def test_readme_has_python_examples() -> None:
    assert any(block.language == "python" for block in parse_page(README).runnable())


def test_readme_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_page(README, tmp_path)


@pytest.mark.parametrize("where, why", NOT_RUN, ids=[where for where, _ in NOT_RUN])
def test_not_run(where: str, why: str) -> None:
    pytest.skip(f"{where}: {why}")
