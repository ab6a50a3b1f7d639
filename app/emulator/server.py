"""The emulator's HTTP server: a raw ASGI app that answers like Ollama does.

Raw ASGI (no framework) keeps it fast and in full control of the bytes: status codes,
content types, key order and NDJSON flushing are Ollama's own (see the reference in
`shared/reference/ollama-api.md`). It shares no code with the gateway.
"""

from __future__ import annotations

import asyncio
import copy
import hashlib
import json
import logging
import math
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

from app.emulator import decoding, text
from app.emulator.catalog import lookup
from app.emulator.config import EmulatorConfig
from app.emulator.errors import CutConnection, OllamaError, go_quote, json_type
from app.emulator.llama_engine import GenerationStats, LlamaEngine, load_engine
from app.emulator.names import ModelName, parse
from app.emulator.state import Installed, State
from app.emulator.wire import dumps, local_time, utc_now

logger = logging.getLogger("ollama_emulator")

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
JSON = dict[str, Any]

JSON_TYPE = b"application/json; charset=utf-8"
NDJSON_TYPE = b"application/x-ndjson"
TEXT_TYPE = b"text/plain; charset=utf-8"

INT_OPTIONS = {
    "num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
    "num_gpu", "main_gpu", "num_thread", "draft_num_predict",
}  # fmt: skip
FLOAT_OPTIONS = {
    "top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
    "frequency_penalty",
}  # fmt: skip
BOOL_OPTIONS = {"use_mmap", "numa", "low_vram", "vocab_only", "use_mlock", "penalize_newline"}
THINK_LEVELS = {"high", "medium", "low", "max"}

# Go struct field types of the request bodies, for the decoder's type errors.
FIELD_TYPES: dict[str, dict[str, str]] = {
    "GenerateRequest": {
        "model": "string", "prompt": "string", "suffix": "string", "system": "string",
        "template": "string", "stream": "bool", "raw": "bool", "options": "object",
        "images": "array", "context": "array", "truncate": "bool", "shift": "bool",
        "logprobs": "bool", "top_logprobs": "int",
    },
    "ChatRequest": {
        "model": "string", "messages": "array", "tools": "array", "stream": "bool",
        "options": "object", "truncate": "bool", "shift": "bool", "logprobs": "bool",
        "top_logprobs": "int",
    },
    "EmbedRequest": {"model": "string", "truncate": "bool", "dimensions": "int",
                     "options": "object"},
    "EmbeddingRequest": {"model": "string", "prompt": "string", "options": "object"},
    "ShowRequest": {"model": "string", "name": "string", "verbose": "bool"},
    "PullRequest": {"model": "string", "name": "string", "stream": "bool", "insecure": "bool"},
    "DeleteRequest": {"model": "string", "name": "string"},
    "CopyRequest": {"source": "string", "destination": "string"},
}  # fmt: skip
_GO_ACCEPTS = {
    "string": {"string", "null"},
    "bool": {"bool", "null"},
    "int": {"number", "null"},
    "object": {"object", "null"},
    "array": {"array", "null"},
}
_GO_TYPE_NAMES = {
    "string": "string",
    "bool": "bool",
    "int": "int",
    "object": "map[string]interface {}",
    "array": "[]",
}


class Emulator:
    """One emulated Ollama server (an ASGI app)."""

    def __init__(self, config: EmulatorConfig) -> None:
        self.config = config
        self.engine: LlamaEngine | None = None
        if config.engine == "llama-cpp":
            self.engine = load_engine(config)
        elif config.engine != "filler":
            raise ValueError(f"unknown engine {config.engine!r} (filler or llama-cpp)")
        self.state = State.fresh(config)
        self.routes: dict[str, dict[str, Callable[[Scope, bytes, Send], Awaitable[None]]]] = {
            "/": {"GET": self.root, "HEAD": self.root},
            "/api/version": {"GET": self.version, "HEAD": self.version},
            "/api/tags": {"GET": self.tags, "HEAD": self.tags},
            "/api/ps": {"GET": self.ps},
            "/api/show": {"POST": self.show},
            "/api/pull": {"POST": self.pull},
            "/api/delete": {"DELETE": self.delete},
            "/api/copy": {"POST": self.copy},
            "/api/generate": {"POST": self.generate},
            "/api/chat": {"POST": self.chat},
            "/api/embed": {"POST": self.embed},
            "/api/embeddings": {"POST": self.embeddings},
            "/_emulator/faults": {"POST": self.set_faults},
            "/_emulator/reset": {"POST": self.reset},
            "/_emulator/state": {"GET": self.get_state},
        }

    # -- ASGI ------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        path: str = scope["path"]
        method: str = scope["method"]
        handlers = self.routes.get(path)
        if handlers is None:
            await self.send_body(send, 404, TEXT_TYPE, b"404 page not found")
            return
        handler = handlers.get(method)
        if handler is None:
            await self.send_body(send, 405, TEXT_TYPE, b"405 method not allowed")
            return
        body = await read_body(receive)
        if path.startswith("/api/"):
            self.state.requests += 1
            faults = self.state.faults
            if faults.stall_ms > 0:
                await asyncio.sleep(faults.stall_ms / 1000)
            if faults.fail_next > 0:
                faults.fail_next -= 1
                await self.send_error(send, OllamaError(faults.fail_status, faults.fail_message))
                return
        try:
            await handler(scope, body, send)
        except OllamaError as exc:
            await self.send_error(send, exc)

    # -- responses -------------------------------------------------------------------

    @staticmethod
    async def send_body(
        send: Send,
        status: int,
        content_type: bytes | None,
        body: bytes,
        *,
        head: bool = False,
    ) -> None:
        headers = [(b"content-length", str(len(body)).encode())]
        if content_type is not None:
            headers.insert(0, (b"content-type", content_type))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if head else body})

    async def send_json(
        self, send: Send, obj: Any, status: int = 200, *, head: bool = False
    ) -> None:
        await self.send_body(send, status, JSON_TYPE, dumps(obj), head=head)

    async def send_error(self, send: Send, exc: OllamaError) -> None:
        await self.send_json(send, {"error": exc.message}, exc.status)

    async def stream_lines(
        self,
        send: Send,
        lines: Iterable[Callable[[], Awaitable[JSON | None]]],
    ) -> None:
        """Send NDJSON lines as produced; honour the cut-connection fault."""

        async def objects() -> AsyncIterator[JSON]:
            for produce in lines:
                obj = await produce()
                if obj is not None:
                    yield obj

        await self.stream_objects(send, objects())

    async def stream_objects(self, send: Send, objects: AsyncIterator[JSON]) -> None:
        """Send each object as an NDJSON line as it comes; honour the cut-connection fault."""
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", NDJSON_TYPE)],
            }
        )
        cut = self.state.faults.cut_after_chunks
        sent = 0
        async for obj in objects:
            if cut is not None and sent >= cut:
                raise CutConnection(f"emulated connection cut after {sent} chunks")
            await send(
                {"type": "http.response.body", "body": dumps(obj) + b"\n", "more_body": True}
            )
            sent += 1
        await send({"type": "http.response.body", "body": b""})

    # -- request parsing -------------------------------------------------------------

    @staticmethod
    def parse_body(body: bytes, struct: str) -> JSON:
        if not body.strip():
            raise OllamaError(400, "missing request body")
        obj = decoding.load(body)
        if not isinstance(obj, dict):
            raise OllamaError(
                400, f"json: cannot unmarshal {json_type(obj)} into Go value of type api.{struct}"
            )
        for key, go_type in FIELD_TYPES.get(struct, {}).items():
            if key not in obj:
                continue
            value = obj[key]
            kind = json_type(value)
            if kind not in _GO_ACCEPTS[go_type] or (
                go_type == "int" and isinstance(value, float) and not value.is_integer()
            ):
                raise OllamaError(
                    400,
                    f"json: cannot unmarshal {kind} into Go struct field "
                    f"{struct}.{key} of type {_GO_TYPE_NAMES[go_type]}",
                )
        return obj

    @staticmethod
    def model_field(req: JSON) -> str:
        value = req.get("model") or req.get("name") or ""
        return str(value)

    def resolve(self, raw: str) -> tuple[ModelName, Installed] | None:
        name = parse(raw)
        if name is None:
            return None
        installed = self.state.find(name)
        return (name, installed) if installed is not None else None

    @staticmethod
    def check_options(options: Any) -> JSON:
        if options is None:
            return {}
        if not isinstance(options, dict):
            raise OllamaError(400, "json: cannot unmarshal options")
        for key, value in options.items():
            if key in INT_OPTIONS and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise OllamaError(500, f'option "{key}" must be of type integer')
            if key in FLOAT_OPTIONS and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise OllamaError(500, f'option "{key}" must be of type float32')
            if key in BOOL_OPTIONS and not isinstance(value, bool):
                raise OllamaError(500, f'option "{key}" must be of type boolean')
            if key == "stop" and not isinstance(value, list):
                raise OllamaError(500, f'option "{key}" must be of type array')
        return options

    @staticmethod
    def keep_alive_ns(value: Any) -> int | None:
        if value is None:
            return None
        if isinstance(value, bool):
            raise OllamaError(400, "Unsupported type: 'bool'")
        if isinstance(value, int | float):
            return int(value * 1_000_000_000)
        if isinstance(value, str):
            return parse_go_duration(value)
        raise OllamaError(400, f"Unsupported type: '{type(value).__name__}'")

    @staticmethod
    def check_think(value: Any) -> bool | str | None:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, str) and value in THINK_LEVELS:
            return value
        shown = value if isinstance(value, str) else json.dumps(value)
        raise OllamaError(
            400,
            f"invalid think value: {go_quote(str(shown))} "
            '(must be "high", "medium", "low", "max", true, or false)',
        )

    @staticmethod
    def check_format(value: Any) -> tuple[bool, JSON | None]:
        """(wants JSON, schema or None)."""
        if value is None or value == "":
            return False, None
        if value == "json":
            return True, None
        if isinstance(value, dict):
            return True, value
        raw = json.dumps(value, separators=(",", ":"))
        raise OllamaError(
            500, f'invalid format: {go_quote(raw)}; expected "json" or a valid JSON Schema object'
        )

    # -- simple endpoints ------------------------------------------------------------

    async def root(self, scope: Scope, body: bytes, send: Send) -> None:
        head = scope["method"] == "HEAD"
        await self.send_body(send, 200, TEXT_TYPE, b"Ollama is running", head=head)

    async def version(self, scope: Scope, body: bytes, send: Send) -> None:
        await self.send_json(send, {"version": self.config.version}, head=scope["method"] == "HEAD")

    @staticmethod
    def details(installed: Installed) -> JSON:
        spec = installed.spec
        return {
            "parent_model": "",
            "format": "gguf",
            "family": spec.family,
            "families": list(spec.families or (spec.family,)),
            "parameter_size": spec.parameter_size,
            "quantization_level": spec.quantization,
        }

    async def tags(self, scope: Scope, body: bytes, send: Send) -> None:
        models = sorted(self.state.installed.values(), key=lambda m: m.modified_ns, reverse=True)
        items = [
            {
                "name": m.display,
                "model": m.display,
                "modified_at": local_time(m.modified_ns),
                "size": m.spec.size,
                "digest": m.spec.digest,
                "details": self.details(m),
            }
            for m in models
        ]
        await self.send_json(send, {"models": items}, head=scope["method"] == "HEAD")

    async def ps(self, scope: Scope, body: bytes, send: Send) -> None:
        items = [
            {
                "name": e.installed.display,
                "model": e.installed.display,
                "size": e.installed.spec.size,
                "digest": e.installed.spec.digest,
                "details": self.details(e.installed),
                "expires_at": local_time(e.expires_ns),
                "size_vram": e.installed.spec.size,
                "context_length": e.context_length,
            }
            for e in self.state.running()
        ]
        await self.send_json(send, {"models": items})

    async def show(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "ShowRequest")
        raw = self.model_field(req)
        if not raw:
            raise OllamaError(400, "model is required")
        name = parse(raw)
        found = self.resolve(raw)
        if found is None:
            shown = name.short if name is not None else raw
            raise OllamaError(404, f"model '{shown}' not found")
        _, installed = found
        spec = installed.spec
        params = "\n".join(f"{'stop':<30} {go_quote(s)}" for s in spec.stop)
        arch = spec.family.replace("-", "_")
        modelfile = (
            '# Modelfile generated by "ollama show"\n'
            "# To build a new Modelfile based on this, replace FROM with:\n"
            f"# FROM {installed.display}\n\n"
            f"FROM /root/.ollama/models/blobs/sha256-{spec.layers()[0][1]}\n"
            f'TEMPLATE """{spec.template}"""\n'
            + "".join(f"PARAMETER stop {s}\n" for s in spec.stop)
            + f'LICENSE """{spec.license}"""\n'
        )
        reply: JSON = {
            "license": spec.license,
            "modelfile": modelfile,
            "parameters": params,
            "template": spec.template,
            "details": self.details(installed),
            "model_info": {
                "general.architecture": arch,
                "general.parameter_count": parameter_count(spec.parameter_size),
                "general.quantization_version": 2,
                f"{arch}.context_length": spec.context_length,
                f"{arch}.embedding_length": spec.embedding_length,
            },
            "capabilities": list(spec.capabilities),
            "modified_at": local_time(installed.modified_ns),
        }
        if not params:
            del reply["parameters"]
        await self.send_json(send, reply)

    async def delete(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "DeleteRequest")
        raw = self.model_field(req)
        if not raw:
            raise OllamaError(400, "model is required")
        name = parse(raw)
        if name is None or not self.state.remove(name):
            raise OllamaError(404, f"model '{raw}' not found")
        await self.send_body(send, 200, None, b"")

    async def copy(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "CopyRequest")
        source, destination = str(req.get("source") or ""), str(req.get("destination") or "")
        src, dst = parse(source), parse(destination)
        if src is None:
            raise OllamaError(400, f"source {go_quote(source)} is invalid")
        if dst is None:
            raise OllamaError(400, f"destination {go_quote(destination)} is invalid")
        installed = self.state.find(src)
        if installed is None:
            raise OllamaError(404, f"model {go_quote(source)} not found")
        self.state.installed[dst.key] = Installed(dst.short, installed.spec, time.time_ns())
        await self.send_body(send, 200, None, b"")

    # -- pull ------------------------------------------------------------------------

    async def pull(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "PullRequest")
        raw = self.model_field(req)
        name = parse(raw)
        if name is None:
            raise OllamaError(400, "invalid model name")
        spec = lookup(name)
        stream = req.get("stream") is not False
        already = self.state.find(name) is not None
        delay = self.state.token_delay_ms / 1000

        def progress() -> list[JSON]:
            lines: list[JSON] = [{"status": "pulling manifest"}]
            if spec is None:
                return lines
            for _, digest, size in spec.layers():
                head = {"status": f"pulling {digest[:12]}", "digest": f"sha256:{digest}"}
                if already:
                    lines.append({**head, "total": size, "completed": size})
                    continue
                lines.append({**head, "total": size})
                lines.append({**head, "total": size, "completed": size // 2})
                lines.append({**head, "total": size, "completed": size})
            lines += [{"status": "verifying sha256 digest"}, {"status": "writing manifest"}]
            return lines

        missing = "pull model manifest: file does not exist"
        if not stream:
            if spec is None:
                raise OllamaError(500, missing)
            self.state.install(name)
            await self.send_body(send, 200, b"application/json", dumps({"status": "success"}))
            return

        def step(obj: JSON) -> Callable[[], Awaitable[JSON | None]]:
            async def produce() -> JSON | None:
                if delay > 0:
                    await asyncio.sleep(delay)
                return obj

            return produce

        async def finish() -> JSON:
            if spec is None:
                return {"error": missing}
            self.state.install(name)
            return {"status": "success"}

        await self.stream_lines(send, [*(step(o) for o in progress()), finish])

    # -- inference -------------------------------------------------------------------

    def inference_target(self, req: JSON, *, kind: str) -> tuple[str, ModelName, Installed]:
        raw = str(req.get("model") or "")
        if not raw:
            if kind == "generate":
                raise OllamaError(404, "model '' not found")
            raise OllamaError(400, "model is required")
        name = parse(raw)
        if name is None:
            if kind == "generate":
                raise OllamaError(400, "invalid model name")
            raise OllamaError(404, f"model '{raw}' not found")
        installed = self.state.find(name)
        if installed is None:
            raise OllamaError(404, f"model '{raw}' not found")
        return raw, name, installed

    async def generate(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "GenerateRequest")
        raw, name, installed = self.inference_target(req, kind="generate")
        await self.infer(send, req, "generate", raw, name, installed)

    async def chat(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "ChatRequest")
        raw, name, installed = self.inference_target(req, kind="chat")
        await self.infer(send, req, "chat", raw, name, installed)

    async def infer(
        self, send: Send, req: JSON, kind: str, raw: str, name: ModelName, installed: Installed
    ) -> None:
        spec = installed.spec
        options = self.check_options(req.get("options"))
        keep_alive = self.keep_alive_ns(req.get("keep_alive"))
        think = self.check_think(req.get("think"))
        wants_json, schema = self.check_format(req.get("format"))
        top_logprobs = req.get("top_logprobs")
        if isinstance(top_logprobs, int) and not 0 <= top_logprobs <= 20:
            raise OllamaError(400, "top_logprobs must be between 0 and 20")
        num_ctx = int(options.get("num_ctx") or 4096)

        if kind == "generate":
            prompt = str(req.get("prompt") or "")
            if req.get("raw") and (req.get("template") or req.get("system") or req.get("context")):
                raise OllamaError(400, "raw mode does not support template, system, or context")
            if spec.is_embedding:
                raise OllamaError(400, f"{go_quote(raw)} does not support generate")
            if req.get("suffix") and "insert" not in spec.capabilities:
                raise OllamaError(400, f"{name.full} does not support insert")
            empty = not prompt and not req.get("images")
            history = prompt
            last_user = prompt
        else:
            messages = req.get("messages") or []
            if spec.is_embedding:
                raise OllamaError(400, f"{go_quote(raw)} does not support chat")
            for m in messages:
                if not isinstance(m, dict):
                    raise OllamaError(
                        400,
                        f"json: cannot unmarshal {json_type(m)} into Go struct field "
                        "ChatRequest.messages of type api.Message",
                    )
            if req.get("tools") and "tools" not in spec.capabilities:
                raise OllamaError(400, f"{name.full} does not support tools")
            empty = not messages
            history = "\n".join(f"{m.get('role')}: {m.get('content') or ''}" for m in messages)
            users = [str(m.get("content") or "") for m in messages if m.get("role") == "user"]
            last_user = users[-1] if users else ""
            prompt = history

        if think is not None and think is not False and "thinking" not in spec.capabilities:
            raise OllamaError(400, f"{go_quote(raw)} does not support thinking")

        if empty:
            reason = "unload" if keep_alive == 0 else "load"
            self.state.touch_loaded(name, installed, keep_alive, num_ctx)
            reply: JSON = {"model": raw, "created_at": utc_now()}
            if kind == "generate":
                reply["response"] = ""
            else:
                reply["message"] = {"role": "assistant", "content": ""}
            reply.update({"done": True, "done_reason": reason})
            await self.send_json(send, reply)
            return

        cold = not self.state.was_loaded(name)
        self.state.touch_loaded(name, installed, keep_alive, num_ctx)
        if self.engine is not None:
            if kind == "generate":
                turns = (
                    [{"role": "system", "content": str(req["system"])}] if req.get("system") else []
                )
                turns.append({"role": "user", "content": prompt})
                text_in = prompt if req.get("raw") else self.engine.chat_prompt(turns)
            else:
                text_in = self.engine.chat_prompt(req.get("messages") or [])
            await self.infer_with_engine(send, req, kind, raw, text_in, options, wants_json, schema)
            return
        seed_value = options.get("seed", -1)
        seed = int(seed_value) if isinstance(seed_value, int | float) and seed_value >= 0 else 0
        temperature = float(options.get("temperature", 0.8))
        system = str(req.get("system") or "")

        thinks = "thinking" in spec.capabilities and think is not False
        thinking = text.thinking_pieces(spec.name, history, seed) if thinks else []
        tool = None
        if kind == "chat" and req.get("tools") and last_user:
            tool = text.tool_call_for(list(req["tools"]), last_user, seed)
        if tool is not None:
            pieces: list[str] = []
            reason = "stop"
        else:
            if wants_json:
                pieces = text.json_pieces(spec.name, system + history, seed, schema)
            else:
                pieces = text.answer_pieces(spec.name, system + history, seed, temperature)
            num_predict = options.get("num_predict")
            stop = [str(s) for s in options.get("stop") or []]
            pieces, reason = text.apply_limits(
                pieces, int(num_predict) if num_predict is not None else None, stop
            )

        prompt_tokens = text.tokens_of(system + prompt) + 10
        eval_count = len(thinking) + len(pieces) + (1 if tool else 0)
        token_ns = int(self.state.token_delay_ms * 1_000_000) or 2_000_000
        first_ns = int(self.state.first_token_delay_ms * 1_000_000)
        metrics = {
            "load_duration": 30_000_000 if cold else 2_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": first_ns or prompt_tokens * 200_000,
            "eval_count": max(eval_count, 1),
            "eval_duration": max(eval_count, 1) * token_ns,
        }
        total = sum(v for k, v in metrics.items() if k.endswith("duration")) + 1_000_000
        final_metrics = {
            "total_duration": total,
            "load_duration": metrics["load_duration"],
            "prompt_eval_count": metrics["prompt_eval_count"],
            "prompt_eval_duration": metrics["prompt_eval_duration"],
            "eval_count": metrics["eval_count"],
            "eval_duration": metrics["eval_duration"],
        }
        tool_calls = (
            [
                {
                    "id": "call_" + secrets.token_hex(8)[:8],
                    "function": {"index": 0, "name": tool.name, "arguments": tool.arguments},
                }
            ]
            if tool
            else None
        )
        context = None
        if kind == "generate" and not req.get("raw"):
            context = [
                int(hashlib.md5(t.encode()).hexdigest()[:5], 16) % 128000
                for t in [*prompt.split(), *pieces]
            ]

        if req.get("stream") is False:
            await asyncio.sleep(self.state.first_token_delay_ms / 1000)
            delay = self.state.token_delay_ms / 1000 * eval_count
            if delay > 0:
                await asyncio.sleep(delay)
            reply = {"model": raw, "created_at": utc_now()}
            if kind == "generate":
                reply["response"] = "".join(pieces)
                if thinking:
                    reply["thinking"] = "".join(thinking)
                reply.update({"done": True, "done_reason": reason})
                if context is not None:
                    reply["context"] = context
            else:
                message: JSON = {"role": "assistant", "content": "".join(pieces)}
                if thinking:
                    message["thinking"] = "".join(thinking)
                if tool_calls:
                    message["tool_calls"] = tool_calls
                reply.update({"message": message, "done": True, "done_reason": reason})
            reply.update(final_metrics)
            await self.send_json(send, reply)
            return

        lines = self.inference_lines(
            kind, raw, thinking, pieces, tool_calls, reason, context, final_metrics
        )
        await self.stream_lines(send, lines)

    async def infer_with_engine(
        self,
        send: Send,
        req: JSON,
        kind: str,
        raw: str,
        prompt: str,
        options: JSON,
        wants_json: bool,
        schema: JSON | None,
    ) -> None:
        """A real run by the llama.cpp engine, in Ollama's wire format."""
        assert self.engine is not None
        run = self.engine.stream(prompt, options, json_schema=schema, wants_json=wants_json)

        def line(piece: str) -> JSON:
            body: JSON = {"model": raw, "created_at": utc_now()}
            if kind == "generate":
                body["response"] = piece
            else:
                body["message"] = {"role": "assistant", "content": piece}
            return body

        def final(stats: GenerationStats, text_out: str) -> JSON:
            reply = line(text_out)
            reply.update({"done": True, "done_reason": stats.done_reason, **stats.metrics()})
            return reply

        if req.get("stream") is False:
            pieces: list[str] = []
            async for item in run:
                if isinstance(item, GenerationStats):
                    await self.send_json(send, final(item, "".join(pieces)))
                    return
                pieces.append(item)
            return

        async def objects() -> AsyncIterator[JSON]:
            async for item in run:
                if isinstance(item, GenerationStats):
                    yield final(item, "")
                    return
                yield {**line(item), "done": False}

        first = await anext(objects_iter := objects())  # a full queue is an error reply

        async def all_objects() -> AsyncIterator[JSON]:
            yield first
            async for obj in objects_iter:
                yield obj

        await self.stream_objects(send, all_objects())

    def inference_lines(
        self,
        kind: str,
        raw: str,
        thinking: list[str],
        pieces: list[str],
        tool_calls: list[JSON] | None,
        reason: str,
        context: list[int] | None,
        final_metrics: JSON,
    ) -> list[Callable[[], Awaitable[JSON | None]]]:
        state = self.state
        first = [True]

        def chunk(body: JSON) -> Callable[[], Awaitable[JSON | None]]:
            async def produce() -> JSON | None:
                delay = state.first_token_delay_ms if first[0] else state.token_delay_ms
                first[0] = False
                if delay > 0:
                    await asyncio.sleep(delay / 1000)
                return {"model": raw, "created_at": utc_now(), **body, "done": False}

            return produce

        out: list[Callable[[], Awaitable[JSON | None]]] = []
        for piece in thinking:
            if kind == "generate":
                out.append(chunk({"response": "", "thinking": piece}))
            else:
                out.append(
                    chunk({"message": {"role": "assistant", "content": "", "thinking": piece}})
                )
        for piece in pieces:
            if kind == "generate":
                out.append(chunk({"response": piece}))
            else:
                out.append(chunk({"message": {"role": "assistant", "content": piece}}))
        if tool_calls:
            out.append(
                chunk({"message": {"role": "assistant", "content": "", "tool_calls": tool_calls}})
            )

        async def final() -> JSON:
            if first[0] and state.first_token_delay_ms > 0:
                await asyncio.sleep(state.first_token_delay_ms / 1000)
            reply: JSON = {"model": raw, "created_at": utc_now()}
            if kind == "generate":
                reply.update({"response": "", "done": True, "done_reason": reason})
                if context is not None:
                    reply["context"] = context
            else:
                reply.update(
                    {
                        "message": {"role": "assistant", "content": ""},
                        "done": True,
                        "done_reason": reason,
                    }
                )
            reply.update(final_metrics)
            return reply

        out.append(final)
        return out

    # -- embeddings ------------------------------------------------------------------

    async def embed(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "EmbedRequest")
        raw = str(req.get("model") or "")
        if not raw:
            raise OllamaError(404, "model '' not found")
        found = self.resolve(raw)
        if found is None:
            raise OllamaError(404, f"model {go_quote(raw)} not found, try pulling it first")
        name, installed = found
        self.check_options(req.get("options"))
        inputs = req.get("input")
        if inputs is None or inputs == "" or inputs == []:
            await self.send_json(send, {"model": raw, "embeddings": []})
            return
        items = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise OllamaError(400, "invalid input type")
        spec = installed.spec
        if self.engine is not None:
            self.state.touch_loaded(
                name, installed, self.keep_alive_ns(req.get("keep_alive")), 2048
            )
            started = time.perf_counter_ns()
            vectors, tokens = await self.engine.embed(items)
            await self.send_json(
                send,
                {
                    "model": raw,
                    "embeddings": vectors,
                    "total_duration": time.perf_counter_ns() - started,
                    "load_duration": 1,
                    "prompt_eval_count": tokens,
                },
            )
            return
        if req.get("truncate") is False and any(
            text.tokens_of(i) > spec.context_length for i in items
        ):
            raise OllamaError(400, "the input length exceeds the context length")
        dims = spec.embedding_length
        wanted = req.get("dimensions")
        if isinstance(wanted, int) and 0 < wanted < dims:
            dims = wanted
        vectors = [
            normalise(text.embedding(spec.name, i, spec.embedding_length)[:dims]) for i in items
        ]
        cold = not self.state.was_loaded(name)
        self.state.touch_loaded(name, installed, self.keep_alive_ns(req.get("keep_alive")), 2048)
        tokens = sum(text.tokens_of(i) for i in items)
        load = 30_000_000 if cold else 2_000_000
        await self.send_json(
            send,
            {
                "model": raw,
                "embeddings": vectors,
                "total_duration": load + tokens * 300_000 + 1_000_000,
                "load_duration": load,
                "prompt_eval_count": tokens,
            },
        )

    async def embeddings(self, scope: Scope, body: bytes, send: Send) -> None:
        req = self.parse_body(body, "EmbeddingRequest")
        raw = str(req.get("model") or "")
        if not raw:
            raise OllamaError(400, "model is required")
        found = self.resolve(raw)
        if found is None:
            raise OllamaError(404, f"model {go_quote(raw)} not found, try pulling it first")
        name, installed = found
        self.check_options(req.get("options"))
        prompt = str(req.get("prompt") or "")
        if not prompt:
            await self.send_json(send, {"embedding": []})
            return
        spec = installed.spec
        self.state.touch_loaded(name, installed, self.keep_alive_ns(req.get("keep_alive")), 2048)
        if self.engine is not None:
            vectors, _ = await self.engine.embed([prompt])
            await self.send_json(send, {"embedding": vectors[0]})
            return
        vector = [v * 3.0 for v in text.embedding(spec.name, prompt, spec.embedding_length)]
        await self.send_json(send, {"embedding": vector})

    # -- control endpoints (outside /api/) --------------------------------------------

    async def set_faults(self, scope: Scope, body: bytes, send: Send) -> None:
        req = decoding.load(body) if body.strip() else {}
        if not isinstance(req, dict):
            raise OllamaError(400, "faults must be a JSON object")
        faults, state = copy.copy(self.state.faults), self.state
        delays = {"token_delay_ms": state.token_delay_ms,
                  "first_token_delay_ms": state.first_token_delay_ms}  # fmt: skip
        try:
            for key in ("fail_next", "fail_status", "cut_after_chunks"):
                if key in req:
                    setattr(faults, key, None if req[key] is None else int(req[key]))
            if "fail_message" in req:
                faults.fail_message = str(req["fail_message"])
            if "stall_ms" in req:
                faults.stall_ms = float(req["stall_ms"] or 0)
            for key in delays:
                if key in req:
                    delays[key] = float(req[key])
        except (TypeError, ValueError) as exc:
            raise OllamaError(400, f"invalid fault value: {exc}") from None
        state.faults = faults
        state.token_delay_ms = delays["token_delay_ms"]
        state.first_token_delay_ms = delays["first_token_delay_ms"]
        await self.get_state(scope, b"", send)

    async def reset(self, scope: Scope, body: bytes, send: Send) -> None:
        self.state.reset()
        await self.get_state(scope, b"", send)

    async def get_state(self, scope: Scope, body: bytes, send: Send) -> None:
        await self.send_json(
            send,
            {
                "models": [m.display for m in self.state.installed.values()],
                "loaded": [e.installed.display for e in self.state.running()],
                "requests": self.state.requests,
                "faults": self.state.faults.as_dict(),
                "token_delay_ms": self.state.token_delay_ms,
                "first_token_delay_ms": self.state.first_token_delay_ms,
            },
        )


async def read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def normalise(vector: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


def parameter_count(size: str) -> int:
    units = {"K": 1e3, "M": 1e6, "B": 1e9, "T": 1e12}
    try:
        return int(float(size[:-1]) * units.get(size[-1].upper(), 1))
    except (ValueError, IndexError):
        return 0


def parse_go_duration(value: str) -> int:
    """Go's time.ParseDuration (h, m, s, ms, us, ns), or integer seconds as text."""
    value = value.strip()
    if value.lstrip("-").isdigit():
        return int(value) * 1_000_000_000
    units = {"h": 3.6e12, "m": 6e10, "s": 1e9, "ms": 1e6, "us": 1e3, "µs": 1e3, "ns": 1.0}
    parts = re.findall(r"(-?\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)", value)
    if not parts or "".join(n + u for n, u in parts) != value.lstrip("+"):
        raise OllamaError(400, f"time: invalid duration {go_quote(value)}")
    return int(sum(float(n) * units[u] for n, u in parts))


def create_emulator_app(config: EmulatorConfig) -> Emulator:
    return Emulator(config)


def serve(config: EmulatorConfig) -> None:
    """Run the emulator under uvicorn until interrupted."""
    import sys

    import uvicorn

    print(
        f"Listening on {config.host}:{config.port} (version {config.version})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_emulator_app(config),
        host=config.host,
        port=config.port,
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
