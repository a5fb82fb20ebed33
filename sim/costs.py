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

Measured: `HardwareProfile.kernel_tables`, as `moespeq calibrate` writes it (runtime/calibrate.py):
  "moe_bf16_layer_s": {MODEL: GRID}   one bf16 verify MoE layer (its experts cached): replaces the sum of
                                      expert_s over a layer; split over the layer's experts in proportion to
                                      their analytic times, so that cached experts can still go first
  "moe_int4_layer_s": {MODEL: GRID}   one fused INT4 draft MoE layer (T = 1, n = K): the draft's MoE part
  "attention_layer_s": {MODEL: {"context": [...], "time_s": [...]}}   layer_s(1, C), if measured
  GRID = {"hidden", "moe_ffn", "experts", "top_k", "tokens": [T...], "distinct_experts": [n...],
          "time_s": [[seconds or null per n] per T]}, interpolated linearly in n, then in T, and extended
          linearly past the last point; its geometry must match the model.
For T > 1 tokens, a measured layer_s uses the one-token time at context C + T (decode attention is
memory-bound: T more tokens of KV, the weights read once). "expert_h2d_s" is not needed: copy times come
from the bandwidth tables. The log says which tables are used.

Dimension letters: L MoE layers, E experts, K top-k, D hidden, F expert FFN, T tokens, C context.

Usage:
    costs = CostModel(get_model("phi-3.5-moe"), get_hardware("a100-40g-pcie4")); costs.expert_s(1)
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

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


def _line(x: np.ndarray, y: np.ndarray, at: float) -> float:
    """y(at), linear through the points, extended linearly beyond them."""
    if x.size == 1:
        return float(y[0])
    i = int(np.clip(np.searchsorted(x, at) - 1, 0, x.size - 2))
    return float(y[i] + (at - x[i]) * (y[i + 1] - y[i]) / (x[i + 1] - x[i]))


class _Grid:
    """time_s over (tokens, distinct experts) with nulls where no routing exists (see the module docstring)."""

    def __init__(self, table: dict[str, Any], spec: ModelSpec, where: str) -> None:
        try:
            geometry = tuple(table[k] for k in ("hidden", "moe_ffn", "experts", "top_k"))
            self.tokens = np.asarray(table["tokens"], dtype=np.float64)
            counts = np.asarray(table["distinct_experts"], dtype=np.float64)
            rows = [[np.nan if v is None else float(v) for v in row] for row in table["time_s"]]
        except (KeyError, TypeError, ValueError):
            raise UserError(f"{where}: a kernel grid needs hidden, moe_ffn, experts, top_k, tokens, "
                            "distinct_experts and time_s; rerun `moespeq calibrate`") from None
        if geometry != (spec.hidden, spec.moe_ffn, spec.experts, spec.top_k):
            raise UserError(f"{where}: measured for hidden/moe_ffn/experts/top_k {geometry}, but {spec.name} has "
                            f"{(spec.hidden, spec.moe_ffn, spec.experts, spec.top_k)}; calibrate for this model")
        grid = np.asarray(rows, dtype=np.float64)  # [T, n]
        if grid.shape != (self.tokens.size, counts.size) or np.any(np.diff(self.tokens) <= 0):
            raise UserError(f"{where}: time_s must be one row per token count (increasing), one value per count")
        self.rows = [(counts[np.isfinite(r)], r[np.isfinite(r)]) for r in grid]
        if any(x.size == 0 for x, _ in self.rows):
            raise UserError(f"{where}: every token count needs at least one measured time")

    def at(self, tokens: float, distinct: float) -> float:
        per_row = np.array([_line(x, y, distinct) for x, y in self.rows])
        return max(_line(self.tokens, per_row, tokens), 0.0)


def _tables(hw: HardwareProfile, spec: ModelSpec) -> dict[str, Any]:
    model, raw = spec.name, hw.kernel_tables
    out: dict[str, Any] = {}
    for key in ("moe_bf16_layer_s", "moe_int4_layer_s"):
        if model in raw.get(key, {}):
            out[key] = _Grid(raw[key][model], spec, f"hardware {hw.name} kernel_tables[{key!r}][{model!r}]")
    if model in raw.get("attention_layer_s", {}):
        table = raw["attention_layer_s"][model]
        try:
            x = np.asarray(table["context"], dtype=np.float64)
            y = np.asarray(table["time_s"], dtype=np.float64)
        except (KeyError, TypeError, ValueError):
            raise UserError(f"hardware {hw.name}: kernel_tables['attention_layer_s'][{model!r}] needs "
                            "'context' and 'time_s' lists") from None
        if x.size != y.size or x.size == 0 or np.any(np.diff(x) <= 0) or np.any(y <= 0):
            raise UserError(f"hardware {hw.name}: attention_layer_s for {model} needs increasing contexts "
                            "and as many positive times")
        out["attention_layer_s"] = (x, y)
    if out:
        log.info("cost model for %s on %s: measured %s, analytic for the rest", model, hw.name, sorted(out))
    else:
        log.info("cost model for %s on %s: analytic roofline (no measured kernel tables)", model, hw.name)
    return out


class PassExperts(NamedTuple):
    """The (layer, expert) pairs a pass routes tokens to, layer-major, [m] each, and where each layer's
    run ends: layer l's experts are [ends[l - 1], ends[l]) (from 0 for layer 0)."""

    layers: np.ndarray  # [m]
    experts: np.ndarray  # [m] expert ids, increasing within a layer
    tokens: np.ndarray  # [m] tokens routed to each (grouped by expert)
    seconds: np.ndarray  # [m] seconds of each expert's kernel over its tokens
    ends: list[int]  # [L]


class CostModel:
    """Seconds of each piece of GPU work for one model on one GPU (see the module docstring)."""

    def __init__(self, spec: ModelSpec, hw: HardwareProfile, quant: QuantSpec | None = None) -> None:
        self.spec, self.hw = spec, hw
        self.quant = quant or QuantSpec()
        self._bw = hw.hbm_gbps * 1e9  # bytes/s
        self._flops = hw.bf16_tflops * 1e12  # FLOP/s
        self._tables = _tables(hw, spec)
        d, s = spec.hidden, spec
        embed = s.vocab * d * (1 if s.tie_embeddings else 2) + (s.vocab if s.lm_head_bias else 0)
        norm = d * (2 if s.norm == "layer" else 1)
        moe = s.moe_layers * (s.router_params + s.shared_params + s.experts * s.expert_params)
        dense = s.first_dense * 3 * d * s.dense_ffn
        self.attn_params = (s.total_params - moe - dense - embed - norm) / s.layers  # attention + norms, per layer
        self.kv_bytes_layer = s.kv_bytes_per_token / s.layers
        self.head_params = s.vocab * d + norm
        tokens = np.arange(MAX_TABLE_TOKENS + 1)
        self._expert = self._kernel_s(float(s.expert_bytes_bf16), 2.0 * s.expert_params * tokens, EXPERT_LAUNCHES)
        self._expert[0] = 0.0  # [MAX_TABLE_TOKENS + 1] analytic seconds of one expert over t tokens
        self._draft_step_s: dict[int, float] = {}  # draft_step_s by context: cycles redraft the same positions

    def _kernel_s(self, bytes_: float | np.ndarray, flops: float | np.ndarray, launches: int) -> Any:
        return np.maximum(bytes_ / self._bw, flops / self._flops) + launches * self.hw.launch_overhead_s

    # ---- pieces ---------------------------------------------------------------------------------------
    def layer_s(self, tokens: int, context: int) -> float:
        """One MoE layer's non-expert work for `tokens` new tokens after `context` cached ones."""
        s = self.spec
        if "attention_layer_s" in self._tables:
            x, y = self._tables["attention_layer_s"]
            return _line(x, y, context + tokens)
        weights = (self.attn_params + s.router_params + s.shared_params) * BF16_BYTES
        kv = (context + tokens) * self.kv_bytes_layer
        flops = 2 * (self.attn_params + s.router_params + s.shared_params) * tokens \
            + 4 * s.heads * s.head_dim * tokens * (context + tokens)
        return float(self._kernel_s(weights + kv, flops, LAYER_LAUNCHES))

    def experts_s(self, tokens: np.ndarray) -> np.ndarray:
        """[n] seconds of each of one layer's n experts, tokens [n] routed to each (grouped by expert)."""
        t = np.asarray(tokens, dtype=np.int64)
        analytic = self._expert[t] if t.max(initial=0) <= MAX_TABLE_TOKENS else \
            self._kernel_s(float(self.spec.expert_bytes_bf16), 2.0 * self.spec.expert_params * t, EXPERT_LAUNCHES)
        grid = self._tables.get("moe_bf16_layer_s")
        if grid is None or t.size == 0:
            return analytic
        layer = grid.at(t.sum() / self.spec.top_k, t.size)
        total = float(analytic.sum())
        return analytic * (layer / total) if total > 0 else np.full(t.size, layer / t.size)

    def pass_experts(self, counts: np.ndarray) -> PassExperts:
        """Every expert a pass with counts [L, E] tokens per expert runs, with its seconds (PassExperts)."""
        layers, experts = counts.nonzero()  # [m] each, layer-major
        tokens = counts[layers, experts]
        ends = np.searchsorted(layers, np.arange(1, counts.shape[0] + 1)).tolist()  # [L] end of each layer's run
        if "moe_bf16_layer_s" not in self._tables and tokens.max(initial=0) <= MAX_TABLE_TOKENS:
            seconds = self._expert[tokens]  # [m] analytic: the same table lookup as experts_s, in one gather
        else:
            seconds = np.concatenate([self.experts_s(tokens[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)])
        return PassExperts(layers, experts, tokens, seconds, ends)

    def head_s(self, tokens: int, context: int) -> float:
        """LM head and final norm, plus the dense layers (their attention and MLP) for `tokens` tokens."""
        s = self.spec
        head = self._kernel_s(self.head_params * BF16_BYTES, 2.0 * self.head_params * tokens, HEAD_LAUNCHES)
        dense_mlp = self._kernel_s(3 * s.hidden * s.dense_ffn * BF16_BYTES, 6.0 * s.hidden * s.dense_ffn * tokens,
                                   EXPERT_LAUNCHES)
        return float(head + s.first_dense * (dense_mlp + self.layer_s(tokens, context)))

    def draft_step_s(self, context: int) -> float:
        """One INT4 draft forward of one token after `context` cached tokens."""
        if context not in self._draft_step_s:
            self._draft_step_s[context] = self._draft_step_uncached_s(context)
        return self._draft_step_s[context]

    def _draft_step_uncached_s(self, context: int) -> float:
        s = self.spec
        grid = self._tables.get("moe_int4_layer_s")
        if grid is not None:
            fused = grid.at(1, s.top_k)
        else:  # one fused MoE kernel per layer over the top-K INT4 experts, all GPU-resident
            fused = float(self._kernel_s(s.top_k * s.expert_bytes_int4(self.quant), 2.0 * s.top_k * s.expert_params, 1))
        return s.moe_layers * (self.layer_s(1, context) + fused) + self.head_s(1, context)

    # ---- whole passes ---------------------------------------------------------------------------------
    def forward_s(self, counts: np.ndarray, context: int) -> float:
        """A whole target forward with every expert resident: counts [L, E] tokens per expert."""
        tokens = int(counts[0].sum()) // self.spec.top_k
        run = self.pass_experts(counts)
        experts = sum(float(run.seconds[a:b].sum()) for a, b in zip([0, *run.ends[:-1]], run.ends, strict=True))
        return self.spec.moe_layers * self.layer_s(tokens, context) + experts + self.head_s(tokens, context)

    def perf_model(self, context: int, k_max: int, copy_s: float) -> PerfModel:
        """The governor's constants at a typical context: T_draft, T_verify(T) with uniform-routing expert
        counts E (1 - (1 - K/E)^T) per layer, one expert's copy time."""
        s = self.spec
        layer, assumed = [], []
        for t in range(1, k_max + 2):
            distinct = max(1, round(s.experts * (1.0 - (1.0 - s.top_k / s.experts) ** t)))
            share = np.full(distinct, t * s.top_k // distinct)
            share[: t * s.top_k - int(share.sum())] += 1  # [distinct] tokens per expert, T*K in all
            layer.append(self.layer_s(t, context) + float(self.experts_s(share).sum()))
            assumed.append(float(distinct))
        verify = tuple(s.moe_layers * x + self.head_s(t, context) for t, x in enumerate(layer, start=1))
        return PerfModel(draft_base_s=0.0, draft_token_s=self.draft_step_s(context), verify_s=verify,
                         copy_s=copy_s, expert_bytes=s.expert_bytes_bf16, verify_layer_s=tuple(layer),
                         verify_distinct=tuple(assumed), expert_s=float(self.experts_s(np.array([1]))[0]))
