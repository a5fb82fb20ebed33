"""bfloat16 as raw 16-bit patterns in uint16 arrays, for NumPy and CuPy alike.

The kernels take bf16 activations and weights as 16-bit patterns, so no array library needs a bf16 dtype.
Rounding is to nearest even, the same rule as moespeq.int4.round_to_bf16.

Usage:
    bits = to_bf16(x_f32); x = from_bf16(bits)
"""

from __future__ import annotations

from typing import Any

from moespeq.runtime.backend import array_module


def to_bf16(x: Any) -> Any:
    """float32 values -> uint16 bf16 bit patterns (round to nearest even; NaN stays NaN)."""
    xp = array_module(x)
    bits = xp.ascontiguousarray(x, dtype=xp.float32).view(xp.uint32)
    rounded = (bits + xp.uint32(0x7FFF) + ((bits >> 16) & xp.uint32(1))) >> 16
    nan = (bits & xp.uint32(0x7FFFFFFF)) > xp.uint32(0x7F800000)
    return xp.where(nan, xp.uint32(0x7FC0), rounded).astype(xp.uint16)


def from_bf16(bits: Any) -> Any:
    """uint16 bf16 bit patterns -> float32 (exact)."""
    xp = array_module(bits)
    return (xp.asarray(bits).astype(xp.uint32) << 16).view(xp.float32)


def round_bf16(x: Any) -> Any:
    """float32 rounded to the nearest bf16 value, as float32."""
    return from_bf16(to_bf16(x))
