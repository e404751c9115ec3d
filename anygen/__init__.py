"""anygen: unified understanding and generation over one vocabulary of text, image and audio tokens.

    import anygen
    pipe = anygen.load("path/to/model")
    images = pipe.text_to_image("a red circle", num_images=2)
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
__all__ = ["AnyGen", "AnyGenPipeline", "load", "__version__"]


def __getattr__(name: str) -> Any:  # lazy, so that `import anygen` stays light
    if name in ("AnyGenPipeline", "load"):
        from anygen import pipelines

        return getattr(pipelines, name)
    if name == "AnyGen":
        from anygen.model import AnyGen

        return AnyGen
    raise AttributeError(f"module 'anygen' has no attribute {name!r}")
