"""The web console's built files (`static/`), made from `web/` by `npm run build` and
shipped as package data: served at `/ui` by `app.api.console.static_site`, no Node needed at run time."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

STATIC_DIR = Path(str(files(__name__) / "static"))
