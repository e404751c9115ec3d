"""Every Python block and shell command of docs/*.md runs, page by page, as a reader following the page would run
it (tests/doc_blocks.py: one namespace and one fresh folder per page, offline; the comments that adjust a run)."""

from __future__ import annotations

from pathlib import Path

import pytest

from doc_blocks import REPO, parse_page, run_page, split_commands

PAGES = sorted((REPO / "docs").glob("*.md"))


def _runs() -> list:  # pytest.param: each page without its slow blocks, and whole (marked slow) if it has any
    runs = []
    for path in PAGES:
        page = parse_page(path)
        if page.has_fast_blocks():
            runs.append(pytest.param(path, False, id=path.name))
        if page.has_slow_blocks():
            runs.append(pytest.param(path, True, id=f"{path.name}-whole", marks=pytest.mark.slow))
    return runs


@pytest.mark.parametrize("path, include_slow", _runs())
def test_doc_page_runs(path: Path, include_slow: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    run_page(path, tmp_path, include_slow)


NOT_RUN = [item for path in PAGES for item in parse_page(path).not_run()]


@pytest.mark.parametrize("where, why", NOT_RUN, ids=[where for where, _ in NOT_RUN])
def test_not_run(where: str, why: str) -> None:
    pytest.skip(f"{where}: {why}")


# ---- the machinery itself ----------------------------------------------------------------------------------------


def test_shell_commands_are_split_as_bash_reads_them() -> None:
    script = ("anygen data build --out c \\\n    --seed 0   # a comment\n"
              "curl -d '{\"a\": 1,\n  \"b\": \"# not a comment\"}' \\\n  | jq .a\n"
              "echo one |\n  cat\n\n# a whole-line comment\n")
    assert split_commands(script) == ["anygen data build --out c      --seed 0",
                                      "curl -d '{\"a\": 1,\n  \"b\": \"# not a comment\"}'    | jq .a",
                                      "echo one |\n  cat"]


def _page_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "page.md"
    path.write_text(text)
    return path


def test_a_page_runs_in_order_with_its_directives(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    page = _page_file(tmp_path, "<!-- test-page: replace `WORD` with `page` -->\n"
                                "<!-- test:\nappend `>> out.txt` (to a file)\ndrop `rm` (keeps the file)\n-->\n"
                                "```bash\necho WORD one   # a comment\nrm out.txt\necho two\n```\n"
                                "<!-- test: replace `'out.txt'` with `'out.txt'` -->\n"
                                "```python\nlines = open('out.txt').read().split()\n```\n"
                                "```python\nassert lines == ['page', 'one', 'two'], lines\n```\n"
                                "<!-- test: skip (never runs) -->\n```python\nraise SystemExit('ran')\n```\n")
    run_page(page, work)
    assert parse_page(page).not_run() == [(f"{page}:20", "never runs"), (f"{page}:7 `rm out.txt`", "keeps the file")]


@pytest.mark.parametrize("text, error", [
    ("```python\nx = 1\n```\n```python\nassert x == 2\n```\n", AssertionError),
    ("```bash\nfalse\necho never\n```\n", AssertionError),
    ("```bash\nfalse | true\n```\n", AssertionError),
    ("<!-- test: replace `y` with `z` -->\n```python\nx = 1\n```\n", AssertionError),
])
def test_a_failing_block_fails_the_page(text: str, error: type, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(error):
        run_page(_page_file(tmp_path, text), tmp_path)


@pytest.mark.parametrize("text, message", [
    ("<!-- test: skip -->\n```python\n```\n", "not a test directive"),
    ("<!-- test: skip (why) -->\ntext\n```python\n```\n", "right before a code block"),
    ("<!-- test-page: append `x` -->\n", "not a test directive"),
    ("```\nx\n```\n", "label the block"),
])
def test_malformed_directives_and_unlabelled_blocks_are_errors(text: str, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        parse_page(_page_file(tmp_path, text))
