"""Conversations with roles -> one interleaved prompt.

A conversation is a list of messages ``{"role": ..., "content": ...}`` as in transformers: ``role`` is
``"system"`` (first message only), ``"user"`` or ``"assistant"``; ``content`` is a string or a list of parts --
strings, segments (:class:`~anygen.types.TextSegment`, ``ImageSegment``, ``AudioSegment``, ``CodesSegment``) or
transformers-style dicts::

    {"type": "text", "text": "what colour is it?"}
    {"type": "image", "image": <PIL image | tensor (3, H, W) | array (H, W, 3) | path | bytes>}   # or "path"
    {"type": "audio", "audio": <waveform | path | bytes>, "sample_rate": 16000}                  # or "path"

:class:`ChatTemplate` says what text surrounds each role's turn. anygen's models have no role tokens, so the
default template adds none: the turns follow each other as one document (a user's picture and the assistant's
caption read like a captioning example; "now make it blue" after a generated picture like an edit). A model
trained with role markers passes its own template (e.g. ``ChatTemplate(user=("User: ", "\\n"), ...)``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from anygen.audio import read_audio
from anygen.errors import InvalidArgumentError
from anygen.image import as_image_tensor
from anygen.types import AudioSegment, CodesSegment, ImageSegment, Interleaved, MediaSegment, Segment, TextSegment

ROLES = ("system", "user", "assistant")
SEGMENTS = (TextSegment, ImageSegment, AudioSegment, CodesSegment, MediaSegment)


@dataclass(frozen=True)
class Message:
    """One turn: its ``role`` and its parts as segments."""

    role: str
    content: list[Segment]


@dataclass(frozen=True)
class ChatTemplate:
    """Text put before and after each role's turn, and after the conversation to open the assistant's reply.

    An empty string adds nothing (the default everywhere).
    """

    system: tuple[str, str] = ("", "")
    user: tuple[str, str] = ("", "")
    assistant: tuple[str, str] = ("", "")
    generation_prompt: str = ""

    def apply(self, messages: Sequence[Message | Mapping]) -> Interleaved:
        """The prompt for the assistant's next turn: every message wrapped in its role's text, in order."""
        turns = to_messages(messages)
        if turns[-1].role != "user":
            raise InvalidArgumentError(f"the last message must be the user's (the reply is generated), got "
                                       f"{turns[-1].role!r}")
        prompt: Interleaved = []
        for turn in turns:
            before, after = getattr(self, turn.role)
            prompt += [TextSegment(before)] if before else []
            prompt += turn.content
            prompt += [TextSegment(after)] if after else []
        return prompt + ([TextSegment(self.generation_prompt)] if self.generation_prompt else [])


def to_messages(messages: Sequence[Message | Mapping]) -> list[Message]:
    """Check roles and order (one optional system message first, then user and assistant turns) and turn every
    content part into a segment. Media stays as given; the pipeline converts it when it encodes the prompt."""
    if isinstance(messages, (str, Mapping)) or not isinstance(messages, Sequence) or not messages:
        raise InvalidArgumentError("messages must be a non-empty list of {'role': ..., 'content': ...} messages")
    turns = [_message(m, i) for i, m in enumerate(messages)]
    for i, turn in enumerate(turns):
        if turn.role == "system" and i > 0:
            raise InvalidArgumentError(f"messages[{i}] is a system message; only the first message may be one")
    return turns


def _message(message: Message | Mapping, index: int) -> Message:
    if isinstance(message, Message):
        role, content = message.role, message.content
    elif isinstance(message, Mapping) and "role" in message and "content" in message:
        role, content = message["role"], message["content"]
    else:
        raise InvalidArgumentError(f"messages[{index}] must be a dict with 'role' and 'content', got {message!r:.80}")
    if role not in ROLES:
        raise InvalidArgumentError(f"messages[{index}] has role={role!r}; roles are {list(ROLES)}")
    parts = [content] if isinstance(content, (str, Mapping, Image.Image, *SEGMENTS)) else content
    if not isinstance(parts, Sequence) or not parts:
        raise InvalidArgumentError(f"messages[{index}]['content'] must be a string or a non-empty list of parts")
    return Message(role, [_part(p, f"messages[{index}]['content'][{j}]") for j, p in enumerate(parts)])


def _part(part: object, name: str) -> Segment:
    if isinstance(part, str):
        return TextSegment(part)
    if isinstance(part, SEGMENTS):
        return part
    if isinstance(part, Image.Image):
        return ImageSegment(part)
    if not isinstance(part, Mapping) or part.get("type") not in ("text", "image", "audio"):
        raise InvalidArgumentError(f"{name} must be a string, a PIL image, a segment or a dict with type 'text', "
                                   f"'image' or 'audio', got {part!r:.80}")
    kind = part["type"]
    value = part.get(kind, part.get("path"))
    if value is None or kind == "text" and not isinstance(value, str):
        raise InvalidArgumentError(f"{name} of type {kind!r} needs a {kind!r} (or 'path') entry")
    if kind == "text":
        return TextSegment(value)
    if kind == "image":  # arrays and tensors are checked now (errors name the part); files when they are read
        return ImageSegment(as_image_tensor(value, name=name) if isinstance(value, (np.ndarray, torch.Tensor)) else
                            value)
    return AudioSegment(*read_audio(value, part.get("sample_rate"), name))  # read now: errors name the part


__all__ = ["ROLES", "Message", "ChatTemplate", "to_messages"]
