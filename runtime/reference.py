"""Slow, obvious references of the MoE kernels: loop over experts, float32 matmuls, NumPy or CuPy arrays.

They define what the kernels compute, rounding included: bf16 activations in, fp32 products and sums,
h = SiLU(gate x) * (up x) rounded to bf16 (the down projection's input), y rounded to bf16 once.

Usage:
    y = moe_int4_reference(x, topk_ids, topk_w, experts)          # x [T, D] uint16 bf16 bits
    y = moe_bf16_reference(x, topk_ids, topk_w, arena, slot_table, layer)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from moespeq.runtime.backend import array_module
from moespeq.runtime.bf16 import from_bf16, round_bf16, to_bf16
from moespeq.runtime.int4_pack import Int4Experts, PackedMatrix, dequantize_packed

# expert id -> (gate [F, D], up [F, D], down [D, F]) as float32
WeightsOf = Callable[[int], tuple[Any, Any, Any]]


def moe_reference(x: Any, topk_ids: Any, topk_w: Any, weights_of: WeightsOf) -> Any:
    """y [T, D] bf16 bits = sum_k w[t, k] * down_e(bf16(SiLU(gate_e x_t) * up_e x_t)), e = ids[t, k]."""
    xp = array_module(x)
    xf = from_bf16(x)  # [T, D]
    y = xp.zeros_like(xf)  # [T, D] float32
    ids = xp.asarray(topk_ids)
    for e in sorted({int(v) for v in array_to_list(ids)}):  # each expert once, with all its tokens
        tokens, ks = xp.nonzero(ids == e)
        gate, up, down = weights_of(e)
        xe = xf[tokens]  # [n, D]
        g = xe @ gate.T  # [n, F]
        h = round_bf16(g / (1.0 + xp.exp(-g)) * (xe @ up.T))  # [n, F]
        y[tokens] += topk_w[tokens, ks][:, None].astype(xp.float32) * (h @ down.T)  # tokens distinct per expert
    return to_bf16(y)


def array_to_list(a: Any) -> list:
    """Routing ids as a Python list (a device read for CuPy arrays: references only)."""
    return a.ravel().tolist()  # SYNC: the reference loops over experts on the host; never used by the kernels


def moe_int4_reference(x: Any, topk_ids: Any, topk_w: Any, experts: Int4Experts) -> Any:
    """The fused INT4 kernel's reference: experts dequantized exactly (q * scale)."""
    def weights_of(e: int) -> tuple[Any, Any, Any]:
        return tuple(dequantize_packed(PackedMatrix(m.codes[e], m.scales[e]))
                     for m in (experts.gate, experts.up, experts.down))
    return moe_reference(x, topk_ids, topk_w, weights_of)


def moe_bf16_reference(x: Any, topk_ids: Any, topk_w: Any, arena: Any, slot_table: Any, layer: int) -> Any:
    """The verify kernel's reference: expert e of `layer` read from arena[slot_table[layer, e]].

    arena: [S, 3 F D] uint16 bf16 bits, each slot gate [F, D] | up [F, D] | down [D, F].
    """
    d = x.shape[1]
    f = arena.shape[1] // (3 * d)

    def weights_of(e: int) -> tuple[Any, Any, Any]:
        slot = int(slot_table[layer, e])  # SYNC: reference only (a device read per expert for CuPy arrays)
        if slot < 0:
            raise ValueError(f"expert {e} of layer {layer} is not in the cache")
        w = from_bf16(arena[slot])
        return w[: f * d].reshape(f, d), w[f * d: 2 * f * d].reshape(f, d), w[2 * f * d:].reshape(d, f)
    return moe_reference(x, topk_ids, topk_w, weights_of)
