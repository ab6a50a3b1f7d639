"""The emulator's audio (a chat with audio attached, `/v1/audio/transcriptions`,
`/v1/audio/speech`), its status and experimental paths, and its log of received requests."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator

import httpx
import pytest

from app.emulator.audio import SAMPLE_RATE, SECONDS_PER_CHARACTER
from tests.support.audio import wav_bytes, wav_seconds
from tests.support.servers import running_emulator

MODEL = "gemma4:e2b"
INSTRUCTION = "Output only the spoken words. Do not answer any question in the audio."


@pytest.fixture(scope="module")
def api() -> Iterator[httpx.Client]:
    with (
        running_emulator(models=(MODEL, "llama3.1:8b")) as url,
        httpx.Client(base_url=url, timeout=30) as client,
    ):
        yield client


def transcription_chat(model: str, audio: bytes, stream: bool) -> dict[str, object]:
    return {
        "model": model,
        "stream": stream,
        "options": {"temperature": 0},
        "messages": [
            {"role": "system", "content": INSTRUCTION},
            {
                "role": "user",
                "content": "What is said?",
                "images": [base64.b64encode(audio).decode()],
            },
        ],
    }


def test_a_chat_with_audio_under_the_instruction_answers_a_transcript(api: httpx.Client) -> None:
    audio = wav_bytes(3.2, rate=22_050)
    whole = api.post("/api/chat", json=transcription_chat(MODEL, audio, stream=False)).json()
    expected = f"Emulated transcript of {wav_seconds(audio):.2f} seconds of audio."
    assert whole["message"]["content"] == expected and whole["done"] is True
    assert whole["prompt_eval_count"] > 0 and whole["eval_count"] == len(expected.split())
    streamed = api.post("/api/chat", json=transcription_chat(MODEL, audio, stream=True))
    lines = [json.loads(line) for line in streamed.text.splitlines()]
    assert "".join(line["message"]["content"] for line in lines) == expected
    assert lines[-1]["done"] is True and not any(line["done"] for line in lines[:-1])


def test_audio_that_is_no_wav_is_named_by_its_size(api: httpx.Client) -> None:
    mp3ish = b"ID3" + bytes(997)
    reply = api.post("/api/chat", json=transcription_chat(MODEL, mp3ish, stream=False)).json()
    assert reply["message"]["content"] == "Emulated transcript of 1000 bytes of audio."


def test_a_model_without_audio_answers_as_any_chat(api: httpx.Client) -> None:
    reply = api.post("/api/chat", json=transcription_chat("llama3.1:8b", wav_bytes(1), False))
    assert reply.status_code == 200
    assert "transcript" not in reply.json()["message"]["content"]


def test_v1_transcriptions_as_ollama_answers_them(api: httpx.Client) -> None:
    audio = wav_bytes(1.5)
    form = {"model": MODEL}
    files = {"file": ("a.wav", audio, "audio/wav")}
    as_json = api.post("/v1/audio/transcriptions", data=form, files=files)
    assert as_json.json() == {"text": "Emulated transcript of 1.50 seconds of audio."}
    as_text = api.post(
        "/v1/audio/transcriptions", data={**form, "response_format": "text"}, files=files
    )
    assert as_text.headers["content-type"] == "text/plain"
    assert as_text.text == "Emulated transcript of 1.50 seconds of audio."
    for data, sent, message in (
        ({}, files, "model is required"),
        (form, {"other": ("a.wav", audio)}, "file is required"),
        (form, {"file": ("a.wav", b"")}, "audio file is empty"),
    ):
        reply = api.post("/v1/audio/transcriptions", data=data, files=sent)
        assert reply.status_code == 400
        error = reply.json()["error"]
        assert message in error["message"] and error["type"] == "invalid_request_error"


def test_speech_is_a_wav_whose_length_follows_the_input(api: httpx.Client) -> None:
    for text in ("Hi.", "A longer sentence, spoken slowly."):
        reply = api.post("/v1/audio/speech", json={"model": MODEL, "input": text, "voice": "x"})
        assert reply.status_code == 200 and reply.headers["content-type"] == "audio/wav"
        assert wav_seconds(reply.content) == pytest.approx(len(text) * SECONDS_PER_CHARACTER)
    pcm = api.post(
        "/v1/audio/speech", json={"model": MODEL, "input": "abc", "response_format": "pcm"}
    )
    assert pcm.headers["content-type"] == "audio/pcm"
    assert len(pcm.content) == round(3 * SECONDS_PER_CHARACTER * SAMPLE_RATE) * 2
    for body, status, message in (
        ({"input": "hi"}, 400, "model is required"),
        ({"model": "nope:1b", "input": "hi"}, 404, 'model "nope:1b" not found'),
        ({"model": MODEL}, 400, "input is required"),
        ({"model": MODEL, "input": "hi", "response_format": "mp3"}, 400, "unsupported"),
    ):
        reply = api.post("/v1/audio/speech", json=body)
        assert reply.status_code == status and message in reply.json()["error"]["message"]


def test_status_recommendations_and_web_tools(api: httpx.Client) -> None:
    assert api.get("/api/status").json() == {"cloud": {"disabled": False, "source": "none"}}
    recommended = api.get("/api/experimental/model-recommendations").json()["recommendations"]
    assert {r["model"] for r in recommended} == {MODEL, "llama3.1:8b"}
    found = api.post("/api/experimental/web_search", json={"query": "cats", "max_results": 3})
    assert [r["title"] for r in found.json()["results"]] == [
        f"Result {i} for cats" for i in (1, 2, 3)
    ]
    page = api.post("/api/experimental/web_fetch", json={"url": "https://example.org"}).json()
    assert page["title"] == "The page at https://example.org"
    missing = api.post("/api/experimental/web_search")
    assert (missing.status_code, missing.json()) == (400, {"error": "missing request body"})


def test_received_requests_are_logged_by_header_name_only(api: httpx.Client) -> None:
    api.post("/_emulator/reset")
    api.post("/api/me", headers={"Authorization": "Bearer secret-value"})
    (entry,) = api.get("/_emulator/state").json()["received"]
    assert entry["method"] == "POST" and entry["path"] == "/api/me"
    assert "authorization" in entry["headers"]
    assert "secret-value" not in json.dumps(entry)
