"""A Python SDK generated from the committed spec works against a running gateway."""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.api.conftest import sse_events

ROOT = Path(__file__).resolve().parents[2]
SPEC = ROOT / "openapi" / "openapi.json"


@pytest.fixture(scope="module")
def sdk(tmp_path_factory: pytest.TempPathFactory) -> ModuleType:
    generator = shutil.which("openapi-python-client") or str(
        Path(sys.executable).parent / "openapi-python-client"
    )
    out = tmp_path_factory.mktemp("sdk")
    subprocess.run(
        [generator, "generate", "--path", str(SPEC), "--meta", "none", "--output-path",
         str(out / "gateway_sdk")],
        check=True,
        capture_output=True,
        timeout=120,
    )  # fmt: skip
    sys.path.insert(0, str(out))
    try:
        return importlib.import_module("gateway_sdk")
    finally:
        sys.path.remove(str(out))


def _api(sdk: ModuleType, tag: str, name: str) -> Any:
    return importlib.import_module(f"gateway_sdk.api.{tag}.{name}")


def test_generate_chat_and_stream_through_the_sdk(sdk: ModuleType, gateway_server: str) -> None:
    models = importlib.import_module("gateway_sdk.models")
    client = sdk.Client(base_url=gateway_server, raise_on_unexpected_status=True, timeout=30)
    with client as c:
        result = _api(sdk, "generate", "generate").sync(
            client=c,
            body=models.GenerateRequest(
                model="llama3.1:8b",
                prompt="Explain recursion.",
                options=models.OptionsIn(max_tokens=5),
            ),
        )
        assert isinstance(result, models.ResultOut), result
        assert result.success and result.tokens_used == 5

        chat = _api(sdk, "chat", "chat").sync(
            client=c,
            body=models.ChatRequest(
                model="llama3.1:8b",
                messages=[
                    models.PromptMessage(role=models.PromptMessageRole.USER, content="Hello")
                ],
            ),
        )
        assert isinstance(chat, models.ResultOut) and chat.prompt == "Hello"

        missing = _api(sdk, "generate", "generate").sync_detailed(
            client=c, body=models.GenerateRequest(model="nope:1b", prompt="x")
        )
        assert missing.status_code == 404
        assert isinstance(missing.parsed, models.Problem)

        streamed = _api(sdk, "generate", "generate_stream").sync_detailed(
            client=c, body=models.GenerateRequest(model="llama3.1:8b", prompt="Explain recursion.")
        )
        events = sse_events(streamed.content.decode())
        name, data = events[-1]
        assert name == "result"
        final = models.ResultOut.from_dict(json.loads(data))
        assert final.success and final.response

        page = _api(sdk, "results", "list_results").sync(client=c, model="llama3.1:8b", limit=10)
        assert isinstance(page, models.ResultPage)
        listed = {item.id for item in page.items}
        assert {result.id, final.id} <= listed and page.next_cursor is None
        stored = _api(sdk, "results", "get_result").sync(result_id=final.id, client=c)
        assert isinstance(stored, models.StoredResult) and stored.response == final.response
