"""The web console at `/ui`: the single-page app built from `web/` into `app/ui/static`.

`/ui/assets/*` (and other files) are served as they are; any other `/ui/<page>` URL gets
`index.html`, where the app's router shows that page. Every answer carries a
Content-Security-Policy that allows scripts, styles and requests from this origin only:
no inline script, no `eval`, no third-party host, no framing.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse, Response

from app.api.common.errors import ApiError
from app.ui import STATIC_DIR

PREFIX = "/ui"

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ]
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
"""Sent with every file of the console."""

ASSET_CACHE = "public, max-age=300"
PAGE_CACHE = "no-cache"


def _file(path: Path, cache: str) -> FileResponse:
    return FileResponse(path, headers={**HEADERS, "Cache-Control": cache})


def install_console(app: FastAPI, static_dir: Path = STATIC_DIR) -> None:
    """Serve the console at `/ui` (a 404 problem when it was not built)."""
    root = static_dir.resolve()

    def index() -> Response:
        page = root / "index.html"
        if not page.is_file():
            raise ApiError(
                404,
                "Console not built",
                "the web console's files are missing: run 'npm ci && npm run build' in web/",
            )
        return _file(page, PAGE_CACHE)

    @app.get(PREFIX, include_in_schema=False)
    async def console_root() -> Response:
        return RedirectResponse(f"{PREFIX}/", status_code=308, headers=HEADERS)

    @app.get(PREFIX + "/{path:path}", include_in_schema=False)
    async def console(path: str) -> Response:
        if path:
            wanted = (root / path).resolve()
            if wanted.is_relative_to(root) and wanted.is_file():
                return _file(wanted, ASSET_CACHE)
            if path.startswith("assets/"):
                raise ApiError(404, "Not found", f"no console file '{path}'")
        return index()
