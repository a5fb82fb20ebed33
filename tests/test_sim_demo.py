"""The bundled demo trace at the default budget: what `moespeq simulate` prints with no arguments."""

import pytest

from moespeq.commands.simulate import DEFAULT_BUDGET, DEFAULT_HARDWARE
from moespeq.hardware import get_hardware
from moespeq.sim.run import SimConfig, simulate
from moespeq.sim.systems import get_system
from moespeq.trace import demo_trace_path, read_trace
from moespeq.units import parse_bytes


@pytest.fixture(scope="module")
def tpot():
    trace = read_trace(demo_trace_path())
    hw, budget = get_hardware(DEFAULT_HARDWARE), parse_bytes(DEFAULT_BUDGET)
    return {s: simulate(trace, SimConfig(system=s, budget_bytes=budget, hardware=hw)).metrics["tpot_ms"]
            for s in ("speq", "lru-sm", "lru-sc", "hf-offload")}


@pytest.fixture(scope="module")
def oracle():
    trace = read_trace(demo_trace_path())
    hw, budget = get_hardware(DEFAULT_HARDWARE), parse_bytes(DEFAULT_BUDGET)
    return simulate(trace, SimConfig(system="oracle", budget_bytes=budget, hardware=hw)).metrics


def test_baselines_order_as_in_the_paper(tpot):
    assert tpot["lru-sm"] < tpot["lru-sc"] < tpot["hf-offload"]


def test_speq_without_a_draft_is_no_worse_than_lru_at_the_same_cache(tpot):
    # k = 0 leaves the ELB empty, so lookahead eviction is its LRU fallback over one pool of speq's 86
    # slots; lru-sc is LRU over the same slots split per layer. Measured 255.0 vs 253.6 ms/token (+0.6 %);
    # 2 % allows for the pools differing. Before the fallback judged experts at their next opportunity,
    # speq-static at k = 0 took 305.9 (+21 %).
    trace = read_trace(demo_trace_path())
    hw, budget = get_hardware(DEFAULT_HARDWARE), parse_bytes(DEFAULT_BUDGET)
    policy = get_system("speq-static").policy(trace.meta.model.name).replace(governor={"k": 0})
    k0 = simulate(trace, SimConfig(system="speq-static", budget_bytes=budget, hardware=hw, policy=policy))
    assert k0.metrics["tpot_ms"] <= 1.02 * tpot["lru-sc"]


@pytest.mark.xfail(strict=True, reason=(
    "measured on the demo trace, a100-40g-pcie4, 36GiB: speq 261.2 ms/token (speq-static 261.5, speq-static "
    "at k = 0 255.0), lru-sm 169.6, lru-sc 253.6, hf-offload 3232. speq's INT4 draft (19.3 GiB) leaves it 86 "
    "cache slots against lru-sm's 218, and each cycle needs ~220 distinct experts (k+1 tokens x 2 of 16 per "
    "layer, rejected tokens included), so the cache cannot carry them across cycles (hit rate 23-38 % vs 60 %); "
    "the link is busy >95 % of the time in every system, so prefetching reorders the copies but cannot remove "
    "them. Even Belady eviction with perfect prefetch at speq's memory reaches 169.0 ms/token at best (k = 1; "
    "the oracle's k_sweep), level with lru-sm: no policy that keeps the draft resident beats lru-sm here. "
    "Not forced by tuning."))
def test_speq_beats_lru_sm(tpot):
    assert tpot["speq"] < tpot["lru-sm"]


def test_oracle_bounds_every_draft_length(tpot, oracle):
    trace = read_trace(demo_trace_path())
    hw, budget = get_hardware(DEFAULT_HARDWARE), parse_bytes(DEFAULT_BUDGET)
    sweep = oracle["k_sweep"]
    assert [row["k"] for row in sweep] == list(range(trace.meta.k_max + 1))
    speq_slots = simulate(trace, SimConfig(system="speq-static", budget_bytes=budget, hardware=hw)).layout
    assert sweep[0]["cache_slots"] > speq_slots.cache_slots_total  # k = 0 needs no draft memory
    assert {row["cache_slots"] for row in sweep[1:]} == {speq_slots.cache_slots_total}
    assert oracle["tpot_ms"] == min(row["tpot_ms"] for row in sweep)
    assert tpot["speq"] >= min(row["tpot_ms"] for row in sweep[1:])  # no speculating policy beats the oracle's


def test_no_policy_that_holds_the_draft_beats_lru_sm_by_more_than_one_percent(tpot, oracle):
    # Why test_speq_beats_lru_sm fails here, as a checked fact: at speq's memory (the oracle's k >= 1 rows),
    # Belady eviction with perfect prefetch at the best static draft length only ties lru-sm (169.0 vs 169.6
    # ms/token measured), so better eviction or prefetch cannot close speq's gap.
    assert min(row["tpot_ms"] for row in oracle["k_sweep"][1:]) > 0.99 * tpot["lru-sm"]
