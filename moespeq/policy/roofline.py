"""The Amortization Roofline performance model (paper §3.2): throughput of one speculative cycle vs k.

For draft length k (k = 0: plain decoding) with per-position acceptance p_1..p_k:

  k_accept(k)  = sum_{i<=k} prod_{j<=i} p_j            expected accepted draft tokens
  tokens(k)    = k_accept(k) + 1                       + the target's own token at the first mismatch
  T_cycle(k)   = max(T_draft(k), T_pcie,init) + T_pcie,new(k) + T_verify(k+1)
  T_draft(k)   = T_d,base + k T_d,token  (0 for k = 0)
  T_pcie,init  = N_init * t_copy           the first verified token's new experts (fetched while drafting)
  T_pcie,new   = T_pcie,overhead + (N_new(k+1) - N_init) * t_copy    the rest of the new experts
  Theta(k)     = tokens(k) / T_cycle(k)

N_new(T) is the expected number of experts that verifying T tokens needs and the cache lacks (the
governor estimates it online). The paper counts only k_accept; we add the target's token because it is
produced every cycle, and without it k = 0 would be worthless, while DESIGN §1 makes k = 0 a candidate.

Roofline view (Fig. 8): amortization intensity I_amort(k) = tokens(k) / (N_new bytes) in tokens per byte;
the compute roof of k is tokens(k) / (T_draft(k) + T_verify(k+1)) (I/O fully hidden); the I/O roof is
I_amort * B_PCIe. Theta(k) lies below both.

Usage:
    perf = PerfModel(draft_base_s=0.0, draft_token_s=3.4e-3, verify_s=(8e-3, 12e-3), copy_s=6.3e-3,
                     expert_bytes=157_286_400)
    theta(perf, k=1, accept=[0.9], new_experts=[10.0, 15.0])
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class PerfModel:
    """Profiled constants of one machine and model (the simulator derives them from its cost model)."""

    draft_base_s: float  # T_d,base: fixed cost of a draft cycle
    draft_token_s: float  # T_d,token: one draft forward
    verify_s: tuple[float, ...]  # T_verify(T) for T = 1, 2, ... verified tokens (index T - 1)
    copy_s: float  # one expert's host-to-device copy
    expert_bytes: int
    pcie_overhead_s: float = 0.0  # T_pcie,overhead: fixed cost of a cycle's synchronous fetches
    verify_layer_s: tuple[float, ...] = ()  # one verify layer for T tokens (index T - 1); scheduler budgets
    verify_distinct: tuple[float, ...] = ()  # experts per layer that verify_s assumes for T tokens (index T - 1)
    expert_s: float = 0.0  # one more expert in a verify layer (its weights read once for its few tokens)
    # the model's constant terms per length (T_draft(k) for k < n, T_verify(T) for T <= n, verify_distinct), built
    # on first use: the governor asks for the same lengths every cycle. Not part of the model's value.
    _tables: dict[tuple[str, int], np.ndarray] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.verify_s or min(self.verify_s) <= 0:
            raise ValueError("PerfModel.verify_s needs positive times for T = 1, 2, ...")
        if self.copy_s <= 0 or self.draft_token_s < 0 or self.draft_base_s < 0:
            raise ValueError("PerfModel times must be positive (copy_s) or non-negative")

    @property
    def pcie_bytes_per_s(self) -> float:
        return self.expert_bytes / self.copy_s

    def t_draft(self, k: int) -> float:
        return 0.0 if k == 0 else self.draft_base_s + k * self.draft_token_s

    def t_verify(self, tokens: int) -> float:
        """T_verify(T), extrapolated linearly past the table."""
        table = self.verify_s
        if tokens <= len(table):
            return table[tokens - 1]
        slope = table[-1] - table[-2] if len(table) > 1 else table[-1]
        return table[-1] + (tokens - len(table)) * slope

    def _table(self, name: str, n: int, build: Callable[[], np.ndarray]) -> np.ndarray:
        """The constant array `name` of length n, built once (callers must not modify it)."""
        table = self._tables.get((name, n))
        if table is None:
            table = self._tables[(name, n)] = build()
        return table

    def t_draft_table(self, n: int) -> np.ndarray:
        """[n] T_draft(k) for k = 0..n-1 (0 for k = 0)."""
        def build() -> np.ndarray:
            k = np.arange(n)
            return np.where(k > 0, self.draft_base_s + k * self.draft_token_s, 0.0)
        return self._table("draft", n, build)

    def t_verify_routed(self, layers: int, distinct: np.ndarray) -> np.ndarray:
        """T_verify(T) for T = 1..len(distinct) when T tokens need distinct[T - 1] experts per layer instead
        of the number verify_s assumes (real routing repeats experts across consecutive tokens more than
        uniform routing does); as profiled past the table of assumed counts."""
        base = self._table("verify", len(distinct),
                           lambda: np.array([self.t_verify(t) for t in range(1, len(distinct) + 1)]))
        n = min(len(self.verify_distinct), len(distinct))
        assumed = self._table("verify_distinct", n, lambda: np.asarray(self.verify_distinct[:n]))
        extra = np.zeros(len(distinct))
        extra[:n] = layers * (np.asarray(distinct[:n]) - assumed) * self.expert_s
        return base + extra

    def t_verify_layer(self, tokens: int) -> float:
        if not self.verify_layer_s:
            return 0.0
        return self.verify_layer_s[min(tokens, len(self.verify_layer_s)) - 1]


def k_accept(accept: Sequence[float] | np.ndarray, k: int) -> float:
    """sum_{i<=k} prod_{j<=i} p_j for per-position acceptance p_1..p_k."""
    return float(np.cumprod(np.asarray(accept, dtype=np.float64)[:k]).sum()) if k else 0.0


def cycle_times(perf: PerfModel, n_init: np.ndarray, n_all: np.ndarray, t_verify: np.ndarray) -> np.ndarray:
    """T_cycle(k) for k = 0..K-1 at once: n_init[k] and n_all[k] new experts of the first and of all k + 1
    verified tokens, t_verify[k] = T_verify(k + 1)."""
    draft = perf.t_draft_table(len(n_init))
    t_new = perf.pcie_overhead_s + np.maximum(n_all - n_init, 0.0) * perf.copy_s
    return np.maximum(draft, n_init * perf.copy_s) + t_new + t_verify


def t_cycle(perf: PerfModel, k: int, new_experts: Sequence[float] | np.ndarray,
            t_verify: float | None = None) -> float:
    """T_cycle(k); new_experts[T - 1] = expected new experts when verifying T tokens; t_verify overrides
    the profiled T_verify(k + 1) (the governor's, corrected for the routing it measures)."""
    verify = perf.t_verify(k + 1) if t_verify is None else t_verify
    row = np.zeros(k + 1)
    return float(cycle_times(perf, row + float(new_experts[0]), row + float(new_experts[k]), row + verify)[k])


def theta(perf: PerfModel, k: int, accept: Sequence[float] | np.ndarray, new_experts: Sequence[float] | np.ndarray,
          t_verify: float | None = None) -> float:
    """Expected tokens per second of cycles of draft length k."""
    return (k_accept(accept, k) + 1.0) / t_cycle(perf, k, new_experts, t_verify)


def operating_point(perf: PerfModel, k: int, accept: Sequence[float] | np.ndarray,
                    new_experts: Sequence[float] | np.ndarray) -> dict[str, Any]:
    """Cycles of draft length k: tokens per cycle, T_cycle, Theta, I_amort (tokens/GB), both roofs."""
    tokens = k_accept(accept, k) + 1.0
    io_bytes = float(new_experts[k]) * perf.expert_bytes
    i_amort = tokens / io_bytes if io_bytes > 0 else float("inf")
    return {
        "k": k, "tokens_per_cycle": tokens, "new_experts": float(new_experts[k]),
        "t_draft_ms": perf.t_draft(k) * 1e3, "t_verify_ms": perf.t_verify(k + 1) * 1e3,
        "t_cycle_ms": t_cycle(perf, k, new_experts) * 1e3, "theta_tok_s": theta(perf, k, accept, new_experts),
        "i_amort_tok_per_gb": i_amort * 1e9, "compute_roof_tok_s": tokens / (perf.t_draft(k) + perf.t_verify(k + 1)),
        "io_roof_tok_s": i_amort * perf.pcie_bytes_per_s,
    }


def operating_points(perf: PerfModel, accept: Sequence[float] | np.ndarray,
                     new_experts: Sequence[float] | np.ndarray, k_max: int) -> list[dict[str, Any]]:
    """operating_point for k = 0..k_max with one N_new(T) curve."""
    return [operating_point(perf, k, accept, new_experts) for k in range(k_max + 1)]
