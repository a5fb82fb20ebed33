"""Prefetchers and the ELB three-phase scheduler: which requests each decision point yields."""

import numpy as np

from moespeq.policy.cache import ExpertCache
from moespeq.policy.elb import ExpertLookaheadBuffer
from moespeq.policy.eviction import FutureUses, make_eviction
from moespeq.policy.prefetch import EamPrefetcher, GatePrefetcher, PerfectPrefetcher
from moespeq.policy.roofline import PerfModel
from moespeq.policy.scheduler import ElbScheduler


def _cache(layers=3, experts=4, slots=12):
    return ExpertCache(layers, experts, [slots], make_eviction("lru", layers, experts))


def test_gate_prefetcher_requests_the_predicted_next_layer_minus_resident():
    cache = _cache()
    cache.preload([1 * 4 + 2])  # (layer 1, expert 2) cached
    pf = GatePrefetcher(cache)
    pf.begin_step(5, tokens=1, k=0)
    reqs = pf.on_router(0, np.array([[0, 1]]), predicted_next=np.array([[2, 3]]))
    assert reqs == [(5, 1, 3, 1.0)]
    assert pf.on_router(2, np.array([[0, 1]]), predicted_next=None) == []


def test_eam_prefetcher_matches_stored_matrices():
    cache = _cache(layers=2, experts=4)
    pf = EamPrefetcher(cache, top_k=1, window=1)
    pf.begin_step(0, tokens=1, k=0)
    pf.on_router(0, np.array([[0]]), None)
    pf.on_router(1, np.array([[3]]), None)  # stored: layer 0 -> 0, layer 1 -> 3
    pf.end_step(1)
    pf.begin_step(1, tokens=1, k=0)
    pf.end_step(0)
    reqs = pf.on_router(0, np.array([[0]]), None)
    assert reqs == [(1, 1, 3, 1.0)]
    assert pf.on_router(0, np.array([[0]]), None) == []  # not asked twice in one step


def test_perfect_prefetcher_fetches_this_step_then_next_step_per_layer():
    need = np.zeros((2, 2, 3), dtype=bool)
    need[0, 0, 1] = need[0, 1, 2] = need[1, 0, 0] = True
    cache = _cache(layers=2, experts=3, slots=6)
    pf = PerfectPrefetcher(cache, FutureUses(need))
    assert pf.begin_step(0, tokens=1, k=0) == [(0, 0, 1, 0.0), (0, 1, 2, 0.0)]
    assert pf.on_layer_done(0) == [(1, 0, 0, 0.0)]
    assert pf.on_layer_done(1) == []


def test_elb_scheduler_phases():
    layers, experts = 3, 4
    elb = ExpertLookaheadBuffer(layers, experts)
    cache = ExpertCache(layers, experts, [12], make_eviction("lookahead", layers, experts, elb=elb))
    cache.preload([0 * experts + 0])
    perf = PerfModel(draft_base_s=0.0, draft_token_s=1.0, verify_s=(1.0,) * 5, copy_s=1.0, expert_bytes=1,
                     verify_layer_s=(0.5,) * 5)
    sched = ElbScheduler(cache, elb, perf, aggressiveness=1.0)
    sched.begin_step(0, tokens=4, k=3)
    rows = [np.array([[0], [1], [2]]), np.array([[1], [2], [3]]), np.array([[2], [3], [0]])]
    w = np.ones((layers, 1))
    out = []
    for j, ids in enumerate(rows):
        elb.add(ids, w)
        out.append(sched.on_draft_row(j, ids, w, backlog_s=0.0))
    # Phase I: row 0 minus the cached (0, 0), layer order
    assert [(r[1], r[2]) for r in out[0]] == [(1, 1), (2, 2)]
    # Phase II (row 1 of k=3): one draft step left (1 s) + layer * 0.5 s; a copy takes 1 s
    # candidates (0,1) needs 1 s -> fits; (1,2) second copy ends at 2 s > 1.5 s -> waits
    assert [(r[1], r[2]) for r in out[1]] == [(0, 1)]
    # Phase III: everything else predicted
    assert sorted((r[1], r[2]) for r in out[2]) == [(0, 2), (1, 2), (1, 3), (2, 0), (2, 3)]
    assert sched.phase_counts == [2, 1, 5]


def test_elb_start_empties_it_whatever_came_before():
    # start() skips clearing a buffer nothing was added to since the last start: after any history the buffer
    # must read as a fresh one
    layers, experts = 3, 5
    rng = np.random.default_rng(11)
    elb = ExpertLookaheadBuffer(layers, experts)
    fresh = ExpertLookaheadBuffer(layers, experts)
    for _ in range(30):
        k = int(rng.integers(0, 3))
        elb.start(k)
        fresh.start(k)
        for name in ("mask", "reuse", "confidence", "first_row", "_predicted_layer"):
            np.testing.assert_array_equal(getattr(elb, name), getattr(fresh, name), err_msg=name)
        np.testing.assert_array_equal(elb.next_use(), fresh.next_use())
        assert (elb.k, elb.rows, elb.verify_layer) == (fresh.k, fresh.rows, fresh.verify_layer)
        for _ in range(int(rng.integers(0, 2)) * k):
            elb.add(np.stack([rng.choice(experts, 2, replace=False) for _ in range(layers)]), rng.random((layers, 2)))
        for layer in range(int(rng.integers(0, layers + 1))):
            elb.verify_at(layer)
