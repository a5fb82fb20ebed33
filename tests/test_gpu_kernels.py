"""MoE kernels on the GPU against their references, fresh random weights at every preset's shapes."""

import numpy as np
import pytest

from moespeq.runtime.bf16 import from_bf16, round_bf16, to_bf16
from moespeq.runtime.int4_pack import Int4Experts, PackedMatrix, dequantize_packed
from moespeq.runtime.launch_config import LaunchConfig
from moespeq.runtime.layout import ExpertGeometry, SlotArena
from moespeq.runtime.reference import moe_bf16_reference, moe_int4_reference
from moespeq.spec import PRESETS

pytestmark = pytest.mark.gpu
cupy = pytest.importorskip("cupy")

NAN_BITS = 0x7FC0
TOKENS = [1, 2, 3, 8, 9, 16]
CONFIGS = [LaunchConfig(warps=4, blocks_per_sm=2, down_splits=1, k_splits=1),
           LaunchConfig(warps=8, blocks_per_sm=1, down_splits=4, k_splits=2),
           LaunchConfig(warps=8, blocks_per_sm=1, down_splits=2, k_splits=8)]
CONFIG_IDS = ["w4k1j1", "w8k2j4", "w8k8j2"]
RING_TOKENS = [1, 2, 3, 8]
RING_CONFIGS = [LaunchConfig(warps=4, blocks_per_sm=2, down_splits=1, k_splits=1, ring_chunks=16),
                LaunchConfig(warps=8, blocks_per_sm=1, down_splits=2, k_splits=1, ring_chunks=32),
                LaunchConfig(warps=8, blocks_per_sm=2, down_splits=4, k_splits=1, ring_chunks=8),
                LaunchConfig(warps=4, blocks_per_sm=3, down_splits=1, k_splits=1, ring_chunks=8),
                LaunchConfig(warps=4, blocks_per_sm=2, down_splits=2, k_splits=1, ring_chunks=16, ring_depth=2),
                LaunchConfig(warps=4, blocks_per_sm=3, down_splits=2, k_splits=1, ring_chunks=16)]
RING_IDS = ["ring_w4b2c16j1", "ring_w8b1c32j2", "ring_w8b2c8j4", "ring_w4b3c8j1", "ring_w4b2c16d2j2", "ring_w4b3c16j2"]


def _kernels():
    from moespeq.runtime import moe_kernels

    return moe_kernels


@pytest.fixture(scope="module")
def int4_layers():
    from moespeq.runtime.kernel_bench import random_int4_experts

    cache = {}

    def get(name):
        if name not in cache:
            cupy.random.seed(len(cache) + 1)
            geo = ExpertGeometry.from_spec(PRESETS[name])
            cache.clear()  # one preset's weights at a time
            cache[name] = (geo, random_int4_experts(geo))
        return cache[name]
    return get


def routing(tokens, geo, seed):
    from moespeq.runtime.kernel_bench import routing_with_distinct

    ids, w = routing_with_distinct(tokens, geo, None, np.random.default_rng(seed))
    return cupy.asarray(ids), cupy.asarray(w)


def rel_err(got_bits, ref_bits):
    got, ref = from_bf16(got_bits).astype(cupy.float64), from_bf16(ref_bits).astype(cupy.float64)
    return float(cupy.linalg.norm(got - ref) / cupy.linalg.norm(ref))


def diagnose(y, ref, x, ids, weights_of, ws):
    """Where the error is: per token, unwritten outputs, and phase 1 (h) of the first expert in use."""
    per_token = [rel_err(y[t], ref[t]) for t in range(y.shape[0])]
    e0 = int(ids[0, 0])
    tokens = cupy.nonzero((ids == e0).any(axis=1))[0]
    gate, up, _ = weights_of(e0)
    xe = from_bf16(x[tokens])
    g = xe @ gate.T
    h_ref = round_bf16(g / (1 + cupy.exp(-g)) * (xe @ up.T))
    h_got = from_bf16(ws.hbuf[0, : len(tokens)])
    h_err = float(cupy.linalg.norm(h_got - h_ref) / cupy.linalg.norm(h_ref))
    nans = int(cupy.isnan(from_bf16(y)).sum())
    return f"per-token rel err {np.round(per_token, 4)}, unwritten/NaN {nans}, phase-1 h rel err {h_err:.3g}, flags {ws.errors()}"


def int4_weights_of(experts):
    def weights_of(e):
        return tuple(dequantize_packed(PackedMatrix(m.codes[e], m.scales[e])) for m in (experts.gate, experts.up, experts.down))
    return weights_of


def check_launch(launch, geo, x, ids, w, ref, weights_of):
    """Poisoned output, fully written, within 1e-2 of the reference, counters re-armed, bit-identical on rerun."""
    ws = _kernels().MoeWorkspace(geo)
    y = cupy.full(x.shape, NAN_BITS, dtype=cupy.uint16)
    launch(ws, y)
    err = rel_err(y, ref)
    assert err <= 1e-2, diagnose(y, ref, x, ids, weights_of, ws)
    assert ws.errors() == []
    assert not ws.counters.get().any()  # ticket, completion, exit and row counters all back to zero
    y2 = cupy.full(x.shape, NAN_BITS, dtype=cupy.uint16)
    launch(ws, y2)
    assert bool((y2 == y).all()), "two launches on the same inputs differ: the reduction is not deterministic"
    return err


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_int4_kernel_matches_reference(name, tokens, config, int4_layers):
    geo, experts = int4_layers(name)
    ids, w = routing(tokens, geo, seed=tokens)
    x = to_bf16(cupy.random.standard_normal((tokens, geo.hidden), dtype=cupy.float32))
    ref = moe_int4_reference(x, ids, w, experts)
    check_launch(lambda ws, y: _kernels().launch_moe_int4(x, ids, w, experts, ws, y, config), geo, x, ids, w, ref,
                 int4_weights_of(experts))


@pytest.mark.parametrize("config", RING_CONFIGS, ids=RING_IDS)
@pytest.mark.parametrize("tokens", RING_TOKENS)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_int4_ring_matches_reference(name, tokens, config, int4_layers):
    """The bulk-copy ring (T <= 8; where its stages do not fit beside x, the register path takes the launch)."""
    geo, experts = int4_layers(name)
    # the ring itself at T <= 2 on every preset (3 blocks of 16-chunk stages: T = 1)
    assert _kernels().ring_stages(config, tokens, geo) or tokens > (1 if config == RING_CONFIGS[-1] else 2)
    ids, w = routing(tokens, geo, seed=30 + tokens)
    x = to_bf16(cupy.random.standard_normal((tokens, geo.hidden), dtype=cupy.float32))
    ref = moe_int4_reference(x, ids, w, experts)
    check_launch(lambda ws, y: _kernels().launch_moe_int4(x, ids, w, experts, ws, y, config), geo, x, ids, w, ref,
                 int4_weights_of(experts))


def test_int4_kernel_on_rtn_quantized_weights_matches_numpy_reference():
    """The whole path from float weights: quantize_rtn, pack on the host, upload, kernel vs NumPy reference."""
    rng = np.random.default_rng(11)
    geo = ExpertGeometry(hidden=2048, moe_ffn=1024, experts=4, top_k=2)
    gate, up = (rng.standard_normal((4, 1024, 2048)).astype(np.float32) * 0.02 for _ in range(2))
    down = rng.standard_normal((4, 2048, 1024)).astype(np.float32) * 0.02
    host = Int4Experts.from_weights(gate, up, down)
    x = to_bf16(rng.standard_normal((5, 2048)).astype(np.float32))
    ids = np.array([[0, 1], [1, 2], [3, 0], [2, 3], [1, 0]], np.int32)
    w = rng.random((5, 2)).astype(np.float32)
    ref = moe_int4_reference(x, ids, w, host)
    dev = host.to(cupy)
    check_launch(lambda ws, y: _kernels().launch_moe_int4(cupy.asarray(x), cupy.asarray(ids), cupy.asarray(w), dev, ws,
                                                          y, CONFIGS[0]),
                 geo, cupy.asarray(x), cupy.asarray(ids), cupy.asarray(w), cupy.asarray(ref), int4_weights_of(dev))


def test_back_to_back_launches_need_no_reset_or_sync(int4_layers):
    geo, experts = int4_layers("deepseek-v2-lite")
    ws = _kernels().MoeWorkspace(geo)
    runs = []
    for tokens in (4, 16, 1):
        ids, w = routing(tokens, geo, seed=100 + tokens)
        x = to_bf16(cupy.random.standard_normal((tokens, geo.hidden), dtype=cupy.float32))
        y = cupy.full(x.shape, NAN_BITS, dtype=cupy.uint16)
        _kernels().launch_moe_int4(x, ids, w, experts, ws, y, CONFIGS[1])
        runs.append((x, ids, w, y))
    for x, ids, w, y in runs:
        assert rel_err(y, moe_int4_reference(x, ids, w, experts)) <= 1e-2


def test_ring_and_register_paths_back_to_back_on_one_workspace(int4_layers):
    geo, experts = int4_layers("phi-3.5-moe")
    ws = _kernels().MoeWorkspace(geo)
    runs = []
    for tokens, config in ((1, RING_CONFIGS[0]), (4, CONFIGS[1]), (2, RING_CONFIGS[2]), (16, CONFIGS[0]),
                           (1, RING_CONFIGS[1]), (2, RING_CONFIGS[3])):
        ids, w = routing(tokens, geo, seed=200 + tokens)
        x = to_bf16(cupy.random.standard_normal((tokens, geo.hidden), dtype=cupy.float32))
        y = cupy.full(x.shape, NAN_BITS, dtype=cupy.uint16)
        _kernels().launch_moe_int4(x, ids, w, experts, ws, y, config)
        runs.append((x, ids, w, y))
    for x, ids, w, y in runs:
        assert rel_err(y, moe_int4_reference(x, ids, w, experts)) <= 1e-2


@pytest.mark.parametrize("config", [CONFIGS[0], RING_CONFIGS[0]], ids=["registers", "ring"])
def test_bad_expert_id_is_flagged_not_fatal(int4_layers, config):
    geo, experts = int4_layers("olmoe-1b-7b")
    ids, w = routing(2, geo, seed=5)
    ids[1, 0] = geo.experts + 3
    ws = _kernels().MoeWorkspace(geo)
    y = cupy.zeros((2, geo.hidden), dtype=cupy.uint16)
    _kernels().launch_moe_int4(to_bf16(cupy.ones((2, geo.hidden), dtype=cupy.float32)), ids, w, experts, ws, y, config)
    assert ws.errors() == ["an expert id outside [0, E)"]
    assert not ws.counters.get()[[0, 1, 2]].any()


def test_unsupported_token_count_is_a_user_error(int4_layers):
    from moespeq.errors import UserError
    from moespeq.runtime.ops import moe_int4

    geo, experts = int4_layers("olmoe-1b-7b")
    ids, w = routing(16, geo, seed=1)
    x = cupy.zeros((17, geo.hidden), dtype=cupy.uint16)
    with pytest.raises(UserError, match="17 tokens"):
        moe_int4(x, cupy.zeros((17, geo.top_k), cupy.int32), cupy.zeros((17, geo.top_k), cupy.float32), experts)


# ---- bf16 verify kernel -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bf16_caches():
    from moespeq.runtime.kernel_bench import random_bf16

    cache = {}

    def get(name):
        if name not in cache:
            cache.clear()
            cupy.random.seed(7)
            geo = ExpertGeometry.from_spec(PRESETS[name])
            arena = cupy.empty((geo.experts, geo.expert_elems), dtype=cupy.uint16)
            for s in range(geo.experts):
                arena[s] = random_bf16((geo.expert_elems,), 0.02)
            table = cupy.full((2, geo.experts), -1, dtype=cupy.int32)
            table[1] = cupy.asarray(np.random.default_rng(3).permutation(geo.experts).astype(np.int32))  # scrambled
            cache[name] = SlotArena(arena, table, geo)
        return cache[name]
    return get


def bf16_weights_of(cache, layer):
    d, f = cache.geometry.hidden, cache.geometry.moe_ffn

    def weights_of(e):
        w = from_bf16(cache.arena[int(cache.slot_table[layer, e])])
        return w[: f * d].reshape(f, d), w[f * d: 2 * f * d].reshape(f, d), w[2 * f * d:].reshape(d, f)
    return weights_of


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_bf16_verify_kernel_matches_cupy_matmul(name, tokens, config, bf16_caches):
    cache = bf16_caches(name)
    geo = cache.geometry
    ids, w = routing(tokens, geo, seed=50 + tokens)
    x = to_bf16(cupy.random.standard_normal((tokens, geo.hidden), dtype=cupy.float32))
    ref = moe_bf16_reference(x, ids, w, cache.arena, cache.slot_table, 1)  # cupy.matmul in float32
    check_launch(lambda ws, y: _kernels().launch_moe_bf16(x, ids, w, cache, 1, ws, y, config), geo, x, ids, w, ref,
                 bf16_weights_of(cache, 1))


def test_bf16_missing_expert_is_flagged(bf16_caches):
    cache = bf16_caches("deepseek-v2-lite")
    geo = cache.geometry
    ids, w = routing(3, geo, seed=9)
    ws = _kernels().MoeWorkspace(geo)
    y = cupy.zeros((3, geo.hidden), dtype=cupy.uint16)
    _kernels().launch_moe_bf16(to_bf16(cupy.ones((3, geo.hidden), dtype=cupy.float32)), ids, w, cache, 0, ws, y, CONFIGS[0])
    assert ws.errors() == ["an expert without a cache slot"]


# ---- plain read of the experts in use -----------------------------------------------------------------------------

def xor_fold(experts, used):
    """The XOR of every 32-bit word of the experts' six packed arrays at `used` [U] (on the host)."""
    rows = cupy.asarray(used)
    return int(np.bitwise_xor.reduce(np.concatenate([a[rows].get().ravel() for m in (experts.gate, experts.up, experts.down)
                                                      for a in (m.codes, m.scales)])))


@pytest.mark.parametrize("n_used", [1, 5, None], ids=["one", "five", "all"])
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_stream_read_reads_every_word_of_the_experts_in_use_once(name, n_used, int4_layers):
    """The kernel's fold equals the host's over exactly those experts: a word read twice would cancel, one skipped
    or read from another expert would change it (random words: a miss goes unseen with odds 2^-32)."""
    geo, experts = int4_layers(name)
    used = np.random.default_rng(60).permutation(geo.experts)[: n_used or geo.experts].astype(np.int32)  # any order
    sink = cupy.zeros(1, dtype=cupy.uint32)
    _kernels().launch_stream_read(experts, cupy.asarray(used), sink)
    want = xor_fold(experts, used)
    assert int(sink.get()[0]) == want
    assert want != xor_fold(experts, used[:-1] if used.size > 1 else (used + 1) % geo.experts)  # the check can fail


def test_stream_read_of_a_layer_smaller_than_its_grid():
    """A few hundred units for some 10^5 threads: only the tail loop runs, most threads read nothing."""
    from moespeq.runtime.kernel_bench import random_int4_experts

    cupy.random.seed(61)
    experts = random_int4_experts(ExpertGeometry(hidden=128, moe_ffn=128, experts=3, top_k=1))
    sink = cupy.zeros(1, dtype=cupy.uint32)
    for used in ([2], [0, 2], [1, 0, 2]):
        sink[...] = 0
        _kernels().launch_stream_read(experts, cupy.asarray(used, dtype=cupy.int32), sink)
        assert int(sink.get()[0]) == xor_fold(experts, np.array(used, np.int32)), used
