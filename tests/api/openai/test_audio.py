"""OpenAI's audio doors through the gateway: `/v1/audio/transcriptions` as a run of the core
(a chat on an audio model, the audio attached), `/v1/audio/speech` relayed as it comes.
The official `openai` SDK, unmodified, against the gateway under uvicorn in front of
emulators; WAV files made here with Python's `wave` module."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.api.openai.transcription import INSTRUCTION
from app.emulator.audio import SECONDS_PER_CHARACTER
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.audio import wav_bytes, wav_seconds
from tests.support.servers import (
    answer_lifespan,
    free_port,
    running_emulator,
    running_process,
    serving_in_thread,
)

MODEL = "gemma4:e2b"
"""The emulator's audio-capable model."""
TEXT_MODEL = "llama3.1:8b"
ADMIN_KEY = "ogw_" + "audio-tests-admin-key-0123456789"
BOUNDARY = "gateway-test-boundary"


@pytest.fixture(scope="module")
def audio_emulator() -> Iterator[str]:
    with running_emulator(models=(MODEL, TEXT_MODEL)) as url:
        yield url


@pytest.fixture
def emulator(audio_emulator: str) -> str:
    httpx.post(f"{audio_emulator}/_emulator/reset", timeout=5).raise_for_status()
    return audio_emulator


@pytest.fixture
def gateway(emulator: str, tmp_path: Path) -> Iterator[str]:
    with serving_in_thread(create_app(gateway_settings([emulator], tmp_path))) as url:
        yield url


@pytest.fixture
def client(gateway: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)


def stored(gateway: str, key: str | None = None, **query: Any) -> list[dict[str, Any]]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    reply = httpx.get(f"{gateway}/gateway/results", params=query, headers=headers, timeout=10)
    assert reply.status_code == 200, reply.text
    items: list[dict[str, Any]] = reply.json()["items"]
    return items


def received(emulator: str) -> list[str]:
    """The paths the emulator received since its reset."""
    state = httpx.get(f"{emulator}/_emulator/state", timeout=5).json()
    return [r["path"] for r in state["received"]]


def multipart(*parts: tuple[str, bytes, str | None], end: bool = True) -> bytes:
    """A multipart/form-data body of (name, value, file name or None) parts; `end`: with
    its closing boundary."""
    body = b""
    for name, value, filename in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"\r\nContent-Type: audio/wav'
        body += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        body += value + b"\r\n"
    return body + (f"--{BOUNDARY}--\r\n".encode() if end else b"")


def post_form(gateway: str, body: bytes) -> httpx.Response:
    return httpx.post(
        f"{gateway}/v1/audio/transcriptions",
        content=body,
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=30,
    )


def error_of(reply: httpx.Response) -> dict[str, Any]:
    """The OpenAI error of a reply (its shape checked)."""
    error: dict[str, Any] = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


# -- transcriptions ----------------------------------------------------------------------


def test_a_wav_is_transcribed_as_json_and_as_text_and_stored_once_each(
    client: openai.OpenAI, gateway: str, emulator: str
) -> None:
    first, second = wav_bytes(2.25), wav_bytes(1.0, rate=8000)
    as_json = client.audio.transcriptions.create(model=MODEL, file=("talk.wav", first, "audio/wav"))
    assert as_json.text == f"Emulated transcript of {wav_seconds(first):.2f} seconds of audio."
    as_text = client.audio.transcriptions.create(
        model=MODEL,
        file=("short.wav", second, "audio/wav"),
        response_format="text",
        language="fr",
        prompt="Names: Ada, Grace.",
    )
    assert isinstance(as_text, str)
    assert as_text == f"Emulated transcript of {wav_seconds(second):.2f} seconds of audio."

    # Each went through the core as a chat run on the backend, the audio attached.
    assert received(emulator).count("/api/chat") == 2
    assert "/v1/audio/transcriptions" not in received(emulator)
    runs = {run["metadata"]["upload"]["filename"]: run
            for run in stored(gateway, surface="transcription")}  # fmt: skip
    assert set(runs) == {"talk.wav", "short.wav"}
    assert len(stored(gateway)) == 2  # stored once each, and nothing else
    for name, audio, text, language in (
        ("talk.wav", first, as_json.text, None),
        ("short.wav", second, as_text, "fr"),
    ):
        run = runs[name]
        assert (run["kind"], run["surface"], run["status"]) == (
            "chat",
            "transcription",
            "succeeded",
        )
        assert run["model_name"] == MODEL and run["response"] == text
        meta = run["metadata"]
        assert meta["upload"] == {
            "bytes": len(audio),
            "content_type": "audio/wav",
            "filename": name,
            "language": language,
            "response_format": "json" if language is None else "text",
        }
        assert meta["request"]["options"] == {"temperature": 0}
        system, user = meta["messages"]
        assert system["role"] == "system" and system["content"].startswith(INSTRUCTION)
        assert user["role"] == "user" and "images" not in user
        assert meta["prompt_eval_count"] > 0 and meta["eval_count"] > 0
        # the audio itself is not kept anywhere in the stored run
        assert base64.b64encode(audio)[:64].decode() not in json.dumps(run)
    assert runs["short.wav"]["metadata"]["messages"][0]["content"] == (
        f"{INSTRUCTION} The audio is in fr. Context: Names: Ada, Grace."
    )


def test_the_audio_is_kept_when_a_setting_asks_for_it(emulator: str, tmp_path: Path) -> None:
    settings = gateway_settings([emulator], tmp_path, store_transcription_audio=True)
    audio = wav_bytes(0.5)
    with serving_in_thread(create_app(settings)) as url:
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        sdk.audio.transcriptions.create(model=MODEL, file=("a.wav", audio, "audio/wav"))
        (run,) = stored(url, surface="transcription")
    assert run["metadata"]["messages"][1]["images"] == [base64.b64encode(audio).decode()]


def test_bad_uploads_get_a_clear_400_and_reach_no_backend(gateway: str, emulator: str) -> None:
    audio = wav_bytes(0.5)
    model = ("model", MODEL.encode(), None)
    cases = [
        # cut off in the middle of the file: no closing boundary
        (multipart(model, ("file", audio[: len(audio) // 2], "a.wav"), end=False)[:-2],
         "the multipart body ended in the middle of the file 'file'"),
        (multipart(model, ("file", b"", "empty.wav")), "audio file is empty"),
        (multipart(("file", audio, "a.wav")), "model is required"),
        (multipart(("model", b"", None), ("file", audio, "a.wav")), "model is required"),
        (multipart(model), "file is required"),
        (multipart(model, ("file", audio, "a.wav"), ("response_format", b"srt", None)),
         "response_format 'srt' is not supported: use json or text"),
        (multipart(model, ("prompt", b"a\x00b", None), ("file", audio, "a.wav")),
         "form field 'prompt' contains a NUL character"),
        (multipart(model, ("prompt", b"x" * ((1 << 20) + 1), None), ("file", audio, "a.wav")),
         "the form's text fields are longer than 1048576 bytes"),
        (multipart(model, ("file", audio, "a.wav"), end=False) + f"--{BOUNDARY}\r\n".encode(),
         "the multipart body ended before the form's closing boundary"),
    ]  # fmt: skip
    for body, message in cases:
        reply = post_form(gateway, body)
        assert reply.status_code == 400, (message, reply.text)
        error = error_of(reply)
        assert message in error["message"] and error["type"] == "invalid_request_error"
    not_a_form = httpx.post(
        f"{gateway}/v1/audio/transcriptions", json={"model": MODEL, "file": "x"}, timeout=10
    )
    assert not_a_form.status_code == 400
    assert "multipart/form-data" in error_of(not_a_form)["message"]
    assert "/api/chat" not in received(emulator)
    assert stored(gateway) == []


def test_a_connection_closed_mid_file_stores_nothing_and_breaks_nothing(
    client: openai.OpenAI, gateway: str, emulator: str
) -> None:
    """The client goes away mid-upload (its declared length never reached): no run, nothing
    sent on, and the gateway answers the next request."""
    import socket

    body = multipart(("model", MODEL.encode(), None), ("file", wav_bytes(1.0), "a.wav"))
    host, port = gateway.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = (
            f"POST /v1/audio/transcriptions HTTP/1.1\r\nHost: {host}\r\n"
            f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        sock.sendall(head.encode() + body[: len(body) // 2])
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(65536)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert client.audio.transcriptions.create(model=MODEL, file=("b.wav", wav_bytes(0.2))).text
    assert received(emulator).count("/api/chat") == 1
    assert len(stored(gateway)) == 1


# -- speech ------------------------------------------------------------------------------


def test_speech_comes_back_as_a_wav_and_is_stored_once(
    client: openai.OpenAI, gateway: str, emulator: str
) -> None:
    text = "Hello from the gateway, in a voice."
    speech = client.audio.speech.create(
        model=MODEL, input=text, voice="alloy", response_format="wav"
    )
    audio = speech.content
    assert speech.response.headers["content-type"] == "audio/wav"
    seconds = wav_seconds(audio)
    assert seconds > 0 and seconds == pytest.approx(len(text) * SECONDS_PER_CHARACTER)
    # relayed as the backend sent it, byte for byte
    direct = httpx.post(
        f"{emulator}/v1/audio/speech",
        json={"model": MODEL, "input": text, "voice": "alloy", "response_format": "wav"},
        timeout=10,
    )
    assert direct.content == audio
    (run,) = stored(gateway, surface="speech")
    assert len(stored(gateway)) == 1
    assert (run["kind"], run["status"], run["model_name"]) == ("speech", "succeeded", MODEL)
    assert run["prompt"] == text and run["response"] == ""
    assert run["metadata"]["speech"] == {
        "request": {"voice": "alloy", "response_format": "wav"},
        "bytes": len(audio),
        "content_type": "audio/wav",
    }
    assert run["backend"] == emulator


def test_speech_streams_as_it_comes(client: openai.OpenAI) -> None:
    text = "x" * 400  # 20 s of audio: the emulator sends it in pieces
    with client.audio.speech.with_streaming_response.create(
        model=MODEL, input=text, voice="alloy", response_format="wav"
    ) as reply:
        pieces = list(reply.iter_bytes(chunk_size=None))  # type: ignore[arg-type]
    audio = b"".join(pieces)
    assert len(pieces) > 1 and wav_seconds(audio) == pytest.approx(20.0)


async def _without_speech(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """An Ollama of before the speech door: it has the model, and answers gin's 404 for
    any path it does not serve."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    if scope["path"] == "/api/tags":
        body, kind = json.dumps({"models": [{"name": MODEL, "model": MODEL}]}).encode(), b"json"
        status = 200
    else:
        body, kind, status = b"404 page not found", b"text/plain", 404
    headers = [(b"content-type", b"application/" + kind if kind == b"json" else kind)]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def test_a_backend_without_the_speech_door_answers_its_own_404(tmp_path: Path) -> None:
    with (
        serving_in_thread(_without_speech) as old,
        serving_in_thread(create_app(gateway_settings([old], tmp_path))) as url,
    ):
        sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            sdk.audio.speech.create(model=MODEL, input="hi", voice="alloy")
        raw = httpx.post(f"{url}/v1/audio/speech", json={"model": MODEL, "input": "hi"})
        assert (raw.status_code, raw.content) == (404, b"404 page not found")
        assert raw.headers["content-type"] == "text/plain"
        runs = stored(url, surface="speech")
    assert len(runs) == 2 and {r["status"] for r in runs} == {"failed"}
    assert runs[0]["error_message"] == "HTTP 404: 404 page not found"
    assert runs[0]["metadata"]["error_status"] == 404


def test_speech_without_a_model_is_a_400(gateway: str, emulator: str) -> None:
    for body in ({"input": "hi"}, {"model": "", "input": "hi"}, [1]):
        reply = httpx.post(f"{gateway}/v1/audio/speech", json=body, timeout=10)
        assert reply.status_code == 400
        assert error_of(reply)["type"] == "invalid_request_error"
    assert "/v1/audio/speech" not in received(emulator)


# -- keys, allowlists and usage ----------------------------------------------------------


@pytest.fixture
def keyed(emulator: str, tmp_path: Path) -> Iterator[str]:
    settings = gateway_settings([emulator], tmp_path, admin_key=ADMIN_KEY, key_cache_seconds=0)
    with serving_in_thread(create_app(settings)) as url:
        yield url


def new_key(gateway: str, **body: Any) -> str:
    reply = httpx.post(
        f"{gateway}/gateway/keys",
        json=body,
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        timeout=10,
    )
    assert reply.status_code == 201, reply.text
    key: str = reply.json()["key"]
    return key


def test_a_key_whose_allowlist_lacks_the_model_gets_403_on_both(keyed: str, emulator: str) -> None:
    key = new_key(keyed, name="text-only", scope="user", models=[TEXT_MODEL])
    sdk = openai.OpenAI(base_url=f"{keyed}/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        sdk.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(1.0), "audio/wav"))
    assert f"may not use model '{MODEL}'" in refused.value.message
    with pytest.raises(openai.PermissionDeniedError):
        sdk.audio.speech.create(model=MODEL, input="hi", voice="alloy")
    # the model after the file: still refused before anything is sent on
    body = multipart(("file", wav_bytes(1.0), "a.wav"), ("model", MODEL.encode(), None))
    late = httpx.post(
        f"{keyed}/v1/audio/transcriptions",
        content=body,
        headers={
            "Content-Type": f"multipart/form-data; boundary={BOUNDARY}",
            "Authorization": f"Bearer {key}",
        },
        timeout=10,
    )
    assert late.status_code == 403 and error_of(late)["type"] == "permission_error"
    paths = received(emulator)
    assert "/api/chat" not in paths and "/v1/audio/speech" not in paths
    unauthenticated = openai.OpenAI(base_url=f"{keyed}/v1", api_key="ogw_wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        unauthenticated.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(0.1)))


def test_a_transcription_is_a_run_of_the_key_counted_in_its_usage(keyed: str) -> None:
    """The run is filed under the key, counted in the usage ledger for the key and its
    team, and charged to its token limit, as any run of the core is."""
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    team = httpx.post(f"{keyed}/gateway/teams", json={"name": "voices"}, headers=admin)
    assert team.status_code == 201, team.text
    key = new_key(
        keyed, name="voice", scope="user", models=[MODEL], tokens_per_minute=10, team="voices"
    )
    sdk = openai.OpenAI(base_url=f"{keyed}/v1", api_key=key, max_retries=0)
    sdk.audio.transcriptions.create(model=MODEL, file=("a.wav", wav_bytes(1.0), "audio/wav"))
    (run,) = stored(keyed, key=ADMIN_KEY, surface="transcription")
    assert run["principal"] == "voice"
    used = run["metadata"]["prompt_eval_count"] + run["metadata"]["eval_count"]
    assert used > 10
    for group, name in (("key", "voice"), ("team", "voices"), ("surface", "transcription")):
        usage = httpx.get(f"{keyed}/gateway/usage", params={"group_by": group}, headers=admin)
        assert usage.status_code == 200, usage.text
        (row,) = [r for r in usage.json()["rows"] if r[group] == name]
        assert (row["requests"], row["prompt_tokens"] + row["output_tokens"]) == (1, used)
    with pytest.raises(openai.RateLimitError) as limited:
        sdk.audio.transcriptions.create(model=MODEL, file=("b.wav", wav_bytes(1.0), "audio/wav"))
    assert "tokens per minute" in limited.value.message


# -- failover ----------------------------------------------------------------------------


@contextlib.contextmanager
def slow_emulator() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """An emulator process whose answers start 3 s after a request (its URL and process,
    to kill)."""
    port = free_port()
    args = [sys.executable, "-m", "app.cli", "emulator", "--host", "127.0.0.1", "--port",
            str(port), "--models", MODEL, "--first-token-delay-ms", "3000"]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/") as proc:
        yield url, proc


RUN_PATHS = {"/api/chat": "transcription", "/v1/audio/speech": "speech"}
"""What an emulator receives for each kind of audio request."""


async def arrived(http: httpx.AsyncClient, emulator: str) -> list[str]:
    state = (await http.get(f"{emulator}/_emulator/state")).json()
    return [r["path"] for r in state["received"] if r["path"] in RUN_PATHS]


def test_a_backend_killed_before_it_answers_fails_over(tmp_path: Path) -> None:
    """Transcriptions and speech in flight on two backends, one SIGKILLed before it has
    answered any: every request is answered by the other, each run stored once.

    The pool places each request by expected wait, so the first six of each kind may leave
    one kind off the victim (the transcriptions' longer expected work there sends every
    speech to the other): once all sent have arrived, one more of a kind the victim lacks
    is sent, until it holds both (each goes where the wait is shorter, which is then the
    victim)."""
    with slow_emulator() as (first, victim), slow_emulator() as (second, _):
        settings = gateway_settings([first, second], tmp_path, request_timeout=60)
        with serving_in_thread(create_app(settings)) as url:
            sdk = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
            texts: list[asyncio.Task[Any]] = []
            speeches: list[asyncio.Task[Any]] = []

            def send(kind: str) -> None:
                if kind == "transcription":
                    i = len(texts)
                    audio = (f"{i}.wav", wav_bytes(0.5 + i / 10), "audio/wav")
                    texts.append(
                        asyncio.create_task(
                            sdk.audio.transcriptions.create(model=MODEL, file=audio)
                        )
                    )
                else:
                    line = f"line {len(speeches)}"
                    speeches.append(
                        asyncio.create_task(
                            sdk.audio.speech.create(model=MODEL, input=line, voice="alloy")
                        )
                    )

            async def scenario() -> tuple[list[str], list[bytes]]:
                for _ in range(6):
                    send("transcription")
                for _ in range(6):
                    send("speech")
                async with httpx.AsyncClient(timeout=5) as http, asyncio.timeout(30):
                    while True:
                        on_victim = await arrived(http, first)
                        missing = set(RUN_PATHS) - set(on_victim)
                        if not missing:
                            break
                        everywhere = len(on_victim) + len(await arrived(http, second))
                        if everywhere == len(texts) + len(speeches):
                            assert everywhere < 20, f"the victim got none of {missing}"
                            send(RUN_PATHS[min(missing)])
                        await asyncio.sleep(0.05)
                victim.send_signal(signal.SIGKILL)
                done_texts = [(await t).text for t in texts]
                done_speech = [(await s).content for s in speeches]
                await sdk.close()
                return done_texts, done_speech

            texts_done, spoken_audio = asyncio.run(scenario())
            transcriptions = stored(url, surface="transcription", limit=50)
            spoken = stored(url, surface="speech", limit=50)
    assert all(t.startswith("Emulated transcript of") for t in texts_done)
    assert [wav_seconds(s) for s in spoken_audio] == [
        pytest.approx(len(f"line {i}") * SECONDS_PER_CHARACTER) for i in range(len(speeches))
    ]
    assert len(transcriptions) == len(texts) and len(spoken) == len(speeches)
    for runs in (transcriptions, spoken):
        moved = [r for r in runs if r["metadata"].get("failed_over_from")]
        assert moved, "no request was on the killed backend"
        assert all(r["backend"] == second and r["success"] for r in moved)
        assert all(r["metadata"]["failed_over_from"][0].startswith(first) for r in moved)


# -- the upload limit --------------------------------------------------------------------


def rss_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for process {pid}")


@pytest.fixture
def served_gateway(emulator: str, tmp_path: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """`ollama-gateway serve` in a process of its own (its memory measured from /proc)."""
    port = free_port()
    env = {
        "GATEWAY_BACKENDS": emulator,
        "GATEWAY_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/served.db",
        "GATEWAY_SPOOL_DIR": str(tmp_path / "spool"),
        "GATEWAY_LOG_LEVEL": "warning",
    }
    args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port)]
    url = f"http://127.0.0.1:{port}"
    with running_process(args, url + "/healthz", env=env, deadline_s=90) as proc:
        yield url, proc


def test_a_30_mb_upload_is_413_without_the_gateway_holding_it(
    served_gateway: tuple[str, subprocess.Popen[bytes]], emulator: str
) -> None:
    url, proc = served_gateway
    sdk = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    sdk.audio.transcriptions.create(model=MODEL, file=("warm.wav", wav_bytes(0.5)))  # warm up
    upload_kib = 30 * 1024
    big = wav_bytes(0.1) + b"\0" * (upload_kib * 1024)
    Path(f"/proc/{proc.pid}/clear_refs").write_text("5")  # the peak RSS starts again from now
    before = rss_kib(proc.pid, "VmRSS")

    # Declared length: refused before a byte of it is read.
    with pytest.raises(openai.APIStatusError) as too_big:
        sdk.audio.transcriptions.create(model=MODEL, file=("big.wav", big, "audio/wav"))
    assert too_big.value.status_code == 413
    assert too_big.value.body == {
        "message": "the upload is larger than the limit of 26214400 bytes",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }

    # No length (chunked): streamed to disk and counted, refused once past the limit.
    def chunked() -> Iterator[bytes]:
        yield multipart(("model", MODEL.encode(), None), end=False)
        yield f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; '.encode()
        yield b'filename="big.wav"\r\nContent-Type: audio/wav\r\n\r\n'
        for start in range(0, len(big), 1 << 20):
            yield big[start : start + (1 << 20)]
        yield f"\r\n--{BOUNDARY}--\r\n".encode()

    reply = httpx.post(
        f"{url}/v1/audio/transcriptions",
        content=chunked(),
        headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"},
        timeout=60,
    )
    assert reply.status_code == 413, reply.text
    assert "larger than the limit of 26214400 bytes" in error_of(reply)["message"]

    peak = rss_kib(proc.pid, "VmHWM")
    grown = peak - before
    print(f"RSS before {before} KiB, peak after two 30 MiB uploads {peak} KiB (+{grown} KiB)")
    assert grown < upload_kib // 3, f"the gateway's RSS grew by {grown} KiB"
    assert received(emulator).count("/api/chat") == 1  # the warm-up only
    alive = sdk.audio.transcriptions.create(model=MODEL, file=("after.wav", wav_bytes(0.5)))
    assert alive.text


def test_an_upload_under_the_limit_is_transcribed(gateway: str) -> None:
    """20 MiB of WAV (a little over 10 minutes at 16 kHz), well within 25 MiB."""
    sdk = openai.OpenAI(base_url=f"{gateway}/v1", api_key="unused", max_retries=0)
    audio = wav_bytes(655.0)
    reply = sdk.audio.transcriptions.create(model=MODEL, file=("long.wav", audio, "audio/wav"))
    assert reply.text == "Emulated transcript of 655.00 seconds of audio."
