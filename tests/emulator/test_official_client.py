"""The official `ollama` Python client works against the emulator unchanged."""

from __future__ import annotations

import ollama


def test_the_official_client_drives_every_endpoint(emulator_url: str) -> None:
    client = ollama.Client(host=emulator_url)
    names = {m.model for m in client.list().models}
    assert "llama3.1:8b" in names

    statuses = [p.status for p in client.pull("phi3:mini", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert client.pull("smollm2:135m").status == "success"

    reply = client.generate(model="llama3.1:8b", prompt="Hello", options={"num_predict": 5})
    assert reply.done and reply.eval_count == 5 and reply.done_reason == "length"
    pieces = list(client.generate(model="llama3.1:8b", prompt="Hello", stream=True))
    assert pieces[-1].done and "".join(p.response for p in pieces[:-1])

    chat = client.chat(model="llama3.1:8b", messages=[{"role": "user", "content": "Hi"}])
    assert chat.message.role == "assistant" and chat.message.content

    shown = client.show("llama3.1:8b")
    assert shown.details is not None and shown.details.family == "llama"
    assert shown.capabilities is not None and "completion" in shown.capabilities

    embedded = client.embed(model="nomic-embed-text", input=["a", "b"])
    assert len(embedded.embeddings) == 2

    assert any(m.model == "llama3.1:8b" for m in client.ps().models)
    client.copy("llama3.1:8b", "copy:v1")
    client.delete("copy:v1")
    try:
        client.generate(model="nope:1b", prompt="x")
    except ollama.ResponseError as exc:
        assert exc.status_code == 404 and "nope:1b" in exc.error
    else:
        raise AssertionError("an unknown model must raise ResponseError")


async def test_the_async_client_streams_a_chat(emulator_url: str) -> None:
    client = ollama.AsyncClient(host=emulator_url)
    parts = [
        part.message.content
        async for part in await client.chat(
            model="llama3.1:8b", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    ]
    assert "".join(parts)
