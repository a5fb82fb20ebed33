"""INT4 packing: bit-exact round trips, the documented layout, and the kernel's fragment reading of it."""

import numpy as np
import pytest

from moespeq.int4 import quantize_rtn, round_to_bf16
from moespeq.runtime.bf16 import from_bf16, round_bf16, to_bf16
from moespeq.runtime.int4_pack import (
    Int4Experts,
    PackedMatrix,
    dequantize_packed,
    pack,
    pack_codes,
    pack_scales,
    pack_weight,
    unpack,
    unpack_codes,
)


def _random_pair(rng, shape):
    """Codes in [-8, 7] and bf16 scales for a weight of `shape` [..., O, I]."""
    q = rng.integers(-8, 8, size=shape, dtype=np.int8)
    scales = round_to_bf16(rng.uniform(1e-3, 2.0, size=(*shape[:-1], shape[-1] // 128)).astype(np.float32))
    return q, scales


@pytest.mark.parametrize("shape", [(16, 128), (48, 256), (3, 32, 384), (2, 2, 16, 1408)])
def test_round_trip_is_bit_exact(shape):
    rng = np.random.default_rng(sum(shape))
    q, scales = _random_pair(rng, shape)
    m = pack(q, scales)
    assert m.codes.dtype == np.uint32 and m.codes.shape == (*shape[:-2], shape[-2] // 16, shape[-1] // 64, 32, 4)
    assert m.scales.shape == (*shape[:-2], shape[-2] // 16, shape[-1] // 128, 8)
    assert m.shape == shape
    q2, s2 = unpack(m)
    np.testing.assert_array_equal(q2, q)
    np.testing.assert_array_equal(s2.view(np.uint32), scales.view(np.uint32))
    np.testing.assert_array_equal(pack_codes(unpack_codes(m.codes)), m.codes)


def test_packed_bytes_are_half_a_byte_per_weight_plus_scales():
    q, scales = _random_pair(np.random.default_rng(0), (64, 512))
    assert pack(q, scales).nbytes == 64 * 512 // 2 + 64 * 4 * 2


def test_layout_matches_the_documented_formula():
    """An independent, element-by-element packer written from the module docstring."""
    rng = np.random.default_rng(1)
    q, _ = _random_pair(rng, (32, 128))
    words = pack_codes(q)
    for r in range(2):
        for kc in range(2):
            for lane in range(32):
                g, c = divmod(lane, 4)
                for j in range(4):
                    expected = 0
                    for p in range(8):
                        row = 16 * r + 8 * (p % 2) + g
                        i = 2 * ((p // 2) % 2) + p // 4
                        k = 64 * kc + 32 * (j // 2) + 8 * c + 4 * (j % 2) + i
                        expected |= (int(q[row, k]) + 8) << (4 * p)
                    assert int(words[r, kc, lane, j]) == expected


def test_scales_pair_rows_g_and_g_plus_8():
    _, scales = _random_pair(np.random.default_rng(2), (32, 256))
    words = pack_scales(scales)
    bits = to_bf16(scales)
    for r, grp, g in [(0, 0, 0), (1, 1, 7), (0, 1, 3)]:
        assert int(words[r, grp, g]) & 0xFFFF == bits[16 * r + g, grp]
        assert int(words[r, grp, g]) >> 16 == bits[16 * r + g + 8, grp]


def test_pack_from_hf_weights_equals_pack_from_collector_pairs():
    rng = np.random.default_rng(3)
    gate, up = (rng.standard_normal((2, 128, 256)).astype(np.float32) for _ in range(2))  # [E, F, D]
    down = rng.standard_normal((2, 256, 128)).astype(np.float32)  # [E, D, F]
    from_weights = Int4Experts.from_weights(gate, up, down)
    pairs = [tuple(np.stack(a) for a in zip(*(quantize_rtn(m) for m in w), strict=True)) for w in (gate, up, down)]
    from_pairs = Int4Experts.from_codes(*pairs)
    for a, b in [(from_weights.gate, from_pairs.gate), (from_weights.up, from_pairs.up), (from_weights.down, from_pairs.down)]:
        assert a.codes.tobytes() == b.codes.tobytes() and a.scales.tobytes() == b.scales.tobytes()
    np.testing.assert_array_equal(pack_weight(gate[1]).codes, from_pairs.gate.codes[1])


def test_dequantize_packed_is_q_times_scale():
    rng = np.random.default_rng(4)
    w = rng.standard_normal((16, 256)).astype(np.float32)
    q, scales = quantize_rtn(w)
    expected = q.astype(np.float32) * np.repeat(scales, 128, axis=1)
    np.testing.assert_array_equal(dequantize_packed(pack(q, scales)), expected)


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="out % 16"):
        pack_codes(np.zeros((8, 128), np.int8))
    with pytest.raises(ValueError, match="bf16"):
        pack_scales(np.full((16, 1), 0.1, np.float32))
    with pytest.raises(ValueError, match="disagree"):
        pack(np.zeros((16, 256), np.int8), np.ones((16, 1), np.float32))


def test_bf16_helpers_agree_with_core_rounding():
    x = np.random.default_rng(5).standard_normal(10_000).astype(np.float32) * 1e3
    np.testing.assert_array_equal(round_bf16(x), round_to_bf16(x))
    np.testing.assert_array_equal(from_bf16(to_bf16(x)), round_to_bf16(x))
    assert np.isnan(from_bf16(to_bf16(np.array([np.nan], np.float32))))[0]


# ---- the kernel's reading of the layout, emulated with the PTX mma.m16n8k16 fragment rules --------------------

def _a_int4(words):
    """Logical A [4 k-tiles, 16 rows, 16 k] from one chunk's words [32 lanes, 4], as int4_moe.cu dequantizes."""
    a = np.zeros((4, 16, 16))
    for lane in range(32):
        g, c = divmod(lane, 4)
        for j in range(4):
            w = int(words[lane, j])
            regs = [(((w >> 4 * s) & 0xF) - 8, ((w >> (4 * s + 16)) & 0xF) - 8) for s in range(4)]  # (low, high)
            _place_a(a[j], g, c, regs)
    return a


def _a_bf16(rows, kc):
    """Logical A from a natural-layout bf16 row tile [16, I] (float values), as expert_bf16.cu loads it."""
    a = np.zeros((4, 16, 16))
    for lane in range(32):
        g, c = divmod(lane, 4)
        for j in range(4):
            h, jl = divmod(j, 2)
            base = 64 * kc + 32 * h + 8 * c + 4 * jl
            pairs = [(rows[r, base + 2 * m], rows[r, base + 2 * m + 1]) for r, m in [(g, 0), (g + 8, 0), (g, 1), (g + 8, 1)]]
            _place_a(a[j], g, c, pairs)
    return a


def _place_a(tile, g, c, regs):
    """a0a1 row g cols 2c..; a2a3 row g+8; a4a5 row g cols 2c+8..; a6a7 row g+8 cols 2c+8.. (PTX ISA)."""
    for reg, (row, col) in zip(regs, [(g, 2 * c), (g + 8, 2 * c), (g, 2 * c + 8), (g + 8, 2 * c + 8)], strict=True):
        tile[row, col], tile[row, col + 1] = reg


def _b(x_chunk):
    """Logical B [4 k-tiles, 16 k] of one token from its 64 chunk values, as load_b/mma_chunk read them."""
    b = np.zeros((4, 16))
    for c in range(4):
        for j in range(4):
            h, jl = divmod(j, 2)
            vals = x_chunk[32 * h + 8 * c: 32 * h + 8 * c + 8]
            b[j, 2 * c: 2 * c + 2] = vals[4 * jl: 4 * jl + 2]  # b0b1 = word 2*jl
            b[j, 2 * c + 8: 2 * c + 10] = vals[4 * jl + 2: 4 * jl + 4]  # b2b3 = word 2*jl + 1
    return b


def _tile_dot(a, b):
    """Sum over the 4 k-tiles of A[j] (16 x 16) @ B[j] (16): what 4 chained mma instructions accumulate."""
    return np.einsum("jrk,jk->r", a, b)


def test_int4_fragments_compute_the_row_tile_dot_product():
    rng = np.random.default_rng(6)
    q, scales = _random_pair(rng, (32, 256))
    words = pack(q, scales).codes
    x = rng.standard_normal(256)
    for r in range(2):
        got = sum(_tile_dot(_a_int4(words[r, kc]), _b(x[64 * kc: 64 * kc + 64])) for kc in range(4))
        np.testing.assert_allclose(got, q[16 * r: 16 * r + 16].astype(np.float64) @ x, rtol=1e-12)


def test_bf16_fragments_compute_the_row_tile_dot_product():
    rng = np.random.default_rng(7)
    w = rng.standard_normal((16, 192))
    x = rng.standard_normal(192)
    got = sum(_tile_dot(_a_bf16(w, kc), _b(x[64 * kc: 64 * kc + 64])) for kc in range(3))
    np.testing.assert_allclose(got, w @ x, rtol=1e-12)


def test_packed_matrix_shape_of_a_stack():
    m = PackedMatrix(np.zeros((5, 2, 3, 32, 4), np.uint32), np.zeros((5, 2, 1, 8), np.uint32))
    assert m.shape == (5, 32, 192)
