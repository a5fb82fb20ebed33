"""Quiet passes (a pass on an idle machine run as plain arithmetic) give exactly the results of the same pass
run as SimPy events, and a recorded timeline changes no metric."""

import dataclasses
import json

import numpy as np
import pytest

from moespeq.hardware import get_hardware
from moespeq.sim.cycle import Decoder, numpy_sum
from moespeq.sim.run import SimConfig, simulate
from moespeq.spec import get_model
from moespeq.traces.synth import SynthConfig, synthesize

GIB = 2**30
SETUPS = [  # model, budget GiB, hardware, locality
    ("phi-3.5-moe", 30, "a100-40g-pcie4", 0.25),
    ("phi-3.5-moe", 36, "one-engine", 0.4),  # D2H copies share the H2D engine's queue
    ("qwen1.5-moe-a2.7b", 12, "half-overlap", 0.3),  # kernels stretched while a copy runs
    ("deepseek-v2-lite", 14, "h200-pcie5", 0.6),
    ("mixtral-8x7b", 40, "a100-40g-pcie4", 0.1),
]
SYSTEMS = ("speq", "speq-static", "lru-sm", "lru-sc", "ondemand", "oracle")


def _hardware(name):
    if name == "one-engine":
        return dataclasses.replace(get_hardware("a100-40g-pcie4"), name=name, copy_engines=1)
    if name == "half-overlap":
        return dataclasses.replace(get_hardware("a100-40g-pcie4"), name=name, copy_compute_overlap=0.5)
    return get_hardware(name)


def _result(trace, system, budget, hardware, record=False):
    r = simulate(trace, SimConfig(system=system, budget_bytes=budget * GIB, hardware=_hardware(hardware),
                                  record=record))
    return json.dumps([r.metrics, r.counters, r.stats.cycle_k, r.h2d_bytes], sort_keys=True)


@pytest.mark.parametrize("model,budget,hardware,locality", SETUPS)
def test_quiet_passes_equal_event_passes(monkeypatch, model, budget, hardware, locality):
    trace = synthesize(SynthConfig(model=get_model(model), seqs=2, tokens=40, prompt_len=12, locality=locality,
                                   seed=budget))
    quiet_calls = []
    quiet_pass = Decoder._quiet_pass
    monkeypatch.setattr(Decoder, "_quiet_pass", lambda self, *a: quiet_calls.append(1) or quiet_pass(self, *a))
    for system in SYSTEMS:
        quiet_calls.clear()
        fast = _result(trace, system, budget, hardware)
        if system in ("lru-sm", "ondemand", "speq"):
            assert quiet_calls, f"{system}: no pass ran quiet, so this test compares nothing"
        monkeypatch.setattr(Decoder, "quiet_passes", False)
        events = _result(trace, system, budget, hardware)
        monkeypatch.setattr(Decoder, "quiet_passes", True)
        assert fast == events, system


@pytest.mark.parametrize("system", ["lru-sm", "speq", "oracle", "hf-offload"])
def test_recording_a_timeline_changes_no_metric(system):
    trace = synthesize(SynthConfig(model=get_model("phi-3.5-moe"), seqs=1, tokens=40, prompt_len=12, seed=5))
    assert _result(trace, system, 30, "a100-40g-pcie4") == _result(trace, system, 30, "a100-40g-pcie4", record=True)


def test_numpy_sum_is_numpys_sum():
    rng = np.random.default_rng(0)
    for n in range(1, 21):
        for _ in range(200):
            values = (rng.random(n) * 10.0 ** rng.uniform(-7, -2, n)).tolist()
            assert numpy_sum(values) == float(np.add.reduce(values))


@pytest.mark.parametrize("seed", range(6))
def test_quiet_passes_equal_event_passes_on_random_setups(monkeypatch, seed):
    # fresh random geometry, routing, machine and budget each seed (fixed seeds, so a failure reproduces)
    rng = np.random.default_rng(seed)
    model, (lo, hi) = [("phi-3.5-moe", (26, 60)), ("deepseek-v2-lite", (10, 30)), ("mixtral-8x7b", (30, 80)),
                       ("qwen1.5-moe-a2.7b", (8, 28)), ("olmoe-1b-7b", (4, 14))][seed % 5]
    trace = synthesize(SynthConfig(model=get_model(model), seqs=1, tokens=int(rng.integers(10, 40)),
                                   prompt_len=int(rng.integers(4, 20)), k_max=int(rng.choice([2, 4, 8])),
                                   locality=float(rng.uniform(0, 0.8)), acceptance=float(rng.uniform(0.3, 0.95)),
                                   seed=seed))
    hw = get_hardware(str(rng.choice(["a100-40g-pcie4", "h200-pcie5", "rtx4090-pcie4"])))
    hw = dataclasses.replace(hw, copy_compute_overlap=float(rng.choice([1.0, rng.uniform(0.3, 1.0)])),
                             copy_engines=int(rng.choice([1, 2])))
    budget = int(rng.uniform(lo, hi) * GIB)
    for system in ("speq", "lru-sm", "ondemand"):
        out = []
        for quiet in (True, False):
            monkeypatch.setattr(Decoder, "quiet_passes", quiet)
            r = simulate(trace, SimConfig(system=system, budget_bytes=budget, hardware=hw, seed=seed))
            out.append(json.dumps([r.metrics, r.counters, r.stats.cycle_k, r.h2d_bytes], sort_keys=True))
        assert out[0] == out[1], (seed, system)
