"""The FastAPI app: `create_app(settings)` and the lifespan that opens and closes resources."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.api.routes import health
from app.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.settings = settings
        yield

    app = FastAPI(
        title="ollama-gateway",
        version=__version__,
        description="A gateway in front of one or more Ollama servers.",
        lifespan=lifespan,
    )
    app.include_router(health.router)
    return app
