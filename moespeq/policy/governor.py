"""Governors: the draft length k of each speculative cycle (k = 0: decode one token without a draft).

  off        k = 0 always (every non-speculative baseline).
  static     a fixed k (speq-static, and the oracle's best static k).
  roofline   the Amortization Roofline governor (paper §3.2, moespeq.policy.roofline):
             k* = argmax_{k in [k_min, k_max]} Theta(k), with
             - per-position acceptance p_j by EMA with factor `ema` after a warm-up of `warmup` cycles at
               k_max that measures them (the first n observations are averaged: factor max(ema, 1/n)),
               shrunk toward the pooled rate of all positions (AcceptanceEstimator), because positions
               beyond the k in use are not observed again after the warm-up;
             - N_new(T), the new experts that verifying T tokens needs, measured after each cycle by
               comparing the verified tokens' routing with the cache contents at the cycle's start, as
               a level (first token, seen every cycle) times a shape over T (NewExpertEstimator);
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
    """Per-index EMA whose first n observations are plainly averaged (factor max(ema, 1/n))."""

    def __init__(self, prior: np.ndarray, ema: float) -> None:
        self.value = prior.astype(np.float64).copy()
        self.n = np.zeros(prior.size, dtype=np.int64)
        self.ema = ema

    def update(self, index: np.ndarray, x: np.ndarray) -> None:
        self.n[index] += 1
        alpha = np.maximum(self.ema, 1.0 / self.n[index])
        self.value[index] += alpha * (x - self.value[index])

    def weight(self) -> np.ndarray:
        """Effective number of observations behind each value (an EMA remembers about 1/ema of them)."""
        return np.minimum(self.n, 1.0 / self.ema)


class AcceptanceEstimator:
    """p_j for draft positions j = 1..J: a per-position EMA shrunk toward the pooled acceptance rate.

    p_j = (m_j v_j + w p) / (m_j + w), with v_j the position's EMA, m_j its effective number of
    observations (at most 1/ema) faded by (1 - ema) per cycle since the position was last observed,
    p the EMA over all positions (starting at `prior`) and w = `prior_weight`. A position seen only in a
    short warm-up, or not since the governor settled on a shorter k, leans on the pooled rate instead
    of on a few stale samples.
    """

    def __init__(self, positions: int, prior: float, ema: float, prior_weight: float) -> None:
        self.position = _Ema(np.full(positions, prior), ema)
        self.pooled = _Ema(np.array([prior]), ema)
        self.pooled.n[0] = 1  # the prior counts as one observation of the pooled rate
        self.prior_weight = prior_weight
        self.cycles = 0
        self.last_seen = np.zeros(positions)  # cycle of each position's latest observation

    def observe(self, outcomes: np.ndarray) -> None:
        """outcomes [m] of positions 1..m (1 accepted, 0 rejected), from one cycle."""
        self.cycles += 1
        self.position.update(np.arange(outcomes.size), outcomes)
        self.pooled.update(np.zeros(1, dtype=np.int64), np.array([outcomes.mean()]))
        self.last_seen[: outcomes.size] = self.cycles

    def estimate(self) -> np.ndarray:
        fade = (1.0 - self.position.ema) ** (self.cycles - self.last_seen)
        m, w = self.position.weight() * fade, self.prior_weight
        return (m * self.position.value + w * self.pooled.value[0]) / np.maximum(m + w, 1e-12)


class NewExpertEstimator:
    """N_new(T) for T = 1..T_max verified tokens, as a level times a shape: N_new(T) = (N_1 + 1) r(T) - 1.

    The level N_1 (new experts of the first token, which depends on the cache) is seen every cycle; the
    shape r(T) = (N_new(T) + 1) / (N_1 + 1) (how fast routing diversity grows with T) only when T tokens
    are verified, and changes slowly. Before any observation N_1 = L E (1 - slots / (L E)) K / E (a cold
    cache under uniform routing) and r(T) = (1 - (1 - K/E)^T) / (K/E) (distinct experts of T uniform tokens).
    """

    def __init__(self, t_max: int, layers: int, experts: int, top_k: int, slots: int, ema: float) -> None:
        t = np.arange(1, t_max + 1)
        distinct = 1.0 - (1.0 - top_k / experts) ** t  # [T] per-expert probability of being needed
        cold = max(0.0, 1.0 - slots / (layers * experts))
        self.level = _Ema(np.array([layers * experts * distinct[0] * cold]), ema)
        self.shape = _Ema(distinct / distinct[0], ema)
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
        self.level.update(np.zeros(1, dtype=np.int64), new[:1])
        upto = min(n_tok, self.shape.value.size)
        if upto > 1:
            self.shape.update(np.arange(1, upto), (new[1:upto] + 1.0) / (new[0] + 1.0))

    def estimate(self) -> np.ndarray:
        """[T_max] expected new experts for T = 1..T_max."""
        return (self.level.value[0] + 1.0) * self.shape.value - 1.0


class RooflineGovernor(Governor):
    name = "roofline"

    def __init__(self, cfg: GovernorConfig, perf: PerfModel, layers: int, experts: int, top_k: int, slots: int) -> None:
        self.cfg, self.perf = cfg, perf
        self.accept = AcceptanceEstimator(max(cfg.k_max, 1), cfg.prior_acceptance, cfg.ema, cfg.prior_weight)
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
        accept = self.accept.estimate()
        self.last_theta = np.array([theta(self.perf, k, accept, new) for k in range(cfg.k_max + 1)])
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
            self.accept.observe((np.arange(seen) < accepted).astype(np.float64))
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
