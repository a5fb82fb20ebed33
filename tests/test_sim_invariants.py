"""Invariants of the simulator that any honest model of the machine must satisfy (issue 3)."""

import dataclasses

import numpy as np
import pytest

from moespeq.budget import BudgetConfig, plan_memory
from moespeq.hardware import BandwidthTable, get_hardware
from moespeq.sim.costs import CostModel
from moespeq.sim.cycle import accepted_table, k_cap, step_routing
from moespeq.sim.run import SimConfig, simulate
from moespeq.sim.systems import SYSTEMS, get_system
from moespeq.spec import get_model
from moespeq.traces.synth import SynthConfig, synthesize

PHI = get_model("phi-3.5-moe")
A100 = get_hardware("a100-40g-pcie4")
GIB = 2**30
CACHED = ("lru-sc", "lru-sm", "gate-prefetch", "eam-prefetch", "speq", "speq-static", "oracle")


@pytest.fixture(scope="module")
def trace():
    return synthesize(SynthConfig(model=PHI, seqs=1, tokens=48, prompt_len=16, k_max=4, seed=1))


def _sim(trace, system, budget=36 * GIB, hardware=A100, **kw):
    return simulate(trace, SimConfig(system=system, budget_bytes=budget, hardware=hardware, **kw))


def compute_bound_s(trace, costs, cycle_k):
    """Seconds of draft and verify compute of the given cycles with every expert resident."""
    total, cycles = 0.0, iter(cycle_k)
    offsets = np.arange(PHI.moe_layers)[None, :, None] * PHI.experts
    for seq in trace.sequences:
        acc, n = accepted_table(seq), 0
        while n < seq.n_tokens - 1:
            k = next(cycles)
            assert k <= k_cap(trace, seq, n)
            ctx = seq.n_prompt + n
            counts = np.bincount((step_routing(seq, n, k).astype(np.int64) + offsets).ravel(),
                                 minlength=PHI.moe_layers * PHI.experts).reshape(PHI.moe_layers, PHI.experts)
            total += sum(costs.draft_step_s(ctx + j) for j in range(k)) + costs.forward_s(counts, ctx)
            n += int(acc[n, k]) + 1
    return total


def test_oracle_is_a_lower_bound(trace):
    oracle = _sim(trace, "oracle").metrics["tpot_ms"]
    for name in SYSTEMS:
        assert oracle <= _sim(trace, name).metrics["tpot_ms"] + 1e-9, name


@pytest.mark.parametrize("system", CACHED)
def test_a_cache_holding_every_expert_reaches_the_compute_bound(trace, system):
    h200 = get_hardware("h200-pcie5")
    result = _sim(trace, system, budget=130 * GIB, hardware=h200, warm_start=True)
    m = result.metrics
    assert abs(m["stall_ms_per_token"]) < 1e-9 and m["pcie_gb"] == 0.0 and m["hit_rate"] == 1.0
    # speculation is the only thing left to gain: the time is exactly the cycles' draft + verify compute
    bound = compute_bound_s(trace, CostModel(PHI, h200), result.stats.cycle_k) / m["tokens"]
    assert m["tpot_ms"] == pytest.approx(bound * 1e3, rel=1e-9)
    if not get_system(system).speculative and system != "oracle":
        assert m["mean_k"] == 0.0


def test_unbounded_pcie_makes_hf_offload_equal_all_on_gpu(trace):
    fast = BandwidthTable((1,), (1e12,))
    hw = dataclasses.replace(A100, name="unbounded", h2d_pinned=fast, h2d_pageable=fast, d2h_pinned=fast,
                             h2d_during_d2h_gbps=1e12, copy_latency_s=0.0)
    m = _sim(trace, "hf-offload", hardware=hw).metrics
    bound = compute_bound_s(trace, CostModel(PHI, hw), [0] * m["cycles"]) / m["tokens"]
    assert m["tpot_ms"] == pytest.approx(bound * 1e3, rel=1e-6)


@pytest.mark.parametrize("system", list(SYSTEMS))
def test_bytes_moved_are_loads_times_expert_bytes(trace, system):
    r = _sim(trace, system)
    loads = r.counters["loads_demand"] + r.counters["loads_prefetch"]
    assert loads > 0 and r.h2d_bytes == loads * PHI.expert_bytes_bf16
    assert r.metrics["tpot_ms"] == pytest.approx(
        r.metrics["draft_ms_per_token"] + r.metrics["verify_ms_per_token"] + r.metrics["stall_ms_per_token"])


@pytest.mark.parametrize("system", ["gate-prefetch", "speq"])
def test_same_seed_same_output(trace, system):
    a, b = _sim(trace, system, seed=7), _sim(trace, system, seed=7)
    assert a.metrics == b.metrics and a.stats.token_rows == b.stats.token_rows


def test_another_seed_changes_random_gate_predictions(trace):
    assert _sim(trace, "gate-prefetch", seed=1).metrics != _sim(trace, "gate-prefetch", seed=2).metrics


def test_governor_turns_speculation_off_when_drafts_are_rejected():
    bad = synthesize(SynthConfig(model=PHI, seqs=1, tokens=96, prompt_len=16, k_max=4, acceptance=0.02, seed=3))
    ks = _sim(bad, "speq").stats.cycle_k
    warmup = get_system("speq").governor.warmup
    assert ks[:warmup] == [4] * warmup
    after = ks[warmup:]
    assert after.count(0) >= 0.8 * len(after), after



def _static_tpot(trace, k, **kw):
    policy = get_system("speq-static").policy(trace.meta.model.name).replace(governor={"k": k})
    return _sim(trace, "speq-static", policy=policy, **kw).metrics["tpot_ms"]


def test_governor_stays_near_k0_when_long_drafts_thrash_the_cache():
    # Consecutive tokens repeat experts (locality 0.85): decoding one token at a time keeps them cached,
    # while each long cycle loads many tokens' experts into speq's 86 slots and evicts the reused ones, so
    # k = 8 is 1.60x slower than k = 0 although drafts are accepted. Measured speq / (k = 0): 1.07 (the
    # warm-up at k_max and the k = 1 probes); the governor that judged k = 0 by the cache it was
    # speculating on: 1.62.
    local = synthesize(SynthConfig(model=PHI, seqs=1, tokens=384, prompt_len=16, k_max=8, locality=0.85, seed=2))
    plain = _static_tpot(local, 0)
    assert _static_tpot(local, 8) > 1.3 * plain
    assert _sim(local, "speq").metrics["tpot_ms"] < 1.2 * plain


def test_governor_speculates_when_tokens_share_experts():
    # DeepSeek geometry with repeating routing on the H200: verifying k + 1 tokens reads far fewer experts
    # than uniform routing would (what the profiled T_verify assumes), so drafts pay (k = 0 is 1.32x the
    # best static k). Measured speq / best static: 1.05; with the uniform T_verify: 1.13.
    deepseek, h200 = get_model("deepseek-v2-lite"), get_hardware("h200-pcie5")
    trace = synthesize(SynthConfig(model=deepseek, seqs=1, tokens=384, prompt_len=16, k_max=8, locality=0.5,
                                   acceptance=0.95, seed=2))
    best = min(_static_tpot(trace, k, budget=40 * GIB, hardware=h200) for k in range(9))
    assert _sim(trace, "speq", budget=40 * GIB, hardware=h200).metrics["tpot_ms"] < 1.1 * best

# Tolerance of the roofline model (Theta(k) from the measured acceptance and new-expert counts) against
# the simulated throughput at static k. The model counts each new expert once and adds its copy to the
# compute (paper Eq. 3); the simulation overlaps copies with verification but also reloads experts evicted
# within a cycle and pays for wrong prefetches. Measured: the model is 2.5-4.2 % optimistic for k = 0..8 on
# the demo trace and on this one.
ROOFLINE_TOLERANCE = 0.08


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_roofline_theta_matches_simulated_throughput(trace, k):
    from moespeq.policy.roofline import t_cycle

    policy = get_system("speq-static").policy(PHI.name).replace(governor={"k": k})
    r = _sim(trace, "speq-static", policy=policy)
    m, stats = r.metrics, r.stats
    costs = CostModel(PHI, A100)
    perf = costs.perf_model(trace.sequences[0].n_prompt + 24, 4, A100.h2d_time_s(PHI.expert_bytes_bf16))
    n_first, n_all = stats.new_first / stats.cycles, stats.new_all / stats.cycles
    new = [n_first] + [n_all] * k  # N_new(1) and N_new(k + 1) are what T_cycle(k) reads
    predicted = (m["accepted_per_cycle"] + 1) / t_cycle(perf, k, new)  # Theta(k) at the measured acceptance
    assert m["tokens_per_s"] == pytest.approx(predicted, rel=ROOFLINE_TOLERANCE)


def test_budget_layout_feeds_slots(trace):
    r = _sim(trace, "lru-sm", budget=30 * GIB)
    assert r.metrics["memory"] == plan_memory(BudgetConfig(model=PHI, budget_bytes=30 * GIB, system="lru-sm")).to_dict()


def test_target_only_traces_get_synthesized_lookahead_and_say_so(trace):
    seq = trace.sequences[0]
    n = seq.n_tokens
    empty = {"draft_tokens": np.zeros((n, 0), np.int64), "draft_ids": np.zeros((n, 0, 32, 2), np.int16),
             "draft_weights": np.zeros((n, 0, 32, 2), np.float32), "verify_ids": np.zeros((n, 0, 32, 2), np.int16),
             "verify_weights": np.zeros((n, 0, 32, 2), np.float32)}
    imported = dataclasses.replace(trace, meta=dataclasses.replace(trace.meta, lookahead=False, k_max=0,
                                                                   routing_source="import:test"),
                                   sequences=[dataclasses.replace(seq, **empty)])
    speq = _sim(imported, "speq")
    assert speq.routing_source.startswith("import:test+synthetic-lookahead(") and speq.metrics["mean_k"] > 0
    lru = _sim(imported, "lru-sm")
    assert lru.routing_source == "import:test" and lru.metrics["tokens"] == n - 1
