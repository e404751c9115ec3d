"""OpenAI's request and response shapes for the endpoints ``anygen serve`` answers, as pydantic models.

Requests forbid unknown fields (a misspelled ``temprature`` is a 400 naming it, not silently ignored) and bound every
number, so a bad value is refused with the field's name before anything is sampled. Fields OpenAI defines that
anygen cannot honour are accepted only at their neutral value (e.g. ``frequency_penalty=0``). anygen's own extras
(``seed`` where OpenAI has none, ``top_k``, ``guidance_scale`` ...) go in the request body, e.g. through the openai
client's ``extra_body``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from anygen.generation.sampling import GUIDANCE_RANGE

MAX_SEED = 2**63 - 1
StopText = Annotated[str, Field(min_length=1, max_length=256)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- errors ------------------------------------------------------------------------------------------------


class ErrorBody(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorBody


# ---- models ------------------------------------------------------------------------------------------------


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "anygen"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---- chat completions --------------------------------------------------------------------------------------


class ImageUrl(Strict):
    url: str
    detail: str | None = None


class InputAudio(Strict):
    data: str
    format: str = "wav"


class ContentPart(Strict):
    """One part of a message: ``text``, ``image_url`` (a ``data:`` URL) or ``input_audio`` (base64 wav)."""

    type: str
    text: str | None = None
    image_url: ImageUrl | None = None
    input_audio: InputAudio | None = None


class ChatMessage(Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[ContentPart]
    name: str | None = None


class AudioOutput(Strict):
    format: Literal["wav"] = "wav"
    voice: str | None = None


class StreamOptions(Strict):
    include_usage: bool = False


class SamplingFields(Strict):
    """The sampling settings every generating request takes (anygen's extras beside OpenAI's)."""

    temperature: float = Field(1.0, ge=0.0, le=2.0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, le=2**31 - 1, description="anygen extra: keep the k likeliest tokens (0 = all)")
    seed: int | None = Field(None, ge=0, le=MAX_SEED)


class ChatCompletionRequest(SamplingFields):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    n: int = Field(1, ge=1, le=1, description="one choice per request")
    stream: bool = False
    stream_options: StreamOptions | None = None
    modalities: list[Literal["text", "image", "audio"]] | None = None
    audio: AudioOutput | None = None
    guidance_scale: float = Field(1.0, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1],
                                  description="anygen extra: classifier-free guidance of media spans")
    size: str | None = Field(None, description="anygen extra: the answer's images, 'WxH' as /v1/images/generations "
                                               "takes it (default: the model's own size)")
    frequency_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: only 0")
    presence_penalty: float = Field(0.0, ge=0.0, le=0.0, description="not supported: only 0")
    logprobs: Literal[False] = False
    stop: Annotated[list[StopText], Field(max_length=4)] | None = Field(
        None, description="a string or up to 4: the answer ends before the first of them its text would hold")
    user: str | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _one_stop_string(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | list[dict[str, Any]] | None
    audio: dict[str, Any] | None = None


class ChatChoice(BaseModel):
    index: int = 0
    message: ChatMessageOut
    finish_reason: Literal["stop", "length"]


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


# ---- images ------------------------------------------------------------------------------------------------


class ImageFields(Strict):
    """What image generation and editing share (``prompt`` first)."""

    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1)
    size: str | None = None
    response_format: Literal["b64_json"] = "b64_json"
    output_format: Literal["png"] = "png"
    quality: str | None = None
    user: str | None = None
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    guidance_scale: float = Field(2.0, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])
    temperature: float = Field(1.0, ge=1e-4, le=2.0)
    top_k: int = Field(0, ge=0, le=2**31 - 1)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    # anygen's extension: sample this many per image and return the one the model ranks first (the pipelines'
    # num_candidates). 1 by default here: candidates take rows of the batch that every request shares.
    num_candidates: int = Field(1, ge=1)


class ImageGenerationRequest(ImageFields):
    negative_prompt: str | None = None
    style: str | None = None


class ImageEditRequest(ImageFields):
    image_guidance_scale: float = Field(1.5, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])


class ImageData(BaseModel):
    b64_json: str
    revised_prompt: str | None = None


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: Literal["png"] = "png"


# ---- audio -------------------------------------------------------------------------------------------------


class SpeechRequest(Strict):
    model: str
    input: str
    voice: str | dict[str, Any] = "default"
    response_format: Literal["wav", "pcm"] = "wav"
    speed: float = Field(1.0, ge=1.0, le=1.0, description="only 1.0")
    instructions: str | None = None
    stream_format: Literal["audio"] = "audio"
    seed: int | None = Field(None, ge=0, le=MAX_SEED)
    guidance_scale: float = Field(2.0, ge=GUIDANCE_RANGE[0], le=GUIDANCE_RANGE[1])
    num_candidates: int = Field(1, ge=1)  # anygen's extension, as for images
    temperature: float = Field(0.7, ge=1e-4, le=2.0)
    max_seconds: float | None = Field(None, gt=0.0)


class TranscriptionRequest(Strict):
    model: str
    language: str | None = None
    prompt: str | None = None
    response_format: Literal["json", "text"] = "json"
    temperature: float = Field(0.0, ge=0.0, le=0.0, description="transcription is greedy")


class Transcription(BaseModel):
    text: str
