"""The gateway's OpenAPI document: FastAPI's, with the two things it cannot say by itself.

- Errors are `application/problem+json`, not `application/json`.
- Streamed endpoints answer `text/event-stream`, described the way OpenAPI 3.1 allows:
  vendor extensions (`x-sse-item-schema`: one event, a component per stream such as
  `RunEvent` or `JobEvent`; `x-sse-events`: each event's name → its payload's schema),
  see `sse_response`. The payload schemas (`ChunkEvent`, `ResultOut`, `ErrorEvent`,
  `PullOut`, ...) are components so SDK generators emit them.

It also declares what linters ask of a document (`spectral:oas`, see `.spectral.yaml`):
the tags with their descriptions, a server, a contact and a license.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.api.gateway.problems import PROBLEM_MEDIA_TYPE

REF = "#/components/schemas/{model}"


def sse_response(
    name: str,
    description: str,
    events: dict[str, type[BaseModel] | tuple[type[BaseModel], ...]],
) -> dict[str, Any]:
    """A 200 response of server-sent events named in `events`, each with its data schema
    (or schemas, when an event's data takes one of several shapes).

    OpenAPI 3.1 has no way to give the schema of each event of a stream (3.2's
    `itemSchema`, which 3.1 validators reject), and a `schema` there would describe the
    whole body: SDK generators then try to parse the stream as one JSON value. So the
    media type has no `schema`; the vendor extension `x-sse-item-schema` refers to the
    component `name`, one event (`event`, `data`, `id`, `retry`; what 3.2 would call the
    `itemSchema`), and `x-sse-events` maps each event's name to the schema of its `data`
    (JSON text). tests/api/gateway/test_sse_spec.py checks real streams against both.
    """
    shapes = {
        name: kinds if isinstance(kinds, tuple) else (kinds,) for name, kinds in events.items()
    }
    payloads = {name: " or ".join(m.__name__ for m in models) for name, models in shapes.items()}
    models = sorted({m.__name__ for kinds in shapes.values() for m in kinds})
    event_schema = {
        "title": name,
        "type": "object",
        "description": "One server-sent event; `data` is JSON: "
        + ", ".join(f"`{event}` → {model}" for event, model in payloads.items())
        + ".",
        "properties": {
            "event": {"type": "string", "enum": list(events)},
            "data": {
                "type": "string",
                "contentMediaType": "application/json",
                "contentSchema": {"anyOf": [{"$ref": REF.format(model=m)} for m in models]},
            },
            "id": {"type": "string"},
            "retry": {"type": "integer"},
        },
        "required": ["data"],
    }
    return {
        "description": description,
        "content": {
            "text/event-stream": {
                # Moved to `components` by `build_openapi` (routes are declared before it).
                SSE_ITEM_EXTENSION: event_schema,
                SSE_EXTENSION: {
                    event: _one_of([REF.format(model=m.__name__) for m in models])
                    for event, models in shapes.items()
                },
            }
        },
    }


SSE_ITEM_EXTENSION = "x-sse-item-schema"
"""The vendor extension of a `text/event-stream` media type: the schema of one event
(a `$ref` to a component), as OpenAPI 3.2's `itemSchema` would give it."""

SSE_EXTENSION = "x-sse-events"
"""The vendor extension of a `text/event-stream` media type: each event's name → the
schema of its `data` (a `$ref` to a component, or a `oneOf` of them)."""


def _one_of(refs: list[str]) -> dict[str, Any]:
    if len(refs) == 1:
        return {"$ref": refs[0]}
    return {"oneOf": [{"$ref": ref} for ref in refs]}


TAGS: list[dict[str, str]] = [
    {"name": "health", "description": "Liveness and readiness probes (no key needed)."},
    {"name": "models", "description": "The models on the backends, their stats and configs."},
    {"name": "pulls", "description": "Pulling models onto backends, as jobs (admin)."},
    {"name": "generate", "description": "Generations from a prompt, plain or streamed."},
    {"name": "chat", "description": "Chats from a message history, plain or streamed."},
    {"name": "batches", "description": "Many prompts on one model, at once or as a job."},
    {"name": "jobs", "description": "Every kind of long work: progress, events, cancel."},
    {"name": "benchmarks", "description": "A model over test prompts: speed and latency."},
    {"name": "comparisons", "description": "One prompt on several models, side by side."},
    {"name": "results", "description": "The stored runs: filters, cursor pages, cleanup."},
    {"name": "config", "description": "Per-model default options and presets (admin)."},
    {"name": "backends", "description": "The Ollama servers and placement rules (admin)."},
    {
        "name": "keys",
        "description": "API keys: create, list, set a key's team and quotas, revoke (admin).",
    },
    {
        "name": "teams",
        "description": "Teams of keys (admin): a model allowlist narrowing their keys' own, "
        "and quotas their keys share.",
    },
    {
        "name": "quotas",
        "description": "A key's quotas and its team's (tokens, requests, backend seconds a day "
        "or a month): what is used and left in each window.",
    },
    {"name": "audit", "description": "Who did what: the audit log (admin)."},
    {
        "name": "usage",
        "description": "Who used what: requests, tokens and GPU time per team, key, model, "
        "backend and surface, by hour or day (the usage ledger), priced when prices are set.",
    },
]

SERVERS: list[dict[str, str]] = [
    {
        "url": "http://127.0.0.1:8000",
        "description": "`ollama-gateway serve` with its defaults (GATEWAY_HOST, GATEWAY_PORT).",
    }
]

CONTACT = {"name": "ollama-gateway maintainers"}
LICENSE = {"name": "MIT", "identifier": "MIT"}


def build_openapi(app: FastAPI, event_models: list[type[BaseModel]]) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags or TAGS,
        servers=SERVERS,
        contact=CONTACT,
        license_info=LICENSE,
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status.isdigit() and int(status) >= 400 and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
                stream = content.get("text/event-stream", {})
                event = stream.get(SSE_ITEM_EXTENSION, {})
                if "title" in event and "$ref" not in event:
                    schemas.setdefault(event["title"], event)
                    stream[SSE_ITEM_EXTENSION] = {"$ref": REF.format(model=event["title"])}
    for model in event_models:
        _add_component(schemas, model)
    app.openapi_schema = spec
    return spec


def _add_component(schemas: dict[str, Any], model: type[BaseModel]) -> None:
    schema = model.model_json_schema(ref_template=REF)
    for name, sub in schema.pop("$defs", {}).items():
        schemas.setdefault(name, sub)
    schemas.setdefault(model.__name__, schema)


def install_openapi(app: FastAPI, event_models: list[type[BaseModel]]) -> None:
    """Serve `build_openapi`; `event_models` are the SSE payloads the spec refers to."""

    def openapi() -> dict[str, Any]:
        return build_openapi(app, event_models)

    app.openapi = openapi  # type: ignore[method-assign]
