"""Compute costs of one MoE decoder on one GPU: analytic roofline by default, measured tables when present.

Analytic: every kernel takes max(bytes / HBM bandwidth, FLOPs / matrix throughput) plus a launch cost
per kernel (`HardwareProfile.launch_overhead_s`). Decoding is memory-bound, so this is mostly
"weights read once per forward". The parts:

  layer_s(T, C)     one layer's non-expert work for T tokens after C cached tokens: attention (weights +
                    KV read of C + T tokens), norms, router, shared experts. LAYER_LAUNCHES kernels.
  expert_s(t)       one bf16 routed expert (gate, up, down) over t tokens: 3 kernels; tokens are grouped
                    by expert in verification, so an expert is read once however many tokens use it.
  head_s(T)         the LM head and final norm, plus the dense (non-MoE) layers' MLPs (DeepSeek's first).
  draft_step_s(C)   one INT4 draft forward of one token: all layers' non-expert work plus, per layer, the
                    top-K INT4 experts in one fused kernel (they are all GPU-resident), plus the head.

Measured: `HardwareProfile.kernel_tables[<model name>]` may hold any of
    {"attention_layer": {"context": [...], "seconds": [...]},   # layer_s(1, C)
     "expert":          {"tokens":  [...], "seconds": [...]},   # expert_s(t)
     "draft_step":      {"context": [...], "seconds": [...]}}   # draft_step_s(C)
(written by `moespeq calibrate`); each replaces its analytic part, interpolated linearly and extended
linearly past the last point. For T > 1 tokens, layer_s uses the one-token time at context C + T (decode
attention is memory-bound: T more tokens of KV, weights read once). The log says which tables are used.

Dimension letters: L MoE layers, E experts, K top-k, D hidden, F expert FFN, T tokens, C context.

Usage:
    costs = CostModel(get_model("phi-3.5-moe"), get_hardware("a100-40g-pcie4")); costs.expert_s(1)
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from moespeq.errors import UserError
from moespeq.hardware import HardwareProfile
from moespeq.policy.roofline import PerfModel
from moespeq.spec import BF16_BYTES, ModelSpec, QuantSpec

log = logging.getLogger(__name__)

LAYER_LAUNCHES = 8  # norm, qkv, rope, attention, o_proj, norm, router, top-k
EXPERT_LAUNCHES = 3  # gate, up (with the activation), down
HEAD_LAUNCHES = 2  # final norm, LM head
MAX_TABLE_TOKENS = 4096  # expert_s is tabulated for 1..this many tokens


class _Table:
    """y(x) by linear interpolation, extended linearly beyond the measured points."""

    def __init__(self, x: list[float], y: list[float], where: str) -> None:
        if len(x) != len(y) or not x or list(x) != sorted(x) or min(y) <= 0:
            raise UserError(f"{where}: a kernel table needs increasing x and as many positive seconds")
        self.x, self.y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)

    def at(self, x: np.ndarray | float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        out = np.interp(x, self.x, self.y)
        if self.x.size > 1:
            slope = (self.y[-1] - self.y[-2]) / (self.x[-1] - self.x[-2])
            out = np.where(x > self.x[-1], self.y[-1] + (x - self.x[-1]) * slope, out)
        return out


def _tables(hw: HardwareProfile, model: str) -> dict[str, _Table]:
    raw: dict[str, Any] = hw.kernel_tables.get(model, {})
    axes = {"attention_layer": "context", "expert": "tokens", "draft_step": "context"}
    unknown = sorted(set(raw) - set(axes))
    if unknown:
        raise UserError(f"hardware {hw.name}: kernel_tables[{model!r}] has unknown entries {unknown}; "
                        f"known: {sorted(axes)}")
    out = {}
    for name, axis in axes.items():
        if name in raw:
            try:
                out[name] = _Table(raw[name][axis], raw[name]["seconds"], f"hardware {hw.name} {model}/{name}")
            except (KeyError, TypeError):
                raise UserError(f"hardware {hw.name}: kernel_tables[{model!r}][{name!r}] needs "
                                f"'{axis}' and 'seconds' lists") from None
    if out:
        log.info("cost model for %s on %s: measured %s, analytic for the rest", model, hw.name, sorted(out))
    else:
        log.info("cost model for %s on %s: analytic roofline (no measured kernel tables)", model, hw.name)
    return out


class CostModel:
    """Seconds of each piece of GPU work for one model on one GPU (see the module docstring)."""

    def __init__(self, spec: ModelSpec, hw: HardwareProfile, quant: QuantSpec | None = None) -> None:
        self.spec, self.hw = spec, hw
        self.quant = quant or QuantSpec()
        self._bw = hw.hbm_gbps * 1e9  # bytes/s
        self._flops = hw.bf16_tflops * 1e12  # FLOP/s
        self._tables = _tables(hw, spec.name)
        d, s = spec.hidden, spec
        embed = s.vocab * d * (1 if s.tie_embeddings else 2) + (s.vocab if s.lm_head_bias else 0)
        norm = d * (2 if s.norm == "layer" else 1)
        moe = s.moe_layers * (s.router_params + s.shared_params + s.experts * s.expert_params)
        dense = s.first_dense * 3 * d * s.dense_ffn
        self.attn_params = (s.total_params - moe - dense - embed - norm) / s.layers  # attention + norms, per layer
        self.kv_bytes_layer = s.kv_bytes_per_token / s.layers
        self.head_params = s.vocab * d + norm
        tokens = np.arange(MAX_TABLE_TOKENS + 1)
        self._expert = self._expert_s(tokens)  # [MAX_TABLE_TOKENS + 1]
        self._expert[0] = 0.0

    def _kernel_s(self, bytes_: float | np.ndarray, flops: float | np.ndarray, launches: int) -> Any:
        return np.maximum(bytes_ / self._bw, flops / self._flops) + launches * self.hw.launch_overhead_s

    # ---- pieces ---------------------------------------------------------------------------------------
    def _attention_s(self, tokens: int, context: int) -> float:
        s = self.spec
        if "attention_layer" in self._tables:
            return float(self._tables["attention_layer"].at(context + tokens))
        weights = (self.attn_params + s.router_params + s.shared_params) * BF16_BYTES
        kv = (context + tokens) * self.kv_bytes_layer
        flops = 2 * (self.attn_params + s.router_params + s.shared_params) * tokens \
            + 4 * s.heads * s.head_dim * tokens * (context + tokens)
        return float(self._kernel_s(weights + kv, flops, LAYER_LAUNCHES))

    def _expert_s(self, tokens: np.ndarray) -> np.ndarray:
        if "expert" in self._tables:
            return self._tables["expert"].at(tokens)
        return self._kernel_s(float(self.spec.expert_bytes_bf16), 2.0 * self.spec.expert_params * tokens,
                              EXPERT_LAUNCHES)

    def layer_s(self, tokens: int, context: int) -> float:
        """One MoE layer's non-expert work for `tokens` new tokens after `context` cached ones."""
        return self._attention_s(tokens, context)

    def expert_s(self, tokens: np.ndarray | int) -> Any:
        """One bf16 routed expert over `tokens` tokens (vectorized)."""
        t = np.asarray(tokens)
        if t.size and t.max() > MAX_TABLE_TOKENS:
            return self._expert_s(t)
        return self._expert[t]

    def head_s(self, tokens: int, context: int) -> float:
        """LM head and final norm, plus the dense layers (their attention and MLP) for `tokens` tokens."""
        s = self.spec
        head = self._kernel_s(self.head_params * BF16_BYTES, 2.0 * self.head_params * tokens, HEAD_LAUNCHES)
        dense_mlp = self._kernel_s(3 * s.hidden * s.dense_ffn * BF16_BYTES, 6.0 * s.hidden * s.dense_ffn * tokens,
                                   EXPERT_LAUNCHES)
        return float(head + s.first_dense * (dense_mlp + self._attention_s(tokens, context)))

    def draft_step_s(self, context: int) -> float:
        """One INT4 draft forward of one token after `context` cached tokens."""
        if "draft_step" in self._tables:
            return float(self._tables["draft_step"].at(context))
        s = self.spec
        int4 = s.top_k * s.expert_bytes_int4(self.quant)
        fused = float(self._kernel_s(int4, 2.0 * s.top_k * s.expert_params, 1))  # one fused MoE kernel per layer
        return s.moe_layers * (self._attention_s(1, context) + fused) + self.head_s(1, context)

    # ---- the governor's view ----------------------------------------------------------------------------
    def forward_s(self, counts: np.ndarray, context: int) -> float:
        """A whole target forward with every expert resident: counts [L, E] tokens per expert."""
        tokens = int(counts[0].sum()) // self.spec.top_k
        experts = float(self.expert_s(counts[counts > 0]).sum())
        return self.spec.moe_layers * self.layer_s(tokens, context) + experts + self.head_s(tokens, context)

    def perf_model(self, context: int, k_max: int, copy_s: float) -> PerfModel:
        """The governor's constants at a typical context: T_draft, T_verify(T) with uniform-routing expert
        counts E (1 - (1 - K/E)^T) per layer, one expert's copy time."""
        s = self.spec
        layer = []
        for t in range(1, k_max + 2):
            distinct = s.experts * (1.0 - (1.0 - s.top_k / s.experts) ** t)
            per_expert = max(1, round(t * s.top_k / distinct))
            layer.append(self.layer_s(t, context) + distinct * float(self.expert_s(per_expert)))
        verify = tuple(s.moe_layers * x + self.head_s(t, context) for t, x in enumerate(layer, start=1))
        return PerfModel(draft_base_s=0.0, draft_token_s=self.draft_step_s(context), verify_s=verify,
                         copy_s=copy_s, expert_bytes=s.expert_bytes_bf16, verify_layer_s=tuple(layer))
