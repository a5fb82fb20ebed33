"""Hand-built 2-layer, 3-expert scenarios with exact timelines (STYLE rule 10).

The machine is made of round numbers: an expert copy takes 1 ms, a layer's attention 0.1 ms, its experts
0.1 ms each plus 0.1 ms per token (one expert, one token: 0.2 ms), a draft forward 2 x (0.1 + 0.15) =
0.5 ms, a routing D2H copy 10 us, the LM head nothing. Each scenario's full event log [(t_ms, event, layer, expert)] is compared with
tests/golden/sim_<name>.json; set MOESPEQ_UPDATE_GOLDEN=1 to rewrite them after a deliberate change,
and review the diff. The first scenario's timeline is also derived by hand in its test.
"""

import json
import os
from pathlib import Path

import numpy as np
import pytest

from moespeq.budget import BudgetConfig, plan_memory
from moespeq.hardware import BandwidthTable, HardwareProfile
from moespeq.sim.run import SimConfig, simulate
from moespeq.spec import ModelSpec
from moespeq.trace import LookaheadTrace, SequenceTrace, TraceMeta

GOLDEN = Path(__file__).parent / "golden"
TINY = ModelSpec(name="tiny3", arch="mixtral", layers=2, experts=3, top_k=1, hidden=128, moe_ffn=256,
                 heads=2, kv_heads=2, head_dim=64, vocab=100)
ROW_BYTES = TINY.moe_layers * TINY.top_k * 4  # one draft forward's routing ids + weights


def tiny_hardware(copy_engines: int = 2) -> HardwareProfile:
    copy = BandwidthTable((1,), (TINY.expert_bytes_bf16 / 1e-3 / 1e9,))  # one expert in exactly 1 ms
    d2h = BandwidthTable((1,), (ROW_BYTES / 1e-5 / 1e9,))  # one routing row in 10 us
    geometry = {"hidden": TINY.hidden, "moe_ffn": TINY.moe_ffn, "experts": TINY.experts, "top_k": TINY.top_k}
    tables = {  # the schema `moespeq calibrate` writes; layer time 0.1 ms per expert + 0.1 ms per token
        "attention_layer_s": {TINY.name: {"context": [0, 10_000], "time_s": [1e-4, 1e-4]}},
        "moe_bf16_layer_s": {TINY.name: {**geometry, "tokens": [1, 2, 3], "distinct_experts": [1, 2, 3],
                                         "time_s": [[2e-4, None, None], [3e-4, 4e-4, None], [4e-4, 5e-4, 6e-4]]}},
        "moe_int4_layer_s": {TINY.name: {**geometry, "tokens": [1], "distinct_experts": [1], "time_s": [[1.5e-4]]}},
    }
    return HardwareProfile(name="golden", gpu="made of round numbers", source="tests", gpu_memory_bytes=10**12,
                           h2d_pinned=copy, h2d_pageable=copy, d2h_pinned=d2h, h2d_during_d2h_gbps=1e6,
                           copy_latency_s=0.0, copy_engines=copy_engines, hbm_gbps=1e15, bf16_tflops=1e15,
                           launch_overhead_s=0.0, kernel_tables=tables)


def tiny_trace(prompt, target, draft=None, verify=None, draft_tokens=None, tokens=None) -> LookaheadTrace:
    """Routing as nested lists of expert ids: prompt/target [T][L], draft [N][J][L], verify [N][J+1][L]."""
    ids = lambda x: np.asarray(x, dtype=np.int16)[..., None]  # noqa: E731 - add the top-k axis (K = 1)
    ones = lambda a: np.ones(a.shape, dtype=np.float32)  # noqa: E731
    n = len(target)
    j = 0 if draft is None else len(draft[0])
    toks = np.arange(n, dtype=np.int64) if tokens is None else np.asarray(tokens, dtype=np.int64)
    seq = SequenceTrace(
        prompt_tokens=np.arange(len(prompt), dtype=np.int64), prompt_ids=ids(prompt), prompt_weights=ones(ids(prompt)),
        tokens=toks, target_ids=ids(target), target_weights=ones(ids(target)),
        draft_tokens=np.asarray(draft_tokens if j else np.zeros((n, 0)), dtype=np.int64).reshape(n, j),
        draft_ids=ids(draft) if j else np.zeros((n, 0, 2, 1), np.int16),
        draft_weights=ones(ids(draft)) if j else np.zeros((n, 0, 2, 1), np.float32),
        verify_ids=ids(verify) if j else np.zeros((n, 0, 2, 1), np.int16),
        verify_weights=ones(ids(verify)) if j else np.zeros((n, 0, 2, 1), np.float32))
    meta = TraceMeta(model=TINY, k_max=j, routing_source="synthetic:hand-built", lookahead=bool(j))
    return LookaheadTrace(meta, [seq])


def budget_for(system: str, slots: int) -> int:
    """The budget that leaves exactly `slots` cache slots to `system` (context 16 tokens)."""
    layout = plan_memory(BudgetConfig(model=TINY, budget_bytes=10**12, system=system, context=16))
    return layout.used_bytes - layout.cache_bytes + slots * TINY.expert_bytes_bf16


def run(trace, system, slots, **policy):
    from moespeq.sim.systems import get_system

    cfg = get_system(system).policy(TINY.name)
    cfg = cfg.replace(**policy) if policy else cfg
    sim = SimConfig(system=system, budget_bytes=budget_for(system, slots), hardware=tiny_hardware(),
                    policy=cfg, context=16, record=True)
    return simulate(trace, sim)


def check_golden(name: str, result) -> list:
    log = [[round(t * 1e3, 6), ev, layer, expert] for t, ev, layer, expert in result.recorder.log()]
    path = GOLDEN / f"sim_{name}.json"
    if os.environ.get("MOESPEQ_UPDATE_GOLDEN"):
        GOLDEN.mkdir(exist_ok=True)
        path.write_text("[\n" + ",\n".join(json.dumps(row) for row in log) + "\n]\n")  # one event per line
    assert log == json.loads(path.read_text()), f"timeline differs from {path}"
    return log


def test_lru_per_layer_timeline_by_hand():
    # prompt: layer 0 -> expert 0, layer 1 -> expert 1; decode y0: (0, 2), y1: (1, 2); one slot per layer
    trace = tiny_trace(prompt=[[0, 1]], target=[[0, 2], [1, 2], [1, 0]])
    r = run(trace, "lru-sm", slots=2)
    log = check_golden("lru", r)
    copies = [(t, layer, expert) for t, ev, layer, expert in log if ev == "h2d_copy"]
    # prefill: (0,0) copied after layer 0's attention [0.1, 1.1]; (1,1) after layer 1's [1.4, 2.4]
    # decode y0: (0,0) hits; (1,2) evicts (1,1), copied [3.0, 4.0]; decode y1: (0,1) evicts (0,0) [4.3, 5.3]
    assert copies == [(0.1, 0, 0), (1.4, 1, 1), (3.0, 1, 2), (4.3, 0, 1)]
    assert r.metrics["ttft_ms"] == pytest.approx(2.6)
    assert r.metrics["tpot_ms"] == pytest.approx((5.8 - 2.6) / 2)
    assert r.metrics["hit_rate"] == pytest.approx(2 / 4)
    assert r.metrics["stall_ms_per_token"] == pytest.approx(2.0 / 2)


def test_ondemand_streams_prefill_through_its_staging_slot():
    # the prompt needs 3 experts of layer 0 but ondemand has top-k = 1 slot: copy, compute, release, repeat
    trace = tiny_trace(prompt=[[0, 0], [1, 0], [2, 0]], target=[[0, 0], [0, 0]])
    r = run(trace, "ondemand", slots=1)
    check_golden("ondemand", r)
    assert r.counters["loads_demand"] == 3 + 1 + 2  # prefill (0,0) (0,1) (0,2) (1,0), decode (0,0) (1,0)
    assert r.metrics["hit_rate"] == 0.0


def test_hf_offload_copies_whole_layers():
    trace = tiny_trace(prompt=[[0, 1]], target=[[0, 2], [1, 2]])
    r = run(trace, "hf-offload", slots=3)
    log = check_golden("hf", r)
    assert [e for e in log if e[1] == "h2d_copy"][-1][3] == -1  # a whole-layer copy
    assert r.h2d_bytes == 4 * 3 * TINY.expert_bytes_bf16  # 2 layers x (prefill + 1 decode step) x 3 experts


def _speq_trace():
    # Routing per input is (layer-0 expert, layer-1 expert). A cycle at n = 0 with k = 2: the draft's rows
    # predict x_0 -> (0, 2) and x_1 -> (1, 2), but verification routes x_1 to (0, 2) (a miss at layer 0) and
    # the second draft token x_2 to (2, 1). d[0, 0] is accepted, d[0, 1] rejected: the cycle emits y1, y2.
    # Then n = 2, where the trace end caps k at 0: one plain step with R[2] = (1, 1) emits y3.
    draft = [[[0, 2], [1, 2]], [[0, 0], [0, 0]], [[0, 0], [0, 0]], [[0, 0], [0, 0]]]
    verify = [[[0, 2], [0, 2], [2, 1]], [[0, 2], [0, 0], [0, 0]], [[1, 1], [0, 0], [0, 0]], [[0, 0], [0, 0], [0, 0]]]
    target = [[0, 2], [0, 2], [1, 1], [0, 0]]
    draft_tokens = [[1, 99], [2, 3], [3, 99], [99, 99]]
    return tiny_trace(prompt=[[0, 1]], target=target, draft=draft, verify=verify, draft_tokens=draft_tokens,
                      tokens=[0, 1, 2, 3])


def test_speq_cycle_prefetches_from_the_elb_and_loads_rejected_tokens_experts():
    r = run(_speq_trace(), "speq-static", slots=4, governor={"kind": "static", "k": 2})
    log = check_golden("speq", r)
    issued = [(layer, expert) for _, ev, layer, expert in log if ev == "prefetch_issue"]
    assert issued == [(1, 2), (0, 1)]  # Phase I (row 0, (0, 0) is cached), Phase III (row 1): (1, 2) already asked
    assert r.stats.cycle_k == [2, 0] and r.metrics["accepted_per_cycle"] == 0.5
    # the rejected token x_2 routes to (2, 1): its experts are loaded and computed too
    assert any(ev == "expert_compute" and layer == 0 and expert == 2 for _, ev, layer, expert in log)


def test_one_copy_engine_queues_routing_copies_with_expert_copies():
    r = simulate(_speq_trace(), SimConfig(system="speq-static", budget_bytes=budget_for("speq-static", 4),
                                          hardware=tiny_hardware(copy_engines=1), context=16, record=True))
    check_golden("speq_one_engine", r)
    assert r.metrics["tokens"] == 3
