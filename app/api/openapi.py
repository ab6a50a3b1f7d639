"""The gateway's OpenAPI document: FastAPI's, with the two things it cannot say by itself.

- Errors are `application/problem+json`, not `application/json`.
- Streamed endpoints answer `text/event-stream`; each event's schema is given, and the
  payload schemas (`ChunkEvent`, `ResultOut`, `ErrorEvent`, `PullOut`) are components so
  SDK generators emit them.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from app.api.errors import PROBLEM_MEDIA_TYPE

REF = "#/components/schemas/{model}"


def sse_response(
    description: str, events: dict[str, type[BaseModel] | tuple[type[BaseModel], ...]]
) -> dict[str, Any]:
    """A 200 response of server-sent events named in `events`, each with its data schema
    (or schemas, when an event's data takes one of several shapes)."""
    shapes = {
        name: kinds if isinstance(kinds, tuple) else (kinds,) for name, kinds in events.items()
    }
    payloads = {name: " or ".join(m.__name__ for m in models) for name, models in shapes.items()}
    models = sorted({m.__name__ for kinds in shapes.values() for m in kinds})
    event_schema = {
        "type": "object",
        "description": "One server-sent event; `data` is JSON: "
        + ", ".join(f"`{name}` → {model}" for name, model in payloads.items()),
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
            # OpenAPI 3.2's way to describe a stream: one schema per event, none for the whole.
            "text/event-stream": {"itemSchema": event_schema}
        },
    }


def build_openapi(app: FastAPI, event_models: list[type[BaseModel]]) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    spec = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
        tags=app.openapi_tags,
    )
    schemas = spec.setdefault("components", {}).setdefault("schemas", {})
    for path in spec.get("paths", {}).values():
        for operation in path.values():
            for status, response in operation.get("responses", {}).items():
                content = response.get("content", {})
                if status.isdigit() and int(status) >= 400 and "application/json" in content:
                    content[PROBLEM_MEDIA_TYPE] = content.pop("application/json")
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
