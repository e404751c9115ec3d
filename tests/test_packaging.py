"""Import hygiene: names that must not shadow Hugging Face packages, and the dependency direction."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "anygen"
FORBIDDEN_FOR_LEAVES = ("anygen.generation.loop", "anygen.generation.streaming", "anygen.generation.grammar",
                        "anygen.pipelines", "anygen.core", "anygen.model")


def test_import_tokenizers_is_hugging_face_s() -> None:
    code = "import anygen, anygen.tokenizers, tokenizers; print(tokenizers.__file__); print(tokenizers.Tokenizer)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent).stdout
    assert "site-packages" in out and "anygen" not in out.splitlines()[0]


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("leaf", ["tokenizers", "decoders"])
def test_tokenizers_and_decoders_do_not_import_the_core(leaf: str) -> None:
    files = sorted((PACKAGE / leaf).rglob("*.py"))
    assert files, f"anygen/{leaf} has no modules"
    for path in files:
        bad = {name for name in _imports(path) if name.startswith(FORBIDDEN_FOR_LEAVES)}
        assert not bad, f"{path.relative_to(PACKAGE.parent)} imports {sorted(bad)}"


@pytest.mark.parametrize("folder", [".", "benchmarks", "apps", "tests"])
def test_no_script_folder_shadows_a_dependency(folder: str) -> None:
    """Running `python <folder>/x.py` puts <folder> first on sys.path: no module there may shadow a dependency."""
    root = PACKAGE.parent / folder
    names = {p.stem for p in root.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()}
    assert not names & {"tokenizers", "transformers", "diffusers", "gradio", "torch", "accelerate", "safetensors"}
