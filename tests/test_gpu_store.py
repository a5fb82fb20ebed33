"""Expert store on the GPU: copies on their own stream, compute waiting on events, slot reuse, pageable fallback,
copy/compute overlap."""

import numpy as np
import pytest

from moespeq.runtime.backend import get_backend
from moespeq.runtime.bf16 import from_bf16, to_bf16
from moespeq.runtime.expert_store import ExpertStore
from moespeq.runtime.launch_config import LaunchConfig
from moespeq.runtime.layout import ExpertGeometry
from moespeq.runtime.reference import moe_bf16_reference

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")

GEO = ExpertGeometry(hidden=2048, moe_ffn=1408, experts=6, top_k=2)  # DeepSeek-V2-Lite expert shape
CONFIG = LaunchConfig(warps=4, blocks_per_sm=2, down_splits=1, k_splits=1)


@pytest.fixture(scope="module")
def host_weights():
    rng = np.random.default_rng(0)
    return to_bf16(rng.standard_normal((2, GEO.experts, GEO.expert_elems), dtype=np.float32) * np.float32(0.02))


def make_store(host_weights, pin=True, slots=4):
    compute = cupy.cuda.Stream(non_blocking=True)
    store = ExpertStore(GEO, layers=2, slots=slots, backend=get_backend("cupy"), pin=pin, compute_stream=compute)
    store.host[:] = host_weights
    return store, compute


def verify(store, compute, layer, tokens=3, seed=0):
    """Launch the verify layer on the compute stream after waiting for its experts; no host sync."""
    from moespeq.runtime.moe_kernels import MoeWorkspace, launch_moe_bf16

    rng = np.random.default_rng(seed)
    resident = sorted(store.resident(layer))
    ids = np.stack([rng.choice(resident, 2, replace=False) for _ in range(tokens)]).astype(np.int32)
    w = rng.random((tokens, 2)).astype(np.float32)
    x = to_bf16(rng.standard_normal((tokens, GEO.hidden)).astype(np.float32))
    with compute:
        xd, idsd, wd = cupy.asarray(x), cupy.asarray(ids), cupy.asarray(w)
        store.wait_ready(layer, sorted(set(ids.ravel().tolist())))
        y = cupy.empty_like(xd)
        launch_moe_bf16(xd, idsd, wd, store.slot_arena(), layer, MoeWorkspace(GEO), y, CONFIG)
        store.mark_used(layer)
    return x, ids, w, y


def host_reference(host_weights, layer, x, ids, w):
    table = np.arange(GEO.experts, dtype=np.int32)[None].repeat(2, axis=0)
    return moe_bf16_reference(cupy.asarray(x), cupy.asarray(ids), cupy.asarray(w), cupy.asarray(host_weights[layer]), cupy.asarray(table), layer)


def rel_err(a, b):
    a, b = from_bf16(cupy.asarray(a)), from_bf16(cupy.asarray(b))
    return float(cupy.linalg.norm(a - b) / cupy.linalg.norm(b))


@pytest.mark.parametrize("pin", [True, False], ids=["pinned", "pageable"])
def test_prefetch_then_verify_with_event_waits_only(host_weights, pin):
    store, compute = make_store(host_weights, pin=pin)
    assert store.stats()["pinned"] is pin
    for slot, e in enumerate([4, 1, 5, 0]):
        store.prefetch(1, e, slot)
    x, ids, w, y = verify(store, compute, layer=1)
    compute.synchronize()
    assert rel_err(y, host_reference(host_weights, 1, x, ids, w)) <= 1e-2
    np.testing.assert_array_equal(store.slot_table.get(), store._table)


def test_fetch_now_makes_compute_wait_for_the_copy(host_weights):
    store, compute = make_store(host_weights)
    store.fetch_now(0, 2, 0)
    store.fetch_now(0, 3, 1)
    x, ids, w, y = verify(store, compute, layer=0, tokens=5)
    compute.synchronize()
    assert rel_err(y, host_reference(host_weights, 0, x, ids, w)) <= 1e-2


def test_slot_reuse_waits_for_the_kernel_that_reads_it(host_weights):
    """Evict right after launching a reader that is queued behind long work: the copy must wait for it."""
    store, compute = make_store(host_weights, slots=2)
    store.prefetch(0, 1, 0)
    store.prefetch(0, 4, 1)
    big = cupy.random.standard_normal((8192, 8192), dtype=cupy.float32)
    with compute:
        for _ in range(4):
            big @ big  # keep the compute stream busy so the reader starts late
    x, ids, w, y = verify(store, compute, layer=0, tokens=4)
    store.prefetch(1, 0, 0)  # overwrites slot 0 (expert 1 of layer 0) while the reader may still be queued
    store.prefetch(1, 2, 1)
    compute.synchronize()
    store.copy_stream.synchronize()
    assert rel_err(y, host_reference(host_weights, 0, x, ids, w)) <= 1e-2
    assert store.slot_of(0, 1) == -1 and store.slot_of(1, 0) == 0
    np.testing.assert_array_equal(store.slot_table.get(), store._table)


def test_copies_overlap_a_stream_of_moe_layers(host_weights):
    """Copies on the copy stream do not wait for kernels on the compute stream (loose bound; the benchmark
    reports the measured efficiency)."""
    from moespeq.runtime.copy_bench import overlap_efficiency
    from moespeq.runtime.kernel_bench import random_int4_experts, routing_with_distinct
    from moespeq.runtime.moe_kernels import MoeWorkspace, launch_moe_int4

    store, compute = make_store(host_weights, slots=2)
    experts = random_int4_experts(GEO)
    ids, w = (cupy.asarray(a) for a in routing_with_distinct(1, GEO, None, np.random.default_rng(1)))
    x, y, ws = to_bf16(cupy.ones((1, GEO.hidden), dtype=cupy.float32)), cupy.empty((1, GEO.hidden), cupy.uint16), MoeWorkspace(GEO)
    step = [0]

    def copies():
        for _ in range(6):
            store.prefetch(0, step[0] % GEO.experts, step[0] % 2)
            step[0] += 1

    def layers():
        with compute:
            for _ in range(150):
                launch_moe_int4(x, ids, w, experts, ws, y, CONFIG)

    result = overlap_efficiency(copies, layers, store.copy_stream, compute)
    assert result["efficiency"] > 0.8, result
