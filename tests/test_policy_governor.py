"""The Amortization Roofline model and governors: formulas, k = 0 when speculation cannot pay, warm-up, probing."""

import numpy as np
import pytest

from moespeq.policy.config import GovernorConfig
from moespeq.policy.governor import (
    NewExpertEstimator,
    PlainDecodeShadow,
    RooflineGovernor,
    StaticGovernor,
    _Ema,
    make_governor,
)
from moespeq.policy.roofline import PerfModel, k_accept, operating_points, t_cycle, theta

PERF = PerfModel(draft_base_s=0.0, draft_token_s=1e-3, verify_s=(10e-3, 11e-3, 12e-3, 13e-3, 14e-3),
                 copy_s=2e-3, expert_bytes=1000)


def test_k_accept_is_sum_of_prefix_products():
    assert k_accept([0.5, 0.5, 0.5], 3) == pytest.approx(0.5 + 0.25 + 0.125)
    assert k_accept([0.9], 0) == 0.0


def test_t_cycle_overlaps_the_first_tokens_fetch_with_drafting():
    new = [3.0, 5.0, 6.0]  # new experts when verifying 1, 2, 3 tokens
    # k=2: max(T_draft = 2 ms, T_init = 3 * 2 ms) + (6 - 3) * 2 ms + T_verify(3) = 6 + 6 + 12
    assert t_cycle(PERF, 2, new) == pytest.approx(24e-3)
    # k=0: no draft, so nothing overlaps: 3 * 2 ms + 10 ms
    assert t_cycle(PERF, 0, new) == pytest.approx(16e-3)
    assert theta(PERF, 2, [1.0, 1.0], new) == pytest.approx(3 / 24e-3)


def test_operating_points_lie_under_both_roofs():
    for row in operating_points(PERF, [0.9] * 4, [3.0, 4.0, 5.0, 6.0, 7.0], k_max=4):
        assert row["theta_tok_s"] <= row["compute_roof_tok_s"] + 1e-9
        assert row["theta_tok_s"] <= row["io_roof_tok_s"] + 1e-9


def _roofline(**kw):
    cfg = GovernorConfig(kind="roofline", **{"k_max": 4, "warmup": 2, **kw})
    return RooflineGovernor(cfg, PERF, layers=2, experts=4, top_k=1, capacity=[8])


def _feed(gov, accept_prob, cycles, rng):
    for _ in range(cycles):
        k = gov.choose(k_cap=4)
        accepted = int(np.cumprod(rng.random(k) < accept_prob).sum()) if k else 0
        verify = np.zeros((k + 1, 2, 1), dtype=np.int64)  # all tokens route to expert 0: all cached
        gov.observe(k, accepted, verify, np.ones((2, 4), dtype=bool))
    return gov


def test_governor_picks_k0_when_acceptance_is_near_zero():
    gov = _feed(_roofline(), accept_prob=0.01, cycles=40, rng=np.random.default_rng(0))
    assert gov.choose(k_cap=4) == 0


def test_governor_speculates_when_acceptance_is_high_and_experts_are_cached():
    gov = _feed(_roofline(), accept_prob=0.99, cycles=40, rng=np.random.default_rng(0))
    # cached experts, 1 ms drafts and a flat verify cost: the longest draft pays most
    assert gov.choose(k_cap=4) == 4
    assert gov.choose(k_cap=2) == 2  # the trace end caps k


def test_warmup_runs_at_k_max_and_probing_revisits_k1_less_often_when_it_fails():
    gov = _roofline(probe_interval=3)
    assert [gov.choose(4) for _ in range(1)] == [4]
    _feed(gov, accept_prob=0.0, cycles=2, rng=np.random.default_rng(0))
    ks = []
    for _ in range(24):
        k = gov.choose(4)
        ks.append(k)
        gov.observe(k, 0)
    # a probe after 3 cycles at k = 0; each one rejected doubles the wait (3, 6, 12 cycles)
    assert [i for i, k in enumerate(ks) if k] == [3, 10, 23]


def test_new_expert_estimator_measures_against_cache_start_and_extrapolates():
    est = NewExpertEstimator(t_max=4, layers=1, experts=4, top_k=1, slots=0, ema=0.5)
    resident = np.array([[True, False, False, False]])
    verify = np.array([[[0]], [[1]]])  # token 1 needs cached expert 0, token 2 needs new expert 1
    est.observe(verify, resident)
    first, cycle = est.levels()  # per draft length k: N_new(1) and N_new(k + 1)
    assert first[1] == 0.0 and cycle[1] == 1.0  # the k = 1 cycle it saw
    assert cycle[3] > cycle[2] > cycle[1]  # longer drafts: scaled by the uniform-routing shape


def test_static_and_off_governors():
    assert StaticGovernor(3).choose(k_cap=2) == 2
    assert make_governor(GovernorConfig(kind="off")).choose(8) == 0


def _lru_misses(routing, capacity):
    """Per token, the misses of a plain LRU cache (one pool when capacity has one entry, else one per layer)
    that loads a token's experts together: none of them is evicted for another of the same token."""
    from collections import OrderedDict
    pools = [OrderedDict() for _ in capacity]
    out = []
    for ids in routing:  # [L, K]
        missed = 0
        for layer, row in enumerate(ids):
            pool = pools[0] if len(capacity) == 1 else pools[layer]
            for e in row:
                missed += (layer, int(e)) not in pool
        for layer, row in enumerate(ids):
            pool = pools[0] if len(capacity) == 1 else pools[layer]
            for e in row:
                pool[(layer, int(e))] = True
                pool.move_to_end((layer, int(e)))
        for pool, cap in zip(pools, capacity, strict=True):
            while len(pool) > cap:
                pool.popitem(last=False)
        out.append(missed)
    return out


@pytest.mark.parametrize("capacity", [[8], [2, 3, 4]])
def test_plain_decode_shadow_counts_the_misses_of_an_lru_cache(capacity):
    rng = np.random.default_rng(7)
    layers, experts, top_k = 3, 6, 2
    routing = np.stack([np.stack([rng.choice(experts, top_k, replace=False) for _ in range(layers)])
                        for _ in range(40)])  # [T, L, K]
    shadow = PlainDecodeShadow(layers, experts, capacity, ema=1.0)  # ema 1: the estimate is the last token's
    got = []
    for ids in routing:
        shadow.observe(ids[None])
        got.append(shadow.estimate())
    assert got == _lru_misses(routing, capacity)


def test_plain_decode_shadow_starts_from_the_real_cache():
    shadow = PlainDecodeShadow(layers=1, experts=4, capacity=[2], ema=1.0)
    shadow.start_from(np.array([[True, True, False, False]]))
    shadow.observe(np.array([[[0, 1]]]))
    assert shadow.estimate() == 0.0
    shadow.observe(np.array([[[2, 3]]]))
    assert shadow.estimate() == 2.0


def test_verify_time_follows_the_measured_number_of_experts():
    perf = PerfModel(draft_base_s=0.0, draft_token_s=1e-3, verify_s=(10e-3, 14e-3), copy_s=2e-3, expert_bytes=1000,
                     verify_distinct=(2.0, 3.5), expert_s=1e-3)
    verify = perf.t_verify_routed(layers=4, distinct=np.array([2.0, 3.5, 9.0]))
    assert verify[:2] == pytest.approx([10e-3, 14e-3])  # the routing the profile assumed
    # two tokens that share their experts (2 per layer, not 3.5) read 4 x 1.5 fewer experts
    assert perf.t_verify_routed(layers=4, distinct=np.array([2.0, 2.0]))[1] == pytest.approx(14e-3 - 4 * 1.5e-3)
    assert verify[2] == perf.t_verify(3)  # past the table: as profiled


@pytest.mark.parametrize("ema", [0.05, 0.3, 0.9])
def test_ema_update_of_one_index_is_the_array_update(ema):
    # update of several indices (the array arithmetic; one index goes to update_one) against update_one of each
    rng = np.random.default_rng(int(ema * 100))
    arrays, scalars = _Ema(rng.random(4), ema), _Ema(rng.random(4), ema)
    scalars.value[:] = arrays.value
    for _ in range(300):
        index = rng.choice(4, int(rng.integers(1, 5)), replace=False)
        x = np.array([float(rng.choice([rng.random() * 100, rng.integers(0, 30)])) for _ in index])
        arrays.update(index, x)
        for i, xi in zip(index.tolist(), x.tolist(), strict=True):
            scalars.update_one(i, xi)
        np.testing.assert_array_equal(arrays.n, scalars.n)
        np.testing.assert_array_equal(arrays.value, scalars.value)
