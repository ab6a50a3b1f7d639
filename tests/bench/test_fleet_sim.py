"""`bench/fleet_sim.py` (issue 18): a scaled-down run of the three policies, and one
decision where the pool's real ranking and least-outstanding part ways."""

from __future__ import annotations

import importlib.util
import math
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import app.backends.pool as pool_module
import app.backends.state as state_module
from app.backends.state import BackendState

PATH = Path(__file__).resolve().parents[2] / "bench" / "fleet_sim.py"


@pytest.fixture(scope="module")
def sim() -> Iterator[ModuleType]:
    spec = importlib.util.spec_from_file_location("fleet_sim", PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["fleet_sim"] = module  # dataclasses look their module up
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop("fleet_sim", None)


def small(sim: ModuleType) -> Any:
    return sim.Config(
        backends=8, day_seconds=240, trough_rate=0.5, peak_rate=2.0, job_interval=60, seed=3
    )


def test_a_small_fleet_runs_every_policy_and_plots(
    sim: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"expected_wait": 0}
    real = BackendState.expected_wait

    def counted(self: BackendState, *args: Any, **kwargs: Any) -> tuple[float, float]:
        calls["expected_wait"] += 1
        return real(self, *args, **kwargs)

    monkeypatch.setattr(BackendState, "expected_wait", counted)
    config = small(sim)
    baselines = sim.simulate(config, ["round robin", "least outstanding"])
    assert calls["expected_wait"] == 0  # the baselines do not rank
    results = [*baselines, *sim.simulate(config, ["gateway"])]
    assert calls["expected_wait"] > 0  # the gateway's choices come from the pool's ranking

    assert [r.policy for r in results] == list(sim.POLICIES)
    for r in results:
        interactive = r.ttft(False)
        assert interactive, r.policy
        assert all(r.done is not None or r.failed for r in r.requests)
        p50, p99 = sim.percentile(interactive, 50), sim.percentile(interactive, 99)
        assert 0 <= p50 <= p99
        assert 0 < r.utilisation <= 1
        assert not math.isnan(r.loads_per_hour)
    text = sim.table(results)
    assert all(name in text for name in sim.POLICIES)
    plot = tmp_path / "fleet.png"
    sim.plot(results, plot)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the same seed, the same day
    assert sim.table(sim.simulate(config, ["gateway"])) == sim.table(results[2:])
    # the pool's modules read the real clock again
    assert pool_module.time is time and state_module.time is time


def test_the_gateway_prefers_a_loaded_model_where_least_outstanding_goes_cold(
    sim: ModuleType,
) -> None:
    """Backend A has the model loaded and one request in flight; B is idle and has to load
    it: least outstanding picks B, the pool's expected-wait ranking (a free slot on A
    against B's cold load) picks A."""
    config = sim.Config(backends=2)
    model = sim.MODELS[0]
    loaded, idle = (plan.name for plan in sim.build_fleet(2))
    firsts = {}
    for policy in ("least outstanding", "gateway"):
        run = sim.Simulation(config, sim.make_workload(config), policy)
        try:
            a, b = run.backends[loaded], run.backends[idle]
            assert model.name in a.installed and model.name in b.installed
            run.settle(a.preload(model))
            a.outstanding += 1
            next(s for s in run.pool.states if s.spec.name == loaded).outstanding += 1
            req = sim.Request(model, prompt_tokens=100, out_tokens=10, batch=False, arrival=0)
            firsts[policy] = run.choose(req)[0]
        finally:
            run.close()
    assert firsts["least outstanding"] == idle
    assert firsts["gateway"] == loaded


def test_the_gateway_runs_the_pools_placement_keep_warm_and_affinity(sim: ModuleType) -> None:
    """The gateway's pool is given placement rules, warm models and affinity, and its own
    code applies them: a placed model never runs off the backends its rule allows, the
    warm loads come from the pool's keep-warm, and follow-up turns go where affinity
    remembered them."""
    config = small(sim)
    run = sim.Simulation(config, sim.make_workload(config), "gateway")
    pool = run.pool
    big = next(m for m in sim.MODELS if m.size == "XL")
    rule = pool.rule_for(big.name)
    assert rule is not None and rule.targets == ("tag:gpu-big",)
    assert pool.keep_warm.wanted == sim.keep_warm_map() and pool.keep_warm
    assert pool.prefix_routing
    result = run.run()

    tags = {plan.name: plan.gpu.name for plan in sim.build_fleet(config.backends)}
    placed = [r for r in result.requests if r.model.size in sim.PLACEMENT and r.backend]
    assert placed  # the workload has L and XL requests, and they ran
    for r in placed:
        assert f"gpu-{tags[r.backend]}" in sim.PLACEMENT[r.model.size], (r.model.name, r.backend)
    assert result.preloads > 0  # the pool's keep-warm loaded models
    assert result.affinity_hits > 0
    assert result.cached > 0

    for policy in ("round robin", "pool ranking only"):  # the rules are off for these
        other = sim.Simulation(config, sim.make_workload(config), policy)
        try:
            assert other.pool.rule_for(big.name) is None
            assert not other.pool.keep_warm and not other.pool.prefix_routing
        finally:
            other.close()
