"""Model output is untrusted: a stand-in backend answers a chat with HTML and a script,
and the console shows them as text, creating no element and running nothing. Also: a
gateway serving anonymous loopback clients needs no sign-in."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import answer_lifespan, serving_in_thread

MODEL = "mischief:latest"
PIECES = [
    "Here: ",
    "<img src=x onerror=",
    '"window.__pwned=1">',
    " and <script>window.__pwned=2</script>",
    ' <svg onload="window.__pwned=3"></svg>',
    " done.",
]
REPLY = "".join(PIECES)


async def mischief_backend(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in Ollama with one model whose replies, streamed in pieces, are HTML."""
    if scope["type"] == "lifespan":
        await answer_lifespan(receive, send)
        return
    request = b""
    while True:
        message = await receive()
        request += message.get("body", b"")
        if not message.get("more_body"):
            break
    json_headers = [(b"content-type", b"application/json; charset=utf-8")]
    if scope["path"] in ("/api/chat", "/api/generate"):
        chat = scope["path"] == "/api/chat"

        def line(text: str, done: bool) -> bytes:
            body: dict[str, Any] = {"model": MODEL, "created_at": "2026-11-30T00:00:00Z"}
            if chat:
                body["message"] = {"role": "assistant", "content": text}
            else:
                body["response"] = text
            body["done"] = done
            if done:
                body |= {"done_reason": "stop", "eval_count": len(PIECES), "prompt_eval_count": 3,
                         "eval_duration": 60_000_000, "total_duration": 80_000_000}  # fmt: skip
            return (json.dumps(body) + "\n").encode()

        if not json.loads(request or b"{}").get("stream", True):
            await send({"type": "http.response.start", "status": 200, "headers": json_headers})
            await send({"type": "http.response.body", "body": line(REPLY, True)})
            return
        ndjson = [(b"content-type", b"application/x-ndjson")]
        await send({"type": "http.response.start", "status": 200, "headers": ndjson})
        for piece in PIECES:
            await send(
                {"type": "http.response.body", "body": line(piece, False), "more_body": True}
            )
        await send({"type": "http.response.body", "body": line("", True)})
        return
    if scope["path"] == "/api/tags":
        body: Any = {"models": [{"name": MODEL, "model": MODEL, "size": 1}]}
    else:
        body = {"models": []} if scope["path"] == "/api/ps" else {"version": "0.33.0"}
    await send({"type": "http.response.start", "status": 200, "headers": json_headers})
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


@pytest.fixture
def anonymous_gateway(tmp_path: Path) -> Iterator[str]:
    """A gateway on loopback with no key: anonymous clients are served (as admins)."""
    with serving_in_thread(mischief_backend) as backend:
        settings = gateway_settings([backend], tmp_path)
        with serving_in_thread(create_app(settings)) as url:
            yield url


NO_HARM = """() => ({
  pwned: window.__pwned ?? null,
  images: document.querySelectorAll('img').length,
  svgsInMain: document.querySelectorAll('main svg').length,
  scripts: [...document.scripts].map((s) => s.src || 'inline:' + s.textContent),
})"""


def test_html_in_a_reply_is_shown_as_text_and_runs_nothing(
    page: Any, anonymous_gateway: str
) -> None:
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(f"{anonymous_gateway}/ui/")
    page.wait_for_url("**/ui/chat")  # no sign-in: anonymous loopback clients need no key
    assert page.locator("#who").text_content().startswith("anonymous")  # type: ignore[union-attr]
    page.get_by_label("Model").select_option(MODEL)
    page.get_by_label("Prompt").fill("Say something nasty.")
    page.get_by_role("button", name="Send").click()
    page.locator(".turn.done").wait_for()
    answer = page.get_by_test_id("answer").last
    assert answer.text_content() == REPLY
    assert answer.evaluate("(el) => el.children.length") == 0
    state = page.evaluate(NO_HARM)
    assert state == {
        "pwned": None,
        "images": 0,
        "svgsInMain": 0,
        "scripts": [f"{anonymous_gateway}/ui/assets/console.js"],
    }
    # The stored run's detail view too.
    page.locator(".turn .stats a").last.click()
    page.wait_for_url("**/ui/results/*")
    page.get_by_test_id("answer").wait_for()
    assert page.get_by_test_id("answer").text_content() == REPLY
    page.wait_for_timeout(300)
    assert page.evaluate(NO_HARM)["pwned"] is None
    assert page.evaluate(NO_HARM)["images"] == 0
    assert not dialogs
