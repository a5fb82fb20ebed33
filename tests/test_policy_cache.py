"""Eviction rules and cache bookkeeping on hand-built 1-2 layer, 3-4 expert scenarios."""

import numpy as np
import pytest

from moespeq.policy.cache import ABSENT, LOADING, NO_ROOM, OK, REFUSED, RESIDENT, ExpertCache, split_slots
from moespeq.policy.elb import ExpertLookaheadBuffer
from moespeq.policy.eviction import EvictionPolicy, FutureUses, make_eviction


def _cache(rule, layers=1, experts=4, capacity=(2,), **kw):
    return ExpertCache(layers, experts, list(capacity), make_eviction(rule, layers, experts, **kw))


def _load(cache, flat, demand=True):
    status, victim = cache.reserve(flat, demand)
    assert status == OK
    cache.landed(flat)
    return victim


def test_lru_evicts_least_recently_used():
    cache = _cache("lru")
    for e in (0, 1):
        _load(cache, e)
        cache.access(0, np.array([e]))
    cache.access(0, np.array([0]))  # 0 is now more recent than 1
    assert _load(cache, 2) == 1
    assert cache.state.tolist() == [RESIDENT, ABSENT, RESIDENT, ABSENT]


def test_lfu_evicts_least_used_and_breaks_ties_by_recency():
    cache = _cache("lfu")
    _load(cache, 0)
    _load(cache, 1)
    for e in (0, 0, 1):
        cache.access(0, np.array([e]))
    assert _load(cache, 2) == 1  # 1 used once, 0 twice
    cache.access(0, np.array([2]))
    cache.access(0, np.array([0]))
    assert _load(cache, 3) == 2  # 2 used once vs 0 three times


def test_lfru_forgets_old_frequency():
    cache = _cache("lfru", decay=0.5)
    _load(cache, 0)
    _load(cache, 1)
    for _ in range(4):  # expert 0: heavy use long ago
        cache.access(0, np.array([0]))
    for step in range(1, 6):
        cache.progress(step, 0)
    cache.access(0, np.array([1]))  # expert 1: one recent use outweighs 4 uses 5 steps ago (4/32 < 1)
    assert _load(cache, 2) == 0


def test_lookahead_protects_elb_experts_and_refuses_prefetch_over_sooner_needs():
    layers, experts = 2, 3
    elb = ExpertLookaheadBuffer(layers, experts)
    cache = ExpertCache(layers, experts, [2], make_eviction("lookahead", layers, experts, elb=elb))
    _load(cache, 0 * experts + 0)  # (layer 0, expert 0)
    _load(cache, 0 * experts + 1)  # (layer 0, expert 1)
    elb.start(k=1)
    elb.add(np.array([[0, 2], [1, 2]]), np.full((2, 2), 0.5))  # predicts (0,0) (0,2) (1,1) (1,2)
    # a prefetch of (1,1), needed at layer 1, may evict (0,1) which the ELB does not predict
    assert cache.reserve(1 * experts + 1, demand=False) == (OK, 1)
    cache.landed(4)
    # now the only victims are (0,0) [needed at layer 0] and (1,1) [layer 1]: a prefetch of (1,2) is refused
    status, victim = cache.reserve(1 * experts + 2, demand=False)
    assert status == REFUSED and victim == 4
    # a demand load always gets a slot: it evicts the farthest predicted use, (1,1)
    assert cache.reserve(1 * experts + 2, demand=True) == (OK, 4)
    # once verification passed layer 0, (0,0) is no longer needed this cycle
    cache.landed(5)
    elb.verify_at(1)
    assert cache.reserve(0 * experts + 1, demand=False)[0] == REFUSED  # (0,1) is needed never; victims are needed
    assert cache.reserve(0 * experts + 1, demand=True) == (OK, 0)


def test_lookahead_without_predictions_falls_back_to_lru_at_each_experts_next_opportunity():
    # One pool of 3 slots over 3 layers, an empty ELB (k = 0). Step 0 uses (0,0) (1,0) (2,0); step 1 uses
    # (0,1) at layer 0 (evicting (0,0), the oldest), then layer 1 needs (1,1) and (1,2). By the access
    # clock (and by decayed frequency) (0,1), just used, outranks (2,0), used a step ago; but (0,1) cannot
    # be used again before step 2 while (2,0) can be used at layer 2 of this step, so at their next
    # opportunities both are one step old and the farther one, (0,1), goes. Plain recency or frequency
    # first evicted (2,0), which made speq at k = 0 worse than per-layer LRU at the same slots.
    layers, experts = 3, 3
    elb = ExpertLookaheadBuffer(layers, experts)
    cache = ExpertCache(layers, experts, [3], make_eviction("lookahead", layers, experts, elb=elb))
    elb.start(k=0)

    def use(step, layer, expert):
        cache.progress(step, layer)
        flat = layer * experts + expert
        cache.access(layer, np.array([expert]))
        if cache.state[flat] == ABSENT:
            _load(cache, flat)
        return flat

    for layer in range(layers):
        use(0, layer, 0)
    use(1, 0, 1)
    assert cache.state[0] == ABSENT  # (0,0) went first: two steps old at its next opportunity
    cache.progress(1, 1)
    cache.access(1, np.array([1, 2]))
    granted, victims = cache.reserve_many(np.array([1 * experts + 1, 1 * experts + 2]))
    assert granted == 2
    assert victims == [1 * experts + 0, 0 * experts + 1]  # (1,0), then (0,1); (2,0) stays for layer 2

def test_belady_evicts_the_expert_used_farthest_in_the_future():
    need = np.zeros((4, 1, 3), dtype=bool)  # steps x layers x experts
    need[0, 0, [0, 1]] = True
    need[1, 0, [2]] = True
    need[2, 0, [0]] = True
    need[3, 0, [1]] = True
    future = FutureUses(need)
    cache = ExpertCache(1, 3, [2], make_eviction("belady", 1, 3, future=future))
    _load(cache, 0)
    _load(cache, 1)
    cache.progress(1, 0)
    assert cache.reserve(2, demand=True) == (OK, 1)  # expert 1 next used at step 3, expert 0 at step 2
    np.testing.assert_array_equal(future.positions(1, 0)[[0, 1, 2]], [2, 3, 1])


def test_no_room_when_every_slot_is_held_or_loading():
    cache = _cache("lru", capacity=(2,))
    _load(cache, 0)
    assert cache.reserve(1, demand=True) == (OK, -1)
    assert cache.state[1] == LOADING
    cache.hold(np.array([0]))
    assert cache.reserve(2, demand=True) == (NO_ROOM, -1)
    cache.release(np.array([0]))
    assert cache.reserve(2, demand=True) == (OK, 0)


def test_per_layer_pools_evict_only_within_their_layer():
    cache = _cache("lru", layers=2, experts=3, capacity=(1, 1))
    _load(cache, 0)  # layer 0
    assert _load(cache, 3) == -1  # layer 1 has its own free slot
    assert _load(cache, 1) == 0
    assert sorted(cache.slot_of[cache.slot_of >= 0].tolist()) == [0, 1]


def test_counters_follow_prefetch_usefulness():
    cache = _cache("lru", capacity=(2,))
    cache.reserve(0, demand=False)  # prefetched, still in flight when used
    cache.reserve(1, demand=False)
    cache.landed(1)
    hit = cache.access(0, np.array([0, 1, 2]))
    assert hit.tolist() == [False, True, False]
    c = cache.counters
    assert (c.needed, c.hits, c.loads_prefetch, c.prefetch_useful, c.prefetch_timely) == (3, 1, 2, 2, 1)
    cache.landed(0)
    cache.reserve(3, demand=False)
    cache.landed(3)
    # landing counts as a use for recency: 0 landed at clock 1, so 1 (last used at clock 0) went
    assert cache.state.tolist() == [RESIDENT, ABSENT, ABSENT, RESIDENT]
    cache.access(0, np.array([0]))
    cache.access(0, np.array([0]))  # 0 used at clock 2; the prefetched 3 landed at clock 1
    assert _load(cache, 2) == 3  # 3 goes without ever being used: a wasted prefetch
    assert (c.prefetch_wasted, c.evictions) == (1, 2)


@pytest.mark.parametrize("total,layers,tilt", [(113, 32, 0.0), (96, 32, 0.5), (40, 32, -0.7), (7, 3, 1.0)])
def test_split_slots_sums_to_total_and_respects_tilt(total, layers, tilt):
    slots = split_slots(total, layers, experts=16, tilt=tilt)
    assert len(slots) == layers and sum(slots) == total and min(slots) >= 1
    if tilt > 0:
        assert slots[0] >= slots[-1]
    if tilt < 0:
        assert slots[0] <= slots[-1]


def test_split_slots_even_split_gives_remainder_to_early_layers():
    assert split_slots(113, 32, 16) == [4] * 17 + [3] * 15


@pytest.mark.parametrize("tie_break", ["recency-freq", "freq-recency"])
@pytest.mark.parametrize("decay", [0.9, 0.5, 1.0])
def test_lookahead_packed_order_matches_the_plain_keys(tie_break, decay):
    # The fast victim/victims (packed fallback keys kept current incrementally) against the base class's
    # lexicographic order over keys(), through random cycles of drafting, prefetches and demand loads.
    layers, experts = 4, 5
    rng = np.random.default_rng(7)
    elb = ExpertLookaheadBuffer(layers, experts)
    rule = make_eviction("lookahead", layers, experts, decay=decay, tie_break=tie_break, elb=elb)
    cache = ExpertCache(layers, experts, [7], rule)
    reference = EvictionPolicy

    def check(lo=0, hi=layers * experts):
        candidates = (cache.state[lo:hi] == RESIDENT) & ~cache.held[lo:hi]
        np.testing.assert_array_equal(cache._evictable(lo, hi), candidates)
        if candidates.any():
            assert rule.victim(candidates, lo) == reference.victim(rule, candidates, lo)
            m = int(candidates.sum())
            np.testing.assert_array_equal(rule.victims(candidates, lo, m), reference.victims(rule, candidates, lo, m))

    for step in range(40):
        elb.start(k=int(rng.integers(0, 3)))
        for _ in range(elb.k):
            elb.add(np.stack([rng.choice(experts, 2, replace=False) for _ in range(layers)]), rng.random((layers, 2)))
            f = int(rng.integers(layers * experts))
            check()
            if cache.state[f] == ABSENT and cache.reserve(f, demand=False)[0] == OK:
                cache.landed(f)
        for layer in range(layers):
            cache.progress(step, layer)
            elb.verify_at(layer)
            needed = rng.choice(experts, int(rng.integers(1, experts + 1)), replace=False)  # scalar and array uses
            cache.access(layer, needed)
            flat = layer * experts + needed
            cache.hold(flat)
            check()
            absent = flat[cache.state[flat] == ABSENT]
            if absent.size:
                granted, _ = cache.reserve_many(absent)
                cache.landed(absent[:granted])
            cache.release(flat)


def test_decay_powers_are_one_table_whatever_the_step():
    # every path (scalar or array, any array length) reads decay ** s from one table; growing it keeps it
    rule = make_eviction("lfru", 2, 3, decay=0.93)
    before = rule.powers.copy()
    rule.progress(10_000, 0)
    assert rule.powers.size >= 10_002
    np.testing.assert_array_equal(rule.powers[: before.size], before)
    rule.freq[:] = 1.5
    rule._use(np.array([0, 1, 2, 3]))
    rule._use(4)
    assert rule.freq[4] == rule.freq[0] == 1.5 * rule.powers[10_000] + 1.0


@pytest.mark.parametrize("rule", ["lru", "lfu", "lfru", "lookahead", "belady"])
@pytest.mark.parametrize("capacity", [(14,), (4, 3, 4, 3)])
def test_scalar_layer_forms_match_the_array_forms(rule, capacity):
    # serve / reserve_few / landed(list) / release(list) against access + hold + absent / reserve_many /
    # landed(array) / release(array), on two caches driven through the same random decoding and prefetches
    layers, experts = 4, 8  # up to 8 experts a layer: the array forms' vector paths too
    rng = np.random.default_rng(len(capacity) * 10 + len(rule))
    future = FutureUses(rng.random((60, layers, experts)) < 0.4)

    def make():
        elb = ExpertLookaheadBuffer(layers, experts)
        return elb, ExpertCache(layers, experts, list(capacity),
                                make_eviction(rule, layers, experts, decay=0.8, elb=elb, future=future))

    (elb_a, arrays), (elb_s, scalars) = make(), make()

    def same():
        for name in ("state", "slot_of", "prefetched", "_bar"):
            np.testing.assert_array_equal(getattr(arrays, name), getattr(scalars, name), err_msg=name)
        # the scalar forms' victim mask, where they kept it current, is exactly "resident and not held"; the
        # array forms' rebuild gives the same
        evictable = np.where((arrays.state == RESIDENT) & ~arrays.held, 0.0, np.inf)
        if not scalars._unevictable_stale:
            np.testing.assert_array_equal(scalars._unevictable, evictable)
        np.testing.assert_array_equal(arrays._current_unevictable(), evictable)
        assert arrays.counters == scalars.counters and arrays.clock == scalars.clock
        for name in ("last_use", "count", "freq", "freq_step", "last_step"):
            np.testing.assert_array_equal(getattr(arrays.eviction, name), getattr(scalars.eviction, name),
                                          err_msg=name)
        if rule in ("lookahead", "belady"):  # the packed keys as of now (each cache rebuilds them lazily)
            np.testing.assert_array_equal(arrays.eviction._current_fallback(), scalars.eviction._current_fallback())

    for step in range(60):
        k = int(rng.integers(0, 3))
        for elb in (elb_a, elb_s):
            elb.start(k)
        for _ in range(k):
            ids = np.stack([rng.choice(experts, 2, replace=False) for _ in range(layers)])
            weights = rng.random((layers, 2))
            elb_a.add(ids, weights)
            elb_s.add(ids, weights)
            f = int(rng.integers(layers * experts))
            if arrays.state[f] == ABSENT and arrays.reserve(f, demand=False)[0] == OK:
                assert scalars.reserve(f, demand=False)[0] == OK
                arrays.landed(f)
                scalars.landed(f)
        for layer in range(layers):
            for cache, elb in ((arrays, elb_a), (scalars, elb_s)):
                cache.progress(step, layer)
                elb.verify_at(layer)
            needed = rng.choice(experts, int(rng.integers(1, min(experts, *capacity) + 1)), replace=False)
            flat = layer * experts + needed
            arrays.access(layer, needed)
            arrays.hold(flat)
            misses = flat[arrays.absent(flat)]
            assert scalars.serve(flat.tolist()) == misses.tolist()
            same()
            if misses.size:
                assert arrays.reserve_many(misses) == scalars.reserve_few(misses.tolist())
                arrays.landed(misses)
                scalars.landed(misses.tolist())
            arrays.release(flat)
            scalars.release(flat.tolist())
            same()
