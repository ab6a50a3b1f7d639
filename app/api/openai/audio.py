"""OpenAI's audio doors at `/v1/audio`: transcriptions (speech to text) and speech (text to
speech).

- `POST /v1/audio/transcriptions` (multipart: `file`, `model`; `language`, `prompt`,
  `response_format` `json` or `text`) is a run of the core, as Ollama makes it: a chat on
  an audio-capable model with the audio attached (`app.api.openai.transcription`). So it
  is routed to a backend that has the model, failed over, stored (surface
  `transcription`), counted in the key's usage and limits, audited, measured and traced
  like any run. The upload is streamed to a temporary file within
  `GATEWAY_MAX_UPLOAD_BYTES` (`app.api.openai.multipart`), and the form's model is checked
  against the key's allowlist as soon as it is read, before the file is sent anywhere.
- `POST /v1/audio/speech` is relayed to a backend that has the body's model and passed
  back unchanged (status, content type, bytes as they come); a backend without the door
  answers its own 404, passed on. It is stored as a run of kind and surface `speech`
  (its input as the prompt, the audio's size and type, not the audio).

Both are stored when `GATEWAY_STORE_OPENAI_API` is on (the default).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse

from app.api.common.auth import UserDep
from app.api.common.authorization import authorize_models
from app.api.common.deps import RelayDep, RunnerDep, ServicesDep
from app.api.common.errors import ApiError, failed_run_problem
from app.api.common.quotas import admit_runs
from app.api.common.shutdown import ShuttingDown, until_shutdown
from app.api.openai.multipart import read_multipart
from app.api.openai.transcription import (
    FILE_FIELD,
    TranscriptionForm,
    describe_upload,
    transcription_messages,
    transcription_plan,
    transcription_reply,
)
from app.ollama.metadata import ErrorKind
from app.relay.relay import Relay, Relayed

__all__ = ["SPEECH_PATH", "TRANSCRIPTIONS_PATH", "router"]

router = APIRouter(prefix="/v1/audio", include_in_schema=False)

TRANSCRIPTIONS_PATH = "/v1/audio/transcriptions"
"""The upload path: its body is limited by `GATEWAY_MAX_UPLOAD_BYTES`, not read by the
edge's JSON guard (see `app.main`)."""
SPEECH_PATH = "/v1/audio/speech"
ERROR_TEXT_BYTES = 1024
"""How much of a backend's error reply a failed speech run keeps as its error."""


def invalid(message: str) -> ApiError:
    return ApiError(400, "Invalid request", message)


@router.post("/transcriptions", response_model=None)
async def transcriptions(
    request: Request, runner: RunnerDep, services: ServicesDep, principal: UserDep
) -> Response:
    settings = services.settings

    def check_model(name: str, value: str) -> None:
        if name == "model" and value.strip():  # before the file that follows is read
            authorize_models(request, principal, [value.strip()])

    form = await read_multipart(
        request,
        max_bytes=settings.max_upload_bytes,
        file_fields=(FILE_FIELD,),
        on_field=check_model,
    )
    try:
        upload = form.files.get(FILE_FIELD)
        body = TranscriptionForm.of(form.fields, has_file=upload is not None)
        if upload is None:  # (said by `of`, which checks the model first, as Ollama does)
            raise invalid("file is required")
        if len(body.prompt) > settings.max_prompt_chars:
            raise invalid(f"prompt is longer than {settings.max_prompt_chars} characters")
        authorize_models(request, principal, [body.model])  # a model sent after the file
        if upload.size == 0:
            raise invalid("audio file is empty")
        audio = await upload.read()
    finally:
        form.close()
    await admit_runs(request, principal)
    try:
        spec = runner.request_spec(
            "chat",
            body.model,
            plan=transcription_plan(),
            messages=transcription_messages(body, audio),
            surface="transcription",
        )
    except ValueError as exc:
        raise invalid(str(exc)) from exc
    del audio  # the run's messages hold it (base64) until the run ends
    describe_upload(
        spec,
        body,
        size=upload.size,
        content_type=upload.content_type,
        filename=upload.filename,
        keep_audio=settings.store_transcription_audio,
    )
    result = await runner.arun_spec(spec, save_output=settings.store_openai_api)
    if not result.success:
        raise failed_run_problem(result)
    return transcription_reply(result.response, body.response_format)


def _speech_body(content: bytes) -> dict[str, Any]:
    try:
        body = json.loads(content) if content.strip() else None
    except (ValueError, RecursionError) as exc:
        raise invalid(f"the body is not valid JSON: {exc}") from exc
    if not isinstance(body, dict):
        raise invalid("the body must be a JSON object")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise invalid("model is required")
    return body


@router.post("/speech", response_model=None)
async def speech(
    request: Request, relay: RelayDep, services: ServicesDep, principal: UserDep
) -> Response:
    content = await request.body()
    body = _speech_body(content)
    model: str = body["model"]
    authorize_models(request, principal, [model])
    started = time.perf_counter()
    relayed = await relay.arelay(
        "POST",
        SPEECH_PATH,
        model=model,
        content=content,
        headers={"content-type": "application/json"},
    )
    headers = {k: v for k, v in relayed.headers.items() if k.lower() not in ("date", "server")}
    store = services.settings.store_openai_api
    reply = _passed_on(relayed, body, services.shutdown.ending, started, store, relay)
    return StreamingResponse(reply, status_code=relayed.status, headers=headers)


async def _passed_on(
    relayed: Relayed,
    body: dict[str, Any],
    ending: asyncio.Event,
    started: float,
    store: bool,
    relay: Relay,
) -> AsyncIterator[bytes]:
    """The backend's reply as it comes; then the run stored (its size and type)."""
    size = 0
    error_text = bytearray()
    error: str | None = None
    error_type: ErrorKind | None = None
    try:
        async for piece in until_shutdown(relayed.body, ending):
            size += len(piece)
            if relayed.status >= 400 and len(error_text) < ERROR_TEXT_BYTES:
                error_text.extend(piece[: ERROR_TEXT_BYTES - len(error_text)])
            yield piece
    except ShuttingDown:
        error, error_type = "the gateway shut down before the audio was sent", "Cancelled"
    except Exception as exc:  # the backend's reply broke off: the client's does too
        error, error_type = f"the backend's reply failed: {exc}", "StreamInterrupted"
        raise
    except BaseException:
        error, error_type = "the client left before the audio was sent", "Cancelled"
        raise
    finally:
        await relayed.aclose()
        if error is None and relayed.status >= 400:
            text = error_text.decode("utf-8", "replace").strip()
            error = f"HTTP {relayed.status}: {text}" if text else None
        if store:
            with contextlib.suppress(Exception):
                await relay.arecord_exchange(
                    kind="speech",
                    surface="speech",
                    model=str(body["model"]),
                    prompt=body["input"] if isinstance(body.get("input"), str) else "",
                    relayed=relayed,
                    execution_time=time.perf_counter() - started,
                    error=error,
                    error_type=error_type,
                    details={
                        "speech": {
                            "request": {
                                k: v for k, v in body.items() if k not in ("model", "input")
                            },
                            "bytes": size,
                            "content_type": relayed.headers.get("content-type"),
                        }
                    },
                )
