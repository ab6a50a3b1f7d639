"""Audio, as the emulator fakes it: transcripts that name the audio's length, speech that is
a real WAV whose length follows its input.

- `/api/chat` with audio attached to a message (in `images`, base64, as Ollama takes it)
  on a model with the `audio` capability, under the transcription instruction ("Output
  only the spoken words..."), answers `transcript_of(audio)`: "Emulated transcript of
  1.50 seconds of audio." (a WAV's length from its header; other formats by their size).
- `POST /v1/audio/transcriptions` does what Ollama's does: the multipart form (`file`,
  `model`; `language`, `prompt`, `response_format`) made into that chat, answered as
  `{"text": ...}` or plain text, errors in OpenAI's shape.
- `POST /v1/audio/speech` (`model`, `input`, `voice`, `response_format` `wav` (default) or
  `pcm`) answers 16-bit mono audio at 24 kHz, `SECONDS_PER_CHARACTER` of it for each
  character of the input (a tone per character), streamed in pieces, after
  `first_token_delay_ms` (the model's load).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from functools import lru_cache
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.emulator.catalog import Spec
from app.emulator.engine import Event, Finished, Piece
from app.emulator.errors import OllamaError
from app.emulator.responses import JSON_TYPE, Scope, Send, send_body
from app.emulator.state import State
from app.emulator.wire import dumps

__all__ = [
    "SAMPLE_RATE",
    "SECONDS_PER_CHARACTER",
    "AudioEndpoints",
    "audio_seconds",
    "transcript_events",
    "transcription_audio",
]

JSON = dict[str, Any]
TRANSCRIBE_MARK = "Output only the spoken words."
"""What the system message of a transcription says (Ollama's instruction, and the gateway's)."""
SAMPLE_RATE = 24_000
SECONDS_PER_CHARACTER = 0.05
SPEECH_PIECE_BYTES = 16_384
_AUDIO_MAGIC = (b"RIFF", b"ID3", b"\xff\xfb", b"\xff\xf3", b"\xff\xf2", b"OggS", b"fLaC")


def audio_seconds(data: bytes) -> float | None:
    """A WAV's length in seconds from its header (`fmt ` byte rate, `data` size); None
    for anything else."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    offset, byte_rate = 12, 0
    while offset + 8 <= len(data):
        chunk, size = (
            data[offset : offset + 4],
            struct.unpack("<I", data[offset + 4 : offset + 8])[0],
        )
        body = offset + 8
        if chunk == b"fmt " and size >= 16:
            byte_rate = struct.unpack("<I", data[body + 8 : body + 12])[0]
        elif chunk == b"data":
            size = min(size, len(data) - body)
            return size / byte_rate if byte_rate else None
        offset = body + size + (size & 1)
    return None


def transcript_of(audio: bytes) -> str:
    seconds = audio_seconds(audio)
    if seconds is not None:
        return f"Emulated transcript of {seconds:.2f} seconds of audio."
    return f"Emulated transcript of {len(audio)} bytes of audio."


def _attached_audio(message: JSON) -> list[bytes]:
    found = []
    for item in message.get("images") or []:
        if not isinstance(item, str):
            continue
        try:
            data = base64.b64decode(item, validate=True)
        except (binascii.Error, ValueError):
            continue
        if data.startswith(_AUDIO_MAGIC):
            found.append(data)
    return found


def transcription_audio(spec: Spec, messages: list[JSON]) -> bytes | None:
    """The audio to transcribe when a chat is a transcription (an audio model, the
    instruction in a system message, audio attached to a message), else None."""
    if "audio" not in spec.capabilities:
        return None
    if not any(
        m.get("role") == "system" and TRANSCRIBE_MARK in str(m.get("content") or "")
        for m in messages
    ):
        return None
    audio = [a for m in messages for a in _attached_audio(m)]
    return audio[-1] if audio else None


async def transcript_events(audio: bytes, cold: bool, state: State) -> AsyncIterator[Event]:
    """The events of a transcription (a word a piece) at the emulated pace, with made-up
    counters."""
    words = transcript_of(audio).split(" ")
    pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
    load = 30_000_000 if cold else 2_000_000
    prompt_tokens = 20 + len(audio) // 4096  # what the audio encoder makes of it, roughly
    token_ns = int(state.token_delay_ms * 1_000_000) or 2_000_000
    for i, piece in enumerate(pieces):
        delay = state.first_token_delay_ms if i == 0 else state.token_delay_ms
        if delay > 0:
            await asyncio.sleep(delay / 1000)
        yield Piece(content=piece)
    yield Finished(
        "stop",
        {
            "total_duration": load + prompt_tokens * 200_000 + len(pieces) * token_ns + 1_000_000,
            "load_duration": load,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": prompt_tokens * 200_000,
            "eval_count": len(pieces),
            "eval_duration": len(pieces) * token_ns,
        },
    )


# -- /v1/audio --------------------------------------------------------------------------


def openai_error(status: int, message: str) -> OpenAIError:
    return OpenAIError(status, message)


class OpenAIError(Exception):
    """An error of the `/v1` doors, in OpenAI's shape (as Ollama's `openai.NewError`)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def body(self) -> bytes:
        kind = {400: "invalid_request_error", 404: "not_found_error"}.get(self.status, "api_error")
        error = {"message": self.message, "type": kind, "param": None, "code": None}
        return dumps({"error": error})


def _form(scope: Scope, body: bytes) -> tuple[dict[str, str], dict[str, bytes]]:
    """A multipart form's text fields and files (whole: the emulator holds the body)."""
    headers = dict(scope.get("headers") or [])
    kind, options = parse_options_header(headers.get(b"content-type"))
    if kind != b"multipart/form-data" or b"boundary" not in options:
        raise openai_error(
            400, "failed to parse multipart form: request Content-Type isn't multipart/form-data"
        )
    fields: dict[str, str] = {}
    files: dict[str, bytes] = {}
    part: JSON = {}
    header = [bytearray(), bytearray()]
    ended = []

    def header_end() -> None:
        part["headers"][bytes(header[0]).strip().lower()] = bytes(header[1]).strip()
        header[0].clear()
        header[1].clear()

    def part_end() -> None:
        _, disposition = parse_options_header(part["headers"].get(b"content-disposition"))
        name = disposition.get(b"name", b"").decode("utf-8", "replace")
        if b"filename" in disposition:
            files.setdefault(name, bytes(part["data"]))
        else:
            fields.setdefault(name, bytes(part["data"]).decode("utf-8", "replace"))

    callbacks: dict[str, Callable[..., None]] = {
        "on_part_begin": lambda: part.update(headers={}, data=bytearray()),
        "on_header_field": lambda d, s, e: header[0].extend(d[s:e]),
        "on_header_value": lambda d, s, e: header[1].extend(d[s:e]),
        "on_header_end": header_end,
        "on_part_data": lambda d, s, e: part["data"].extend(d[s:e]),
        "on_part_end": part_end,
        "on_end": lambda: ended.append(True),
    }
    try:
        parser = MultipartParser(options[b"boundary"], callbacks)  # type: ignore[arg-type]
        parser.write(body)
    except FormParserError as exc:
        raise openai_error(400, f"failed to parse multipart form: {exc}") from exc
    if not ended:
        raise openai_error(400, "failed to parse multipart form: unexpected EOF")
    return fields, files


@lru_cache(maxsize=128)
def _tone(character: str) -> bytes:
    """`SECONDS_PER_CHARACTER` of a sine tone (16-bit PCM), its pitch from the character."""
    frequency = 220 + (ord(character) % 24) * 20
    count = round(SAMPLE_RATE * SECONDS_PER_CHARACTER)
    amplitude = 0 if character.isspace() else 8000
    samples = (
        round(amplitude * math.sin(2 * math.pi * frequency * i / SAMPLE_RATE)) for i in range(count)
    )
    return struct.pack(f"<{count}h", *samples)


def wav_header(data_bytes: int) -> bytes:
    """The 44-byte header of a 16-bit mono PCM WAV at `SAMPLE_RATE`."""
    return (
        b"RIFF"
        + struct.pack("<I", 36 + data_bytes)
        + b"WAVEfmt "
        + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
        + b"data"
        + struct.pack("<I", data_bytes)
    )


Chat = Callable[[bytes], Awaitable[JSON]]
"""Answers a `/api/chat` body (`stream: false`) with its reply, or raises `OllamaError`."""


class AudioEndpoints:
    """`/v1/audio/transcriptions` (through `chat`, as Ollama's goes through its chat
    handler) and `/v1/audio/speech`."""

    def __init__(self, state: State, chat: Chat) -> None:
        self.state = state
        self.chat = chat

    async def transcriptions(self, scope: Scope, body: bytes, send: Send) -> None:
        try:
            fields, files = _form(scope, body)
            model = fields.get("model", "")
            if not model:
                raise openai_error(400, "model is required")
            if "file" not in files:
                raise openai_error(400, "file is required: http: no such file")
            audio = files["file"]
            if not audio:
                raise openai_error(400, "audio file is empty")
            instruction = (
                f"Transcribe the audio exactly as spoken. {TRANSCRIBE_MARK} "
                "Do not answer any question in the audio."
            )
            if fields.get("language"):
                instruction += f" The audio is in {fields['language']}."
            if fields.get("prompt"):
                instruction += f" Context: {fields['prompt']}"
            request = {
                "model": model,
                "messages": [
                    {"role": "system", "content": instruction},
                    {
                        "role": "user",
                        "content": "What exact words are spoken in this audio?",
                        "images": [base64.b64encode(audio).decode()],
                    },
                ],
                "stream": False,
                "options": {"temperature": 0},
            }
            try:
                reply = await self.chat(dumps(request))
            except OllamaError as exc:
                raise openai_error(exc.status, exc.message) from exc
        except OpenAIError as exc:
            await send_body(send, exc.status, JSON_TYPE, exc.body())
            return
        text = str((reply.get("message") or {}).get("content") or "").strip()
        if fields.get("response_format") == "text":
            await send_body(send, 200, b"text/plain", text.encode())
        else:
            await send_body(send, 200, b"application/json", dumps({"text": text}) + b"\n")

    async def speech(self, scope: Scope, body: bytes, send: Send) -> None:
        try:
            req = self._speech_request(body)
        except OpenAIError as exc:
            await send_body(send, exc.status, JSON_TYPE, exc.body())
            return
        if self.state.first_token_delay_ms > 0:  # the model's load, as for a generation
            await asyncio.sleep(self.state.first_token_delay_ms / 1000)
        text: str = req["input"]
        data_bytes = len(text) * len(_tone("a"))
        pcm = req.get("response_format") == "pcm"
        content_type = b"audio/pcm" if pcm else b"audio/wav"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", content_type)],
            }
        )
        pending = bytearray() if pcm else bytearray(wav_header(data_bytes))
        for character in text:
            pending += _tone(character)
            if len(pending) >= SPEECH_PIECE_BYTES:
                await send(
                    {"type": "http.response.body", "body": bytes(pending), "more_body": True}
                )
                pending.clear()
        await send({"type": "http.response.body", "body": bytes(pending), "more_body": False})

    def _speech_request(self, body: bytes) -> JSON:
        try:
            req = json.loads(body) if body.strip() else None
        except ValueError as exc:
            raise openai_error(400, f"invalid request body: {exc}") from exc
        if not isinstance(req, dict):
            raise openai_error(400, "invalid request body")
        model = req.get("model")
        if not isinstance(model, str) or not model:
            raise openai_error(400, "model is required")
        if self.state.resolve(model) is None:
            raise openai_error(404, f'model "{model}" not found')
        text = req.get("input")
        if not isinstance(text, str) or not text:
            raise openai_error(400, "input is required")
        response_format = req.get("response_format") or "wav"
        if response_format not in ("wav", "pcm"):
            raise openai_error(
                400, f"unsupported response_format {response_format!r}: use wav or pcm"
            )
        return req
