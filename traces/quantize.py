"""INT4 quantization of routed-expert matrices for the draft: RTN and GPTQ, one code/scale format.

Both produce what moespeq.int4 defines: int8 codes in [-8, 7] [O, I] and per-(output row, input group)
scales [O, I/G], rounded to the scale dtype (bf16) before codes are computed. RTN *is* moespeq.int4's
quantize_rtn (through numpy float32). GPTQ (Frantar et al., 2023, "GPTQ: Accurate Post-Training
Quantization for Generative Pre-trained Transformers", Algorithm 1) quantizes columns left to right and
spreads each column's error over the columns not yet quantized through the Cholesky factor of the inverse
Hessian H^-1 (H = 2 X^T X / T over calibration inputs X [T, I]), with damping (a fraction of mean diag H
added to the diagonal) and lazy batch updates: within a block only the block's columns are updated, the
rest of the matrix once per block. The block is one quantization group, so each group's scales are taken
from the group's error-updated weights just before its first column is quantized, as in the reference
implementation (static_groups=False, no act-order). Experts of one layer are processed as a batch.

A Hessian equal to the identity makes GPTQ exactly RTN (no error is propagated), which is how experts
that received no calibration token are handled.

Dimension letters: B batch of matrices (experts), O output rows, I input columns, G group size, T tokens.

Usage:
    codes, scales = rtn(w_oi, quant); codes, scales = gptq(w_boi, hessian_bii, quant)
"""

from __future__ import annotations

import logging

import numpy as np

from moespeq import int4
from moespeq.spec import QuantSpec

log = logging.getLogger(__name__)

DAMP = 0.01  # fraction of mean(diag H) added to the diagonal (the reference implementation's percdamp)


def rtn(w, quant: QuantSpec) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest codes int8 [O, I] and scales float32 [O, I/G] of a torch matrix [O, I]."""
    return int4.quantize_rtn(w.detach().float().cpu().numpy(), quant.group, quant.scale_dtype)


def dequantize(codes: np.ndarray, scales: np.ndarray, quant: QuantSpec, like):
    """The quantized matrix as a torch tensor with the dtype and device of `like`."""
    import torch

    return torch.from_numpy(int4.dequantize(codes, scales, quant.group)).to(dtype=like.dtype, device=like.device)


def hessian(x):
    """2 X^T X / T in float32 [I, I] for inputs x [T, I] (zeros when T = 0)."""
    import torch

    x = x.float()
    if x.shape[0] == 0:
        return torch.zeros(x.shape[1], x.shape[1], dtype=torch.float32, device=x.device)
    return 2.0 * (x.T @ x) / x.shape[0]


def _inverse_hessian_factor(h, damp: float):
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 [B, I, I], damping raised until it factors."""
    import torch

    eye = torch.eye(h.shape[-1], dtype=h.dtype, device=h.device)
    mean_diag = torch.diagonal(h, dim1=-2, dim2=-1).mean(dim=-1)[:, None, None]  # [B, 1, 1]
    for attempt in range(6):
        lower, info = torch.linalg.cholesky_ex(h + damp * 10**attempt * mean_diag * eye)
        if not info.any():
            return torch.linalg.cholesky(torch.cholesky_inverse(lower), upper=True)
        log.warning("GPTQ Hessian not positive definite at damping %.3g; raising it", damp * 10**attempt)
    raise RuntimeError("GPTQ: the damped Hessian is not positive definite even at 1e5 x the damping")


def gptq(w, h, quant: QuantSpec, damp: float = DAMP) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ codes int8 [B, O, I] and scales float32 [B, O, I/G] for matrices w [B, O, I] and Hessians h [B, I, I].

    Computed in float32 on w's device; scales follow moespeq.int4.group_scales on the updated weights.
    """
    import torch

    n_mat, n_out, n_in = w.shape
    group = quant.group
    if n_in % group:
        raise ValueError(f"input dim {n_in} is not a multiple of the group size {group}")
    weights = w.detach().float().clone()  # [B, O, I], updated in place as errors propagate
    h = h.float().clone()
    dead = torch.diagonal(h, dim1=-2, dim2=-1) == 0  # [B, I]: inputs never non-zero in calibration
    h.diagonal(dim1=-2, dim2=-1)[dead] = 1.0
    weights.transpose(1, 2)[dead] = 0.0  # a column that only meets zero inputs contributes nothing
    hinv = _inverse_hessian_factor(h, damp)  # [B, I, I] upper
    codes = torch.empty(n_mat, n_out, n_in, dtype=torch.int8, device=w.device)
    scales = torch.empty(n_mat, n_out, n_in // group, dtype=torch.float32, device=w.device)
    for g0 in range(0, n_in, group):
        g1 = g0 + group
        block = weights[:, :, g0:g1].clone()  # [B, O, G]
        errors = torch.empty_like(block)
        hinv_block = hinv[:, g0:g1, g0:g1]  # [B, G, G]
        group_scale = _group_scales(block, quant)  # [B, O, 1]
        scales[:, :, g0 // group] = group_scale[..., 0]
        for i in range(group):
            column = block[:, :, i]  # [B, O]
            q = torch.clamp(torch.round(column / group_scale[..., 0]), int4.QMIN, int4.QMAX)
            codes[:, :, g0 + i] = q.to(torch.int8)
            err = (column - q * group_scale[..., 0]) / hinv_block[:, i, i, None]  # [B, O]
            block[:, :, i:] -= err[:, :, None] * hinv_block[:, None, i, i:]
            errors[:, :, i] = err
        weights[:, :, g1:] -= errors @ hinv[:, g0:g1, g1:]  # lazy batch update of the remaining columns
    return codes.cpu().numpy(), scales.cpu().numpy()


def _group_scales(block, quant: QuantSpec):
    """moespeq.int4 scales [B, O, 1] of one group's columns block [B, O, G] (bf16-rounded absmax / 7)."""
    import torch

    n_mat, n_out, group = block.shape
    flat = block.reshape(n_mat * n_out, group).cpu().numpy()
    scales = int4.group_scales(flat, group, quant.scale_dtype)  # [B*O, 1]
    return torch.from_numpy(scales).to(block.device).reshape(n_mat, n_out, 1)


def output_error(x, w, w_hat) -> float:
    """Squared output error ||X (W - W_hat)^T||^2 of a quantized matrix on inputs x [T, I]."""
    return float(((x.float() @ (w.float() - w_hat.float()).T) ** 2).sum())
