"""BackendPool routing: the backend that has the model, else the first healthy one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from app.backends import BackendError, BackendPool, BackendUnavailable
from app.ollama import same_model
from tests.support.servers import running_emulator


@pytest.fixture(scope="module")
def second_emulator() -> Iterator[str]:
    with running_emulator(models=["phi3:mini"]) as url:
        yield url


async def test_picks_the_backend_that_has_the_model(
    emulator_url: str, second_emulator: str, down_url: str
) -> None:
    pool = BackendPool([down_url, emulator_url, second_emulator])
    assert (await pool.pick("phi3:mini")).base_url == second_emulator
    # Ollama's rules: the name compares case-insensitively with defaults applied.
    assert (await pool.pick("library/PHI3:mini", has_model=same_model)).base_url == second_emulator
    assert (await pool.pick("llama3.1:8b")).base_url == emulator_url
    await pool.aclose()


async def test_an_unknown_model_is_a_404_naming_close_names(
    emulator_url: str, second_emulator: str, down_url: str
) -> None:
    pool = BackendPool([down_url, second_emulator, emulator_url])
    # No backend has it: a 404 that names the close names, rather than a guess.
    with pytest.raises(BackendError) as caught:
        await pool.pick("phi3:mni")
    assert caught.value.status == 404 and "close names: phi3:mini" in str(caught.value)
    assert (await pool.pick(None)).base_url == second_emulator, "no model: first healthy"
    await pool.aclose()


async def test_no_reachable_backend_raises(down_url: str) -> None:
    from tests.support.servers import free_port

    pool = BackendPool([down_url, f"http://127.0.0.1:{free_port()}"], health_timeout=0.5)
    with pytest.raises(BackendUnavailable, match="no backend is reachable"):
        await pool.pick("x")
    await pool.aclose()


async def test_a_single_backend_is_chosen_without_probing(down_url: str) -> None:
    pool = BackendPool([down_url])
    assert (await pool.pick("anything")).base_url == down_url
    await pool.aclose()


def test_a_pool_needs_a_backend() -> None:
    with pytest.raises(ValueError):
        BackendPool([])
