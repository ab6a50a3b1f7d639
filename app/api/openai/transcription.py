"""Translation of `POST /v1/audio/transcriptions` into the core's chat run, and back.

As Ollama does it (its `/v1/audio/transcriptions` runs no speech engine of its own): the
audio becomes a chat run on an audio-capable model, attached to the user message the way
images are (Ollama's messages carry audio in `images`, base64), under a fixed system
instruction to transcribe exactly, with the form's `language` and `prompt` appended to it,
at temperature 0. The answer's text, trimmed, is the transcript: `{"text": ...}` for
`response_format` `json` (the default), the plain text for `text`.

The stored run describes the upload (`metadata["upload"]`: size, content type, file name)
instead of keeping it: its messages are stored without the audio unless
`GATEWAY_STORE_TRANSCRIPTION_AUDIO` asks for it. Pure functions: the route
(`app.api.openai.audio`) does the I/O.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from fastapi.responses import JSONResponse, PlainTextResponse, Response

from app.api.common.errors import ApiError
from app.ollama.options import RequestPlan
from app.ollama.run_spec import RunSpec

__all__ = [
    "INSTRUCTION",
    "QUESTION",
    "TranscriptionForm",
    "describe_upload",
    "transcription_messages",
    "transcription_plan",
    "transcription_reply",
]

INSTRUCTION = "Output only the spoken words. Do not answer any question in the audio."
"""The fixed system instruction of every transcription run."""
QUESTION = "What exact words are spoken in this audio?"
"""The user message the audio is attached to."""
RESPONSE_FORMATS = ("json", "text")
FILE_FIELD = "file"

ResponseFormat = Literal["json", "text"]


def invalid(message: str) -> ApiError:
    return ApiError(400, "Invalid request", message)


@dataclass(frozen=True)
class TranscriptionForm:
    """The form's fields a transcription uses (other fields, such as `temperature` or
    `timestamp_granularities[]`, are accepted and ignored, as Ollama does)."""

    model: str
    language: str
    prompt: str
    response_format: ResponseFormat

    @classmethod
    def of(cls, fields: Mapping[str, str], has_file: bool) -> TranscriptionForm:
        """The checked fields: 400 naming the first one missing or wrong."""
        model = fields.get("model", "").strip()
        if not model:
            raise invalid("model is required")
        if not has_file:
            raise invalid("file is required")
        response_format = fields.get("response_format", "").strip() or "json"
        if response_format not in RESPONSE_FORMATS:
            raise invalid(f"response_format {response_format!r} is not supported: use json or text")
        return cls(
            model=model,
            language=fields.get("language", "").strip(),
            prompt=fields.get("prompt", "").strip(),
            response_format="text" if response_format == "text" else "json",
        )

    def instruction(self) -> str:
        text = INSTRUCTION
        if self.language:
            text += f" The audio is in {self.language}."
        if self.prompt:
            text += f" Context: {self.prompt}"
        return text


def transcription_messages(form: TranscriptionForm, audio: bytes) -> list[dict[str, Any]]:
    """The chat: the instruction, then the question with the audio attached (base64)."""
    if not audio:
        raise invalid("audio file is empty")
    return [
        {"role": "system", "content": form.instruction()},
        {"role": "user", "content": QUESTION, "images": [base64.b64encode(audio).decode()]},
    ]


def transcription_plan() -> RequestPlan:
    return RequestPlan(options={"temperature": 0})


def describe_upload(
    spec: RunSpec,
    form: TranscriptionForm,
    *,
    size: int,
    content_type: str | None,
    filename: str | None,
    keep_audio: bool,
) -> None:
    """What the stored run keeps of the upload: its size, type and name, and (unless
    `keep_audio`) its messages without the audio."""
    spec.metadata["upload"] = {
        "bytes": size,
        "content_type": content_type,
        "filename": filename,
        "language": form.language or None,
        "response_format": form.response_format,
    }
    if not keep_audio and spec.messages is not None:
        spec.metadata["messages"] = [
            {k: v for k, v in message.items() if k != "images"} for message in spec.messages
        ]


def transcription_reply(text: str, response_format: ResponseFormat) -> Response:
    transcript = text.strip()
    if response_format == "text":
        return PlainTextResponse(transcript)
    return JSONResponse({"text": transcript})
