"""Bodies the emulator cannot read: a 400 with `{"error": ...}` in Go's decoder words, never
a crash. Text that is not Unicode (bytes that are not UTF-8, lone surrogate escapes) is
refused too (Ollama's Go decoder would put U+FFFD in its place; the emulator refuses it)."""

from __future__ import annotations

import json
import socket
from urllib.parse import urlsplit

import httpx
import pytest

JSON_CT = "application/json; charset=utf-8"
MODEL = "llama3.1:8b"
EMBED = "nomic-embed-text"

# Every endpoint that reads a JSON body, with a body whose one string field is `{text}`.
ENDPOINTS = [
    ("POST", "/api/generate", '{"model":"llama3.1:8b","prompt":"a{text}b","stream":false}'),
    ("POST", "/api/generate", '{"model":"llama3.1:8b","prompt":"hi","system":"{text}"}'),
    ("POST", "/api/chat",
     '{"model":"llama3.1:8b","messages":[{"role":"user","content":"x{text}"}],"stream":false}'),
    ("POST", "/api/chat", '{"model":"llama3.1:8b","messages":[{"role":"user","content":"hi"}],'
     '"options":{"stop":["{text}"]}}'),
    ("POST", "/api/embed", '{"model":"nomic-embed-text","input":["ok","{text}"]}'),
    ("POST", "/api/embeddings", '{"model":"nomic-embed-text","prompt":"{text}"}'),
    ("POST", "/api/show", '{"model":"{text}"}'),
    ("POST", "/api/pull", '{"model":"x{text}:1b"}'),
    ("DELETE", "/api/delete", '{"model":"{text}"}'),
    ("POST", "/api/copy", '{"source":"llama3.1:8b","destination":"a{text}"}'),
    ("POST", "/_emulator/faults", '{"fail_message":"{text}","fail_next":1}'),
]  # fmt: skip
IDS = [f"{method} {path} #{i}" for i, (method, path, _) in enumerate(ENDPOINTS)]


@pytest.fixture
def api(emulator_url: str) -> httpx.Client:
    return httpx.Client(base_url=emulator_url, timeout=10)


def send(api: httpx.Client, method: str, path: str, body: bytes) -> httpx.Response:
    return api.request(method, path, content=body, headers={"content-type": "application/json"})


def assert_refused(reply: httpx.Response, error: str) -> None:
    assert reply.status_code == 400, reply.text
    assert reply.headers["content-type"] == JSON_CT
    assert reply.json() == {"error": error}


@pytest.mark.parametrize(("method", "path", "template"), ENDPOINTS, ids=IDS)
def test_bytes_that_are_not_utf8_are_a_400(
    api: httpx.Client, method: str, path: str, template: str
) -> None:
    body = template.replace("{text}", "\x00").encode().replace(b"\x00", b"\xff\xfe")
    assert_refused(send(api, method, path, body), "invalid character '\\xff' in string literal")


@pytest.mark.parametrize(("method", "path", "template"), ENDPOINTS, ids=IDS)
def test_a_lone_surrogate_is_a_400(
    api: httpx.Client, method: str, path: str, template: str
) -> None:
    body = template.replace("{text}", "\\ud800").encode()
    assert_refused(send(api, method, path, body), "invalid character '\\ud800' in string literal")


def test_refused_bodies_change_nothing(api: httpx.Client) -> None:
    send(api, "POST", "/_emulator/faults", b'{"fail_next":3,"fail_message":"\\udfff"}')
    send(api, "POST", "/api/generate", b'{"model":"%s","prompt":"\\ud800"}' % MODEL.encode())
    state = api.get("/_emulator/state").json()
    assert state["faults"]["fail_next"] == 0 and state["loaded"] == []


def test_a_lone_surrogate_in_a_key_or_a_deep_value_is_a_400(api: httpx.Client) -> None:
    key = b'{"model":"%s","prompt":"hi","options":{"\\udc00":1}}' % MODEL.encode()
    assert_refused(send(api, "POST", "/api/generate", key),
                   "invalid character '\\udc00' in string literal")  # fmt: skip
    deep = b'{"model":"%s","prompt":"hi","format":{"a":[[{"b":"\\udbff!"}]]}}' % MODEL.encode()
    assert_refused(send(api, "POST", "/api/generate", deep),
                   "invalid character '\\udbff' in string literal")  # fmt: skip


def test_surrogate_pairs_and_other_scripts_are_fine(api: httpx.Client) -> None:
    body = {"model": MODEL, "prompt": "😀 \\ud83d é ß 中文", "stream": False}
    escaped = json.dumps(body).encode()  # ASCII: the emoji as a \ud83d\ude00 pair
    assert send(api, "POST", "/api/generate", escaped).status_code == 200
    raw = json.dumps(body, ensure_ascii=False).encode()  # UTF-8 bytes
    assert send(api, "POST", "/api/generate", raw).status_code == 200
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "né 😀"}], "stream": False}
    assert api.post("/api/chat", json=chat).status_code == 200


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xff", "invalid character '\u00ff' looking for beginning of value"),
        (b"\xef\xbb\xbf{}", "invalid character '\u00ef' looking for beginning of value"),
        (b'{"model":\xc3\xa9}', "invalid character '\u00c3' looking for beginning of value"),
        (b'{"model":"a\x01"}', "invalid character '\\x01' in string literal"),
        (b'{"model":"\\q"}', "invalid character 'q' in string escape code"),
        (b'{"model":"\\u12x4"}', "invalid character 'x' in \\u hexadecimal character escape"),
        (b'{"model":"abc', "unexpected EOF"),
        (b'{"options":{"stop":["a" "b"]}}', "invalid character '\"' after array element"),
        (b'{"model":"a" "prompt":"b"}', "invalid character '\"' after object key:value pair"),
        (b'{"options":{"temperature":NaN}}', "invalid character 'N' looking for beginning of value"),
        (b'{"options":{"seed":-Infinity}}', "invalid character 'I' in numeric literal"),
    ],
)  # fmt: skip
def test_malformed_bodies_get_gos_decoder_text(api: httpx.Client, body: bytes, error: str) -> None:
    assert_refused(send(api, "POST", "/api/generate", body), error)


def raw_exchange(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """One HTTP/1.1 request and its reply on an open socket (the reply has a content-length)."""
    sock.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        assert chunk, "connection closed before the reply's head"
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (h.partition(":") for h in header_lines)}
    length = int(headers["content-length"])
    while len(rest) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the reply's body"
        rest += chunk
    return int(status_line.split()[1]), headers, rest[:length]


def request_bytes(method: str, path: str, host: str, body: bytes = b"") -> bytes:
    head = (f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


@pytest.mark.parametrize("opener", [b"[", b'{"a":'])
def test_a_very_deep_body_is_a_400_and_the_connection_stays_usable(
    emulator_url: str, opener: bytes
) -> None:
    depth = 100_000
    closer = b"]" if opener == b"[" else b"}"
    nested = opener * depth + b"1" + closer * depth
    split = urlsplit(emulator_url)
    host, port = split.hostname or "127.0.0.1", split.port or 80
    with socket.create_connection((host, port), timeout=10) as sock:
        for path, body in [
            ("/api/chat", b'{"model":"%s","messages":%s}' % (MODEL.encode(), nested)),
            ("/api/generate", nested),
            ("/_emulator/faults", nested),
        ]:
            status, headers, reply = raw_exchange(sock, request_bytes("POST", path, host, body))
            assert (status, headers["content-type"]) == (400, JSON_CT)
            assert json.loads(reply) == {
                "error": f"invalid character '{opener[:1].decode()}' exceeded max depth"
            }
            assert headers.get("connection", "").lower() != "close"
        # the same connection answers the next request
        status, _, reply = raw_exchange(sock, request_bytes("GET", "/api/version", host))
        assert status == 200 and "version" in json.loads(reply)
    with httpx.Client(base_url=emulator_url, timeout=10) as api:
        answer = api.post("/api/generate", json={"model": MODEL, "prompt": "hi", "stream": False})
        assert answer.status_code == 200


def test_nesting_within_the_limit_is_read(api: httpx.Client) -> None:
    nested: object = "deep"
    for _ in range(200):  # 400 levels, within MAX_DEPTH
        nested = {"a": [nested]}
    body = {"model": MODEL, "prompt": "hi", "stream": False, "options": {"x": nested}}
    assert api.post("/api/generate", json=body).status_code == 200
