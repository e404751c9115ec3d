"""anygen: unified understanding and generation over one vocabulary of text, image and audio tokens.

    import anygen
    pipe = anygen.load()                                   # the embedded anygen-tiny; or a directory, or "org/name"
    images = pipe.text_to_image("a red circle", num_images_per_prompt=2).images
    pipe.caption(images).texts
"""

from __future__ import annotations

from typing import Any

__version__ = "0.2.0"
_LAZY = {
    "AnyGenPipeline": "anygen.pipelines", "load": "anygen.pipelines",
    "AnyGen": "anygen.model",
    "TextSegment": "anygen.types", "ImageSegment": "anygen.types", "AudioSegment": "anygen.types",
    "ImagePipelineOutput": "anygen.outputs", "AudioPipelineOutput": "anygen.outputs",
    "TextPipelineOutput": "anygen.outputs", "GenerationPipelineOutput": "anygen.outputs",
    "ChatTemplate": "anygen.chat_template",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str) -> Any:  # lazy, so that `import anygen` stays light
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'anygen' has no attribute {name!r}")
