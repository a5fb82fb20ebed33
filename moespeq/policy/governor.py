"""Governors: the draft length k of each speculative cycle (k = 0: decode one token without a draft).

  off        k = 0 always (every non-speculative baseline).
  static     a fixed k (speq-static, and the oracle's best static k).
  roofline   the Amortization Roofline governor (paper §3.2, moespeq.policy.roofline):
             k* = argmax_{k in [k_min, k_max]} Theta(k), with
             - per-position acceptance p_j by EMA with factor `ema` after a warm-up of `warmup` cycles at
               k_max that measures them (the first n observations of a position are averaged, i.e. the
               EMA factor is max(ema, 1/n), so warm-up and EMA are one formula);
             - N_new(T), the new experts that verifying T tokens needs, measured after each cycle by
               comparing the verified tokens' routing with the cache contents at the cycle's start, EMA'd
               per T; a T not yet observed is scaled from the largest observed T by the shape of the
               uniform-routing curve E (1 - (1 - K/E)^T) (a prior before any observation);
             - k = 0 a candidate when k_min = 0; after `probe_interval` cycles at k = 0 one cycle at
               k = 1 re-measures p_1, so speculation can come back when the draft starts agreeing.
Governors are told each cycle's outcome (`observe`) and asked for the next k (`choose`).

Usage:
    gov = RooflineGovernor(GovernorConfig(kind="roofline"), perf, layers=32, experts=16, top_k=2, slots=113)
    k = gov.choose(k_cap=8); ...; gov.observe(k, accepted=a, verify_ids=V, resident_at_start=mask)
"""

from __future__ import annotations

import numpy as np

from moespeq.policy.config import GovernorConfig
from moespeq.policy.roofline import PerfModel, theta


class Governor:
    name = "base"

    def choose(self, k_cap: int) -> int:
        """The next cycle's draft length, at most k_cap (the trace end or the draft buffer's length)."""
        raise NotImplementedError

    def observe(self, k: int, accepted: int, verify_ids: np.ndarray | None = None,
                resident_at_start: np.ndarray | None = None) -> None:
        """A cycle of draft length k accepted `accepted` draft tokens; verify_ids [k+1, L, K]."""


class OffGovernor(Governor):
    name = "off"

    def choose(self, k_cap: int) -> int:
        return 0


class StaticGovernor(Governor):
    name = "static"

    def __init__(self, k: int) -> None:
        self.k = k

    def choose(self, k_cap: int) -> int:
        return min(self.k, k_cap)


class _Ema:
    """Per-index EMA whose first n observations are averaged (factor max(ema, 1/n))."""

    def __init__(self, prior: np.ndarray, ema: float) -> None:
        self.value = prior.astype(np.float64).copy()
        self.n = np.zeros(prior.size, dtype=np.int64)
        self.ema = ema

    def update(self, index: np.ndarray, x: np.ndarray) -> None:
        self.n[index] += 1
        alpha = np.maximum(self.ema, 1.0 / self.n[index])
        self.value[index] += alpha * (x - self.value[index])


class NewExpertEstimator:
    """N_new(T) for T = 1..T_max verified tokens (see the module docstring)."""

    def __init__(self, t_max: int, layers: int, experts: int, top_k: int, slots: int, ema: float) -> None:
        t = np.arange(1, t_max + 1)
        self.shape = layers * experts * (1.0 - (1.0 - top_k / experts) ** t)  # [T] distinct experts, uniform
        cold = max(0.0, 1.0 - slots / (layers * experts))
        self.curve = _Ema(self.shape * cold, ema)
        self.E = experts

    def observe(self, verify_ids: np.ndarray, resident: np.ndarray) -> None:
        """verify_ids [T, L, K] of a finished cycle; resident [L, E] at its start."""
        n_tok, layers = verify_ids.shape[:2]
        seen = np.zeros((layers, self.E), dtype=bool)
        rows = np.arange(layers)[:, None]
        new = np.empty(n_tok)
        for t in range(n_tok):
            seen[rows, verify_ids[t]] = True
            new[t] = np.count_nonzero(seen & ~resident)
        upto = min(n_tok, self.shape.size)
        self.curve.update(np.arange(upto), new[:upto])

    def estimate(self) -> np.ndarray:
        """[T_max] expected new experts for T = 1..T_max."""
        observed = np.flatnonzero(self.curve.n > 0)
        if observed.size == 0:
            return self.curve.value.copy()
        top = observed[-1]
        out = self.curve.value.copy()
        out[top + 1:] = self.curve.value[top] * self.shape[top + 1:] / self.shape[top]
        return out


class RooflineGovernor(Governor):
    name = "roofline"

    def __init__(self, cfg: GovernorConfig, perf: PerfModel, layers: int, experts: int, top_k: int, slots: int) -> None:
        self.cfg, self.perf = cfg, perf
        self.accept = _Ema(np.full(max(cfg.k_max, 1), cfg.prior_acceptance), cfg.ema)
        self.io = NewExpertEstimator(cfg.k_max + 1, layers, experts, top_k, slots, cfg.ema)
        self.cycles = 0
        self.zero_run = 0
        self.last_theta: np.ndarray = np.zeros(cfg.k_max + 1)

    def choose(self, k_cap: int) -> int:
        cfg = self.cfg
        hi = min(cfg.k_max, k_cap)
        if self.cycles < cfg.warmup:
            return hi
        lo = min(cfg.k_min, hi)
        new = self.io.estimate()
        self.last_theta = np.array([theta(self.perf, k, self.accept.value, new) for k in range(cfg.k_max + 1)])
        k = lo + int(np.argmax(self.last_theta[lo:hi + 1]))
        if k == 0 and hi >= 1 and self.zero_run >= cfg.probe_interval > 0:
            return 1
        return k

    def observe(self, k: int, accepted: int, verify_ids: np.ndarray | None = None,
                resident_at_start: np.ndarray | None = None) -> None:
        self.cycles += 1
        self.zero_run = self.zero_run + 1 if k == 0 else 0
        seen = min(accepted + 1, k)  # positions 1..a accepted, a+1 rejected (if drafted), later unseen
        if seen:
            outcome = (np.arange(seen) < accepted).astype(np.float64)
            self.accept.update(np.arange(seen), outcome)
        if verify_ids is not None and resident_at_start is not None:
            self.io.observe(verify_ids, resident_at_start)


def make_governor(cfg: GovernorConfig, perf: PerfModel | None = None, layers: int = 0, experts: int = 0,
                  top_k: int = 0, slots: int = 0) -> Governor:
    if cfg.kind == "off":
        return OffGovernor()
    if cfg.kind == "static":
        return StaticGovernor(cfg.k)
    if perf is None:
        raise ValueError("the roofline governor needs a PerfModel")
    return RooflineGovernor(cfg, perf, layers, experts, top_k, slots)
