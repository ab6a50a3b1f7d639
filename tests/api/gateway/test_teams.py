"""Teams (issue 27): `/gateway/teams` for admins (create, list, read, change, delete, with
their errors), keys given a team (`POST /gateway/keys`, `PATCH /gateway/keys/{key}`), and a
team's model allowlist narrowing its keys' own; on SQLite and PostgreSQL."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.access import KeyStore
from app.main import create_app
from tests.api.conftest import gateway_settings
from tests.support.databases import fresh_pg_database
from tests.support.servers import serving_in_thread


@dataclass
class Admin:
    url: str
    key: str

    def call(
        self, method: str, path: str, body: Any = None, key: str | None = None
    ) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        return httpx.request(method, f"{self.url}{path}", json=body, headers=headers, timeout=10)

    def new_key(self, name: str, **body: Any) -> str:
        reply = self.call("POST", "/gateway/keys", {"name": name, **body})
        assert reply.status_code == 201, reply.text
        key: str = reply.json()["key"]
        return key


@contextlib.contextmanager
def database(kind: str, tmp_path: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path}/gateway.db"
    else:
        with fresh_pg_database() as url:
            yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def admin(request: pytest.FixtureRequest, emulator_url: str, tmp_path: Path) -> Iterator[Admin]:
    with database(request.param, tmp_path) as url:
        store = KeyStore(url)
        try:
            key = store.create("root", "admin").key
        finally:
            store.close()
        settings = gateway_settings([emulator_url], tmp_path, database_url=url)
        with serving_in_thread(create_app(settings)) as base:
            yield Admin(base, key)


def test_teams_are_created_listed_read_changed_and_deleted(admin: Admin) -> None:
    made = admin.call(
        "POST",
        "/gateway/teams",
        {"name": "research", "models": ["qwen*"], "quotas": {"tokens_per_day": 5000}},
    )
    assert made.status_code == 201, made.text
    assert made.json()["models"] == ["qwen*"]
    assert made.json()["quotas"] == {"tokens_per_day": 5000}
    assert admin.call("POST", "/gateway/teams", {"name": "ops"}).status_code == 201
    listed = admin.call("GET", "/gateway/teams").json()
    assert [t["name"] for t in listed] == ["ops", "research"]
    assert admin.call("GET", "/gateway/teams/ops").json()["quotas"] is None

    changed = admin.call(
        "PATCH", "/gateway/teams/research", {"quotas": {"requests_per_day": 10}}
    ).json()
    assert changed["quotas"] == {"requests_per_day": 10}  # replaced
    assert changed["models"] == ["qwen*"]  # not sent: kept
    cleared = admin.call("PATCH", "/gateway/teams/research", {"models": None}).json()
    assert cleared["models"] is None and cleared["quotas"] == {"requests_per_day": 10}

    assert admin.call("DELETE", "/gateway/teams/ops").status_code == 204
    assert admin.call("GET", "/gateway/teams/ops").status_code == 404


def test_team_errors(admin: Admin) -> None:
    assert admin.call("POST", "/gateway/teams", {"name": "a"}).status_code == 201
    duplicate = admin.call("POST", "/gateway/teams", {"name": "a"})
    assert duplicate.status_code == 409 and "a team named 'a' exists" in duplicate.json()["detail"]
    for method, body in (("GET", None), ("PATCH", {"models": ["x"]}), ("DELETE", None)):
        missing = admin.call(method, "/gateway/teams/nobody", body)
        assert missing.status_code == 404, (method, missing.text)
        assert "no team named 'nobody'" in missing.json()["detail"]
    bad_name = admin.call("POST", "/gateway/teams", {"name": "no spaces"})
    assert bad_name.status_code == 422 and "name" in bad_name.text
    unknown_field = admin.call("POST", "/gateway/teams", {"name": "b", "budget": 3})
    assert unknown_field.status_code == 422 and "budget" in unknown_field.text
    # Model globs are printable ASCII without spaces, as the spec's pattern says in terms
    # every regex engine reads alike (U+0085 is a space to some, not to others).
    for models in (["llama 3"], ["qwen\u0085"], ["modèle"], [""]):
        bad_models = admin.call("POST", "/gateway/teams", {"name": "c", "models": models})
        assert bad_models.status_code == 422 and "models" in bad_models.text, models
        key = admin.call("POST", "/gateway/keys", {"name": "k", "models": models})
        assert key.status_code == 422 and "models" in key.text, models
    globbed = admin.call("POST", "/gateway/teams", {"name": "c", "models": ["hf.co/a/b:Q4_[KM]*"]})
    assert globbed.status_code == 201, globbed.text

    # A team that still has keys is not deleted, and says so.
    admin.new_key("member", team="a")
    refused = admin.call("DELETE", "/gateway/teams/a")
    assert refused.status_code == 409
    assert "team 'a' still has 1 active key(s)" in refused.json()["detail"]
    assert admin.call("DELETE", "/gateway/keys/member").status_code == 204
    assert admin.call("DELETE", "/gateway/teams/a").status_code == 204

    # A key given a team that does not exist: 404 naming the field.
    lost = admin.call("POST", "/gateway/keys", {"name": "lost", "team": "nobody"})
    assert lost.status_code == 404 and "team: no team named 'nobody'" in lost.json()["detail"]


def test_only_admins_see_teams(admin: Admin) -> None:
    user = admin.new_key("someone")
    for method, path in (("GET", "/gateway/teams"), ("POST", "/gateway/teams")):
        reply = admin.call(method, path, {"name": "t"}, key=user)
        assert reply.status_code == 403, reply.text


def test_a_teams_model_allowlist_narrows_its_keys_own(admin: Admin) -> None:
    assert (
        admin.call("POST", "/gateway/teams", {"name": "small", "models": ["qwen*"]}).status_code
        == 201
    )
    free = admin.new_key("free", team="small")  # the key itself may use any model
    narrow = admin.new_key("narrow", team="small", models=["llama3*", "qwen*"])
    alone = admin.new_key("alone", models=["llama3*"])  # no team: as before
    run = {"prompt": "hi", "options": {"max_tokens": 2}}
    for key in (free, narrow):
        assert (
            admin.call(
                "POST", "/gateway/generate", {**run, "model": "qwen2.5:0.5b"}, key
            ).status_code
            == 200
        )
        denied = admin.call("POST", "/gateway/generate", {**run, "model": "llama3.1:8b"}, key)
        assert denied.status_code == 403, denied.text
        assert "its team 'small': qwen*" in denied.json()["detail"]
    assert (
        admin.call("POST", "/gateway/generate", {**run, "model": "llama3.1:8b"}, alone).status_code
        == 200
    )
    # The OpenAI surface lists only what both allow.
    listed = httpx.get(
        f"{admin.url}/v1/models", headers={"Authorization": f"Bearer {narrow}"}, timeout=10
    ).json()
    assert [m["id"] for m in listed["data"]] == ["qwen2.5:0.5b"]
    me = admin.call("GET", "/gateway/whoami", key=narrow).json()
    assert me["team"] == "small"

    # Widening the team takes effect for its keys at once (on this replica).
    assert admin.call("PATCH", "/gateway/teams/small", {"models": None}).status_code == 200
    assert (
        admin.call("POST", "/gateway/generate", {**run, "model": "llama3.1:8b"}, narrow).status_code
        == 200
    )


def test_a_keys_team_and_quotas_are_set_and_cleared_with_patch(admin: Admin) -> None:
    assert admin.call("POST", "/gateway/teams", {"name": "t1"}).status_code == 201
    admin.new_key("mover")
    moved = admin.call(
        "PATCH", "/gateway/keys/mover", {"team": "t1", "quotas": {"tokens_per_month": 10}}
    )
    assert moved.status_code == 200, moved.text
    assert moved.json()["team"] == "t1" and moved.json()["quotas"] == {"tokens_per_month": 10}
    kept = admin.call("PATCH", "/gateway/keys/mover", {"quotas": None}).json()
    assert kept["team"] == "t1" and kept["quotas"] is None
    listed = admin.call("GET", "/gateway/keys").json()
    assert next(k for k in listed if k["name"] == "mover")["team"] == "t1"
    left = admin.call("PATCH", "/gateway/keys/mover", {"team": None}).json()
    assert left["team"] is None
    assert admin.call("PATCH", "/gateway/keys/ghost", {"team": None}).status_code == 404
    unknown = admin.call("PATCH", "/gateway/keys/mover", {"team": "nobody"})
    assert unknown.status_code == 404 and "team" in unknown.json()["detail"]
