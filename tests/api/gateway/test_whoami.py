"""GET /gateway/whoami: what a front end asks first, to learn whether it needs a key and
what the key may do."""

from __future__ import annotations

from pathlib import Path

import httpx

from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.servers import serving_in_thread

ADMIN_KEY = "ogw_" + "a" * 40


def test_anonymous_loopback_clients_are_told_they_need_no_key(
    emulator_url: str, tmp_path: Path
) -> None:
    with serving_in_thread(create_app(gateway_settings([emulator_url], tmp_path))) as url:
        reply = httpx.get(f"{url}/gateway/whoami", timeout=10)
    assert reply.status_code == 200, reply.text
    assert reply.json() == {
        "name": "anonymous",
        "scope": "admin",
        "anonymous": True,
        "models": None,
        "team": None,
    }


def test_with_keys_it_needs_one_and_names_its_scope(emulator_url: str, tmp_path: Path) -> None:
    settings = gateway_settings([emulator_url], tmp_path, admin_key=ADMIN_KEY)
    with serving_in_thread(create_app(settings)) as url:
        missing = httpx.get(f"{url}/gateway/whoami", timeout=10)
        admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
        made = httpx.post(
            f"{url}/gateway/keys",
            json={"name": "alice", "scope": "user", "models": ["llama3*"]},
            headers=admin,
            timeout=10,
        )
        me_admin = httpx.get(f"{url}/gateway/whoami", headers=admin, timeout=10)
        user = {"Authorization": f"Bearer {made.json()['key']}"}
        me_user = httpx.get(f"{url}/gateway/whoami", headers=user, timeout=10)
    assert missing.status_code == 401
    assert missing.headers["content-type"].startswith("application/problem+json")
    assert me_admin.json() == {
        "name": "bootstrap-admin",
        "scope": "admin",
        "anonymous": False,
        "models": None,
        "team": None,
    }
    assert me_user.json() == {
        "name": "alice",
        "scope": "user",
        "anonymous": False,
        "models": ["llama3*"],
        "team": None,
    }
