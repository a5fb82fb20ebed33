"""Expert store slot-table logic on the NumPy backend (the same code drives the CUDA copies)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moespeq.runtime.backend import get_backend
from moespeq.runtime.expert_store import ExpertStore
from moespeq.runtime.layout import ExpertGeometry

GEO = ExpertGeometry(hidden=128, moe_ffn=128, experts=5, top_k=2)


def make_store(layers=3, slots=4):
    store = ExpertStore(GEO, layers=layers, slots=slots, backend=get_backend("numpy"))
    for layer in range(layers):
        for e in range(GEO.experts):
            store.host_expert(layer, e)[:] = 100 * layer + e  # every expert recognisable by its content
    return store


def check_invariants(store):
    """Mirror, device table, owners and arena contents all tell the same story."""
    np.testing.assert_array_equal(store.slot_table, store._table)
    for slot in range(store.slots):
        owner = store.owner(slot)
        if owner is not None:
            assert store.slot_of(*owner) == slot
            assert (store.arena[slot] == 100 * owner[0] + owner[1]).all()
    held = [s for s in store.slot_table.ravel() if s >= 0]
    assert len(held) == len(set(held))  # a slot is never named twice


def test_prefetch_fills_slot_and_table():
    store = make_store()
    store.prefetch(1, 3, 2)
    assert store.slot_of(1, 3) == 2 and store.owner(2) == (1, 3) and store.resident(1) == {3: 2}
    assert store.free_slots() == [0, 1, 3]
    check_invariants(store)


def test_prefetch_into_a_full_slot_evicts_its_owner():
    store = make_store()
    store.prefetch(0, 1, 0)
    store.prefetch(2, 4, 0)
    assert store.slot_of(0, 1) == -1 and store.slot_of(2, 4) == 0
    assert store.stats()["evictions"] == 1 and store.stats()["copies"] == 2
    assert store.stats()["bytes"] == 2 * GEO.expert_bytes_bf16
    check_invariants(store)


def test_fetch_now_reuses_a_resident_expert():
    store = make_store()
    store.prefetch(0, 2, 1)
    assert store.fetch_now(0, 2, slot=3) == 1  # already there: no copy
    assert store.stats()["copies"] == 1
    assert store.fetch_now(0, 4, slot=3) == 3
    assert store.stats()["copies"] == 2 and store.stats()["fetch_now"] == 2
    store.wait_ready(0, [2, 4])
    store.mark_used(0)
    check_invariants(store)


def test_errors_name_the_problem():
    store = make_store()
    store.prefetch(0, 0, 0)
    with pytest.raises(ValueError, match="already in slot 0"):
        store.prefetch(0, 0, 1)
    with pytest.raises(ValueError, match="outside"):
        store.prefetch(0, 5, 1)
    with pytest.raises(RuntimeError, match="expert 3 of layer 0 is not resident"):
        store.wait_ready(0, [0, 3])
    with pytest.raises(ValueError, match="at least one layer and one slot"):
        ExpertStore(GEO, layers=1, slots=0, backend=get_backend("numpy"))


def test_numpy_store_reports_unpinned_host_memory():
    assert make_store().stats()["pinned"] is False


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.integers(0, 4), st.integers(0, 3)), max_size=40))
def test_any_sequence_of_prefetches_keeps_the_table_consistent(moves):
    store = make_store()
    for layer, expert, slot in moves:
        if store.slot_of(layer, expert) >= 0:
            continue
        store.prefetch(layer, expert, slot)
        check_invariants(store)
    assert sum(o is not None for o in map(store.owner, range(store.slots))) == (store.slot_table >= 0).sum()
