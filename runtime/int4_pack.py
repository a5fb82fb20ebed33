"""INT4 expert weights packed for the fused MoE kernel (runtime/kernels/int4_moe.cu).

The numbers are moespeq.int4's (symmetric, group 128 along the input dim, bf16 scales, codes in [-8, 7]);
this module only arranges them so that each lane of a warp loads its tensor-core fragments as one
16-byte vector per 64-wide chunk, the warp reading 512 contiguous bytes:

  codes  uint32 [..., O/16, I/64, 32, 4]: row tile, k chunk, lane (g, c) = (lane // 4, lane % 4), k-tile j.
         Word j holds 8 nibbles (q + 8); nibble p is row 8*(p % 2) + g of the tile at input index
         k = 32*(j // 2) + 8*c + 4*(j % 2) + i within the chunk, i = 2*((p // 2) % 2) + p // 4.
  scales uint32 [..., O/16, I/128, 8]: bf16 scale of row g (low half) and row g + 8 (high half).

Every function takes NumPy or CuPy arrays and keeps them where they are.

Usage:
    m = pack(*quantize_rtn(w));  q, scales = unpack(m)      # bit-exact round trip
    experts = Int4Experts.from_weights(gate, up, down)     # [E, F, D], [E, F, D], [E, D, F] float32
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moespeq.int4 import quantize_rtn
from moespeq.runtime.backend import array_module
from moespeq.runtime.bf16 import from_bf16, to_bf16
from moespeq.runtime.layout import GROUP

# axes of [.., O, I] split as (row tile, row half hr, g, chunk kc, k-tile half s, c, jl = j % 2, i_hi, i_lo)
_SPLIT = (2, 8, None, 2, 4, 2, 2, 2)
# to (row tile, kc, g, c, s, jl | nibble: i_lo, i_hi, hr) so that p = 4*i_lo + 2*i_hi + hr
_TO_PACKED = (0, 3, 2, 5, 4, 6, 8, 7, 1)
_FROM_PACKED = tuple(int(a) for a in np.argsort(_TO_PACKED))


def _check_dims(out_dim: int, in_dim: int) -> None:
    if out_dim % 16 or in_dim % GROUP:
        raise ValueError(f"INT4 packing needs out % 16 == 0 and in % {GROUP} == 0, got [{out_dim}, {in_dim}]")


def pack_codes(q: Any) -> Any:
    """int8 codes [..., O, I] in [-8, 7] -> uint32 words [..., O/16, I/64, 32, 4]."""
    xp = array_module(q)
    *lead, out_dim, in_dim = q.shape
    _check_dims(out_dim, in_dim)
    lead = tuple(lead)
    nib = (q.astype(xp.int32) + 8).astype(xp.uint32)
    nib = nib.reshape(*lead, out_dim // 16, 2, 8, in_dim // 64, 2, 4, 2, 2, 2)
    perm = tuple(range(len(lead))) + tuple(len(lead) + a for a in _TO_PACKED)
    nib = nib.transpose(perm).reshape(*lead, out_dim // 16, in_dim // 64, 32, 4, 8)
    shifts = xp.arange(0, 32, 4, dtype=xp.uint32)
    return xp.ascontiguousarray((nib << shifts).sum(axis=-1, dtype=xp.uint32))


def unpack_codes(words: Any) -> Any:
    """uint32 words [..., O/16, I/64, 32, 4] -> int8 codes [..., O, I]."""
    xp = array_module(words)
    *lead, tiles, chunks, _, _ = words.shape
    lead = tuple(lead)
    shifts = xp.arange(0, 32, 4, dtype=xp.uint32)
    nib = (words[..., None] >> shifts) & xp.uint32(0xF)  # [..., tiles, chunks, 32, 4, 8]
    nib = nib.reshape(*lead, tiles, chunks, 8, 4, 2, 2, 2, 2, 2)
    perm = tuple(range(len(lead))) + tuple(len(lead) + a for a in _FROM_PACKED)
    q = nib.transpose(perm).reshape(*lead, tiles * 16, chunks * 64)
    return (q.astype(xp.int32) - 8).astype(xp.int8)


def pack_scales(scales: Any) -> Any:
    """float32 scales [..., O, I/128] (already bf16 values) -> uint32 [..., O/16, I/128, 8]."""
    xp = array_module(scales)
    *lead, out_dim, groups = scales.shape
    bits = to_bf16(scales)
    if not bool(xp.all(from_bf16(bits) == scales)):
        raise ValueError("scales must be bf16 values (moespeq.int4 rounds them before coding)")
    lead = tuple(lead)
    bits = bits.astype(xp.uint32).reshape(*lead, out_dim // 16, 2, 8, groups)
    n = len(lead)
    bits = bits.transpose(*range(n), n, n + 3, n + 2, n + 1)  # [..., tiles, groups, g, hr]
    return xp.ascontiguousarray(bits[..., 0] | (bits[..., 1] << 16))


def unpack_scales(words: Any) -> Any:
    """uint32 [..., O/16, I/128, 8] -> float32 scales [..., O, I/128]."""
    xp = array_module(words)
    *lead, tiles, groups, _ = words.shape
    halves = xp.stack([words & xp.uint32(0xFFFF), words >> 16], axis=-1)  # [..., tiles, groups, g, hr]
    n = len(lead)
    halves = halves.transpose(*range(n), n, n + 3, n + 2, n + 1).reshape(*lead, tiles * 16, groups)
    return from_bf16(halves.astype(xp.uint16))


@dataclass(frozen=True)
class PackedMatrix:
    """One INT4 matrix [O, I] (or a stack [..., O, I]) in kernel order."""

    codes: Any  # uint32 [..., O/16, I/64, 32, 4]
    scales: Any  # uint32 [..., O/16, I/128, 8]

    @property
    def shape(self) -> tuple[int, ...]:
        *lead, tiles, chunks, _, _ = self.codes.shape
        return (*lead, tiles * 16, chunks * 64)

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)


def pack(q: Any, scales: Any) -> PackedMatrix:
    """(codes int8 [..., O, I], scales float32 [..., O, I/128]) -> PackedMatrix."""
    if q.shape[:-1] != scales.shape[:-1] or q.shape[-1] != scales.shape[-1] * GROUP:
        raise ValueError(f"codes {q.shape} and scales {scales.shape} disagree (group {GROUP})")
    return PackedMatrix(pack_codes(q), pack_scales(scales))


def unpack(m: PackedMatrix) -> tuple[Any, Any]:
    """PackedMatrix -> (codes int8 [..., O, I], scales float32 [..., O, I/128])."""
    return unpack_codes(m.codes), unpack_scales(m.scales)


def pack_weight(w: np.ndarray) -> PackedMatrix:
    """A float weight [O, I] (nn.Linear layout) quantized by moespeq.int4.quantize_rtn and packed."""
    return pack(*quantize_rtn(np.asarray(w, dtype=np.float32), group=GROUP))


def dequantize_packed(m: PackedMatrix) -> Any:
    """float32 [..., O, I] exactly as the kernel sees it (q * scale)."""
    q, scales = unpack(m)
    xp = array_module(q)
    return q.astype(xp.float32) * xp.repeat(scales, GROUP, axis=-1)


@dataclass(frozen=True)
class Int4Experts:
    """All E INT4 experts of one layer: gate and up [E, F, D], down [E, D, F], packed."""

    gate: PackedMatrix
    up: PackedMatrix
    down: PackedMatrix

    def __post_init__(self) -> None:
        e, f, d = self.gate.shape
        if self.up.shape != (e, f, d) or self.down.shape != (e, d, f):
            raise ValueError(f"expert shapes disagree: gate {self.gate.shape}, up {self.up.shape}, down {self.down.shape}")

    @property
    def experts(self) -> int:
        return self.gate.shape[0]

    @property
    def moe_ffn(self) -> int:
        return self.gate.shape[1]

    @property
    def hidden(self) -> int:
        return self.gate.shape[2]

    @property
    def nbytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes + self.down.nbytes

    @classmethod
    def from_codes(cls, gate: tuple[Any, Any], up: tuple[Any, Any], down: tuple[Any, Any]) -> Int4Experts:
        """From (q, scales) pairs, each stacked over experts: the collector's quantized tensors."""
        return cls(pack(*gate), pack(*up), pack(*down))

    @classmethod
    def from_weights(cls, gate: np.ndarray, up: np.ndarray, down: np.ndarray) -> Int4Experts:
        """From float weights [E, F, D], [E, F, D], [E, D, F] in the Hugging Face layout (RTN)."""
        return cls.from_codes(*(tuple(np.stack(part) for part in zip(*(quantize_rtn(m, group=GROUP) for m in w), strict=True))
                                for w in (gate, up, down)))

    def to(self, xp: Any) -> Int4Experts:
        """The same experts on NumPy (xp=numpy) or on the device (xp=cupy)."""
        def move(m: PackedMatrix) -> PackedMatrix:
            return PackedMatrix(xp.asarray(m.codes), xp.asarray(m.scales))
        return Int4Experts(move(self.gate), move(self.up), move(self.down))
