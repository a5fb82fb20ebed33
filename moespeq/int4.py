"""Symmetric INT4 quantization with groups along the input dimension: the one definition of the numbers.

The collector (torch), the runtime packer and the kernels' references all agree on these values:
  scale[o, g] = bf16(max |W[o, g*G:(g+1)*G]| / 7)      (a zero group gets scale 1, so q = 0)
  q[o, i]     = clamp(round_half_even(W[o, i] / scale[o, i // G]), -8, 7)
  W'[o, i]    = q[o, i] * scale[o, i // G]
The scale is rounded to its storage dtype before q is computed, so dequantizing the stored pair
reproduces exactly what the quantizer meant. Weights are [out, in] (the nn.Linear layout).

Usage:
    q, scales = quantize_rtn(w, group=128); w_hat = dequantize(q, scales, group=128)
"""

from __future__ import annotations

import numpy as np

QMIN, QMAX = -8, 7


def round_to_bf16(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to the nearest bfloat16 (ties to even), returned as float32."""
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def round_scales(scales: np.ndarray, scale_dtype: str = "bf16") -> np.ndarray:
    if scale_dtype == "bf16":
        return round_to_bf16(scales)
    if scale_dtype == "fp16":
        return scales.astype(np.float16).astype(np.float32)
    raise ValueError(f"scale_dtype={scale_dtype!r}: use 'bf16' or 'fp16'")


def _check(w: np.ndarray, group: int) -> None:
    if w.ndim != 2:
        raise ValueError(f"weights must be 2-D [out, in], got shape {w.shape}")
    if w.shape[1] % group:
        raise ValueError(f"input dim {w.shape[1]} is not a multiple of the group size {group}")


def group_scales(w: np.ndarray, group: int = 128, scale_dtype: str = "bf16") -> np.ndarray:
    """[out, in/G] storage-rounded scales of the RTN quantizer."""
    _check(w, group)
    out_dim, in_dim = w.shape
    absmax = np.abs(w.astype(np.float32)).reshape(out_dim, in_dim // group, group).max(axis=2)  # [O, I/G]
    scales = round_scales(absmax / QMAX, scale_dtype)
    return np.where(scales > 0, scales, np.float32(1.0))


def quantize_with_scales(w: np.ndarray, scales: np.ndarray, group: int = 128) -> np.ndarray:
    """int8 codes in [-8, 7] for given per-group scales."""
    _check(w, group)
    expanded = np.repeat(scales.astype(np.float32), group, axis=1)  # [O, I]
    return np.clip(np.rint(w.astype(np.float32) / expanded), QMIN, QMAX).astype(np.int8)


def quantize_rtn(w: np.ndarray, group: int = 128, scale_dtype: str = "bf16") -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest: (q int8 [O, I], scales float32 [O, I/G])."""
    scales = group_scales(w, group, scale_dtype)
    return quantize_with_scales(w, scales, group), scales


def dequantize(q: np.ndarray, scales: np.ndarray, group: int = 128) -> np.ndarray:
    """float32 [O, I] from codes and scales."""
    return q.astype(np.float32) * np.repeat(scales.astype(np.float32), group, axis=1)
