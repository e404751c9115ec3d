"""Conversations: the chat template, pipe.chat over a whole history, and the demo's chat feeding earlier turns."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from anygen.apps.chat import ChatSettings, Renderer, chat_turn, fit_context
from anygen.chat_template import ChatTemplate, Message, to_messages
from anygen.errors import InvalidArgumentError, MediaError
from anygen.generation.loop import decode_steps
from anygen.generation.sampling import SamplingParams
from anygen.model import AnyGen
from anygen.pipelines import AnyGenPipeline
from anygen.types import AudioSegment, CodesSegment, ImageSegment, TextSegment


@pytest.fixture()
def pipe(tiny_model: AnyGen) -> AnyGenPipeline:
    with torch.no_grad():  # nudge the random model to open image spans, so answers mix text and pictures
        embedding = tiny_model.core.get_input_embeddings().weight  # (V, D), tied with the output layer
        embedding[:, 0] = 1.0
        embedding[tiny_model.vocab.begin_id("image"), 0] = 1.5
    return AnyGenPipeline(tiny_model, image_size=(32, 32), max_audio_seconds=0.5)


@pytest.fixture()
def prompts(pipe: AnyGenPipeline) -> list[list[int]]:
    """Every prompt the sampler is given, and (appended after it) the tokens it generated for row 0."""
    seen: list[list[int]] = []

    def recording(*args, **kwargs):
        seen.append(list(args[3][0]))
        generated: list[int] = []
        seen.append(generated)
        for step in decode_steps(*args, **kwargs):
            generated.append(int(step.tokens[0]))
            yield step

    pipe.sampler = recording
    return seen


def test_messages_take_strings_segments_and_typed_parts(tmp_path: Path) -> None:
    Image.new("RGB", (8, 8), "red").save(tmp_path / "red.png")
    turns = to_messages([
        {"role": "system", "content": "You draw shapes."},
        {"role": "user", "content": [{"type": "text", "text": "what is this?"},
                                     {"type": "image", "path": str(tmp_path / "red.png")}]},
        Message("assistant", [TextSegment("a red square")]),
        {"role": "user", "content": [{"type": "audio", "audio": torch.zeros(800), "sample_rate": 8000},
                                     ImageSegment(torch.zeros(3, 8, 8))]},
    ])
    assert [t.role for t in turns] == ["system", "user", "assistant", "user"]
    assert turns[1].content == [TextSegment("what is this?"), ImageSegment(str(tmp_path / "red.png"))]
    assert isinstance(turns[3].content[0], AudioSegment) and turns[3].content[0].sample_rate == 8000
    picture = Image.new("RGB", (8, 8), "blue")  # a PIL image needs no wrapper, alone or in a list
    for content in (picture, ["what is this?", picture]):
        assert to_messages([{"role": "user", "content": content}])[0].content[-1] == ImageSegment(picture)


@pytest.mark.parametrize("messages, match", [
    ([], "non-empty list"),
    ("hello", "non-empty list"),
    ([{"role": "robot", "content": "hi"}], "roles are"),
    ([{"role": "user"}], "'role' and 'content'"),
    ([{"role": "user", "content": []}], "non-empty list of parts"),
    ([{"role": "user", "content": [{"type": "video", "video": b""}]}], "type 'text', 'image' or 'audio'"),
    ([{"role": "user", "content": [{"type": "image"}]}], "needs a 'image'"),
    ([{"role": "user", "content": ["a", {"type": "audio", "audio": torch.zeros(800)}]}],
     r"messages\[0\]\['content'\]\[1\] is a bare waveform: pass its sample_rate too"),
    ([{"role": "user", "content": "a"}, {"role": "system", "content": "b"}], "only the first message"),
    ([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}], "last message must be the user"),
])
def test_bad_conversations_are_refused(messages, match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        ChatTemplate().apply(messages)


def test_media_parts_that_cannot_be_read_name_the_part() -> None:
    with pytest.raises(MediaError, match=r"messages\[0\]\['content'\]\[1\] must be one image \(3, H, W\)"):
        to_messages([{"role": "user", "content": ["a", {"type": "image", "image": torch.rand(5, 8, 8)}]}])
    grey = to_messages([{"role": "user", "content": [{"type": "image", "image": torch.rand(8, 8)}]}])[0].content[0]
    assert grey.image.shape == (3, 8, 8)


def test_the_template_wraps_each_role() -> None:
    template = ChatTemplate(system=("", "\n"), user=("User: ", "\n"), assistant=("Assistant: ", "\n"),
                            generation_prompt="Assistant:")
    prompt = template.apply([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
                             {"role": "assistant", "content": "hello"}, {"role": "user", "content": "bye"}])
    assert "".join(s.text for s in prompt) == "Be brief.\nUser: hi\nAssistant: hello\nUser: bye\nAssistant:"
    default = ChatTemplate().apply([{"role": "user", "content": "a red circle"}])
    assert default == [TextSegment("a red circle")]  # one user turn is exactly what generate() would read


def test_pipe_chat_feeds_the_whole_history(pipe: AnyGenPipeline, prompts: list) -> None:
    first = [{"role": "user", "content": "a red circle"}]
    answer = pipe.chat(first, max_new_tokens=40, generator=torch.Generator().manual_seed(0)).segments
    history = [*first, {"role": "assistant", "content": answer}, {"role": "user", "content": "make it blue"}]
    pipe.chat(history, max_new_tokens=40, generator=torch.Generator().manual_seed(0))
    first_prompt, second_prompt = prompts[0], prompts[2]
    assert second_prompt == pipe.prompt_ids(pipe.apply_chat_template(history))
    assert second_prompt[: len(first_prompt)] == first_prompt
    assert second_prompt[-len(pipe.prompt_ids(["make it blue"])) + 1:] == pipe.prompt_ids(["make it blue"])[1:]


def settings(max_new_tokens: int = 48) -> ChatSettings:
    return ChatSettings(max_new_tokens, torch.Generator().manual_seed(0), {"text": SamplingParams()},
                        ["image", "audio"])


def last(turn) -> tuple[list[dict], list[Message]]:
    *_, final = turn
    return final


def test_the_demo_chat_feeds_earlier_turns_back(pipe: AnyGenPipeline, prompts: list, tmp_path: Path) -> None:
    """The second turn's prompt holds the first turn's prompt, then the first answer as the model wrote it."""
    renderer = Renderer(tmp_path)
    shown, turns = last(chat_turn(pipe, {"text": "a red circle"}, [], [], settings(), renderer))
    first_prompt, first_answer = prompts[0], prompts[1]
    said = turns[-1].content
    assert [t.role for t in turns] == ["user", "assistant"] and len(shown) == 2
    codes = [s for s in said if isinstance(s, CodesSegment)]
    assert codes, "the nudged model answers with a picture"
    shown, turns = last(chat_turn(pipe, {"text": "make it blue"}, shown, turns, settings(), renderer))
    second_prompt = prompts[2]
    assert [t.role for t in turns] == ["user", "assistant", "user", "assistant"] and len(shown) == 4
    assert second_prompt[: len(first_prompt)] == first_prompt  # the first turn, token for token
    answer_ids = pipe.prompt_ids(said)[1:]
    assert second_prompt[len(first_prompt): len(first_prompt) + len(answer_ids)] == answer_ids
    image_span = [t for t in first_answer if t in pipe.model.vocab.span("image", 0)]
    assert image_span and all(t in second_prompt for t in image_span)  # the picture's own codes, not re-encoded
    vocab = pipe.model.vocab
    span_start = second_prompt.index(vocab.begin_id("image"))
    assert second_prompt[span_start + 1: span_start + 1 + 16] == first_answer[first_answer.index(
        vocab.begin_id("image")) + 1:][:16]


def test_old_turns_are_dropped_to_fit_the_context(pipe: AnyGenPipeline) -> None:
    turns = []
    for i in range(40):
        turns += [Message("user", [TextSegment(f"draw shape number {i}")]),
                  Message("assistant", [CodesSegment("image", torch.zeros(16, dtype=torch.long))])]
    turns = [Message("system", [TextSegment("Be brief.")]), *turns, Message("user", [TextSegment("and now?")])]
    kept = fit_context(pipe, turns, max_new_tokens=100)
    assert kept[0].role == "system" and kept[1].role == "user" and kept[-1] == turns[-1]
    assert len(pipe.prompt_ids(pipe.apply_chat_template(kept))) + 100 <= 512 < \
        len(pipe.prompt_ids(pipe.apply_chat_template([kept[0], *turns[len(turns) - len(kept) - 1:]]))) + 100
