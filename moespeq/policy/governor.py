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
               a level (first token, per draft length: the cache depends on k) times a shape over T
               (NewExpertEstimator);
             - T_verify(T) as profiled, corrected by the distinct experts per layer that T verified
               tokens were measured to need (the profile assumes uniform routing; real tokens share
               experts, which makes long drafts cheaper to verify);
             - k = 0 a candidate when k_min = 0, its cost from a shadow LRU cache (PlainDecodeShadow) fed
               with the accepted tokens: the cache's contents depend on the k in use (long drafts evict
               what plain decoding would reuse), so N_new(1) measured while speculating says little about
               decoding without a draft; after `probe_interval` cycles at k = 0 one cycle at k = 1
               re-measures p_1, so speculation can come back when the draft starts agreeing (a probe
               that does not bring it back doubles the wait for the next, up to 8 intervals);
             - the modelled T_cycle(k) scaled by the measured / modelled cycle time of k (interpolated
               over k for draft lengths not run): the model counts each new expert once, while long
               cycles also reload experts evicted within the cycle and pay for wrong prefetches.
Governors are told each cycle's outcome (`observe`) and asked for the next k (`choose`).

Usage:
    gov = RooflineGovernor(GovernorConfig(kind="roofline"), perf, layers=32, experts=16, top_k=2, capacity=[113])
    k = gov.choose(k_cap=8); ...; gov.observe(k, accepted=a, verify_ids=V, resident_at_start=mask)
"""

from __future__ import annotations

import numpy as np

from moespeq.policy.config import GovernorConfig
from moespeq.policy.roofline import PerfModel, cycle_times

PROBE_BACKOFF_MAX = 8  # probes that fail in a row space out to at most 8 probe intervals


class Governor:
    name = "base"

    def choose(self, k_cap: int) -> int:
        """The next cycle's draft length, at most k_cap (the trace end or the draft buffer's length)."""
        raise NotImplementedError

    def observe(self, k: int, accepted: int, verify_ids: np.ndarray | None = None,
                resident_at_start: np.ndarray | None = None, cycle_s: float | None = None) -> None:
        """A cycle of draft length k accepted `accepted` draft tokens; verify_ids [k+1, L, K]; it took cycle_s."""


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
        if index.size == 1:  # most updates (a cycle without a draft verifies one token): NumPy's per-call cost
            self.update_one(int(index[0]), float(x[0]))
            return
        self.n[index] += 1
        alpha = np.maximum(self.ema, 1.0 / self.n[index])
        self.value[index] += alpha * (x - self.value[index])

    def update_one(self, i: int, x: float) -> None:
        """update of one index in scalar arithmetic (the same operations; most updates are of one value)."""
        n = self.n.item(i) + 1
        self.n[i] = n
        value = self.value.item(i)
        self.value[i] = value + max(self.ema, 1.0 / n) * (x - value)

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
        self.pooled.update_one(0, float(outcomes.mean()))
        self.last_seen[: outcomes.size] = self.cycles

    def estimate(self) -> np.ndarray:
        fade = (1.0 - self.position.ema) ** (self.cycles - self.last_seen)
        m, w = self.position.weight() * fade, self.prior_weight
        return (m * self.position.value + w * self.pooled.value[0]) / np.maximum(m + w, 1e-12)


class NewExpertEstimator:
    """N_new(T) for T = 1..T_max verified tokens, as a level times a shape: N_new(T) = (N_1 + 1) r(T) - 1.

    The level N_1 (new experts of the first token, which depends on the cache) is seen every cycle; the
    shape r(T) = (N_new(T) + 1) / (N_new(1) + 1) (how fast routing diversity grows with T) only when T
    tokens are verified, and changes slowly; so do the distinct experts per layer that T tokens need
    (the verify cost). The cache's contents depend on the draft length in use (long drafts evict more),
    so N_1 is also kept per draft length k, and N_new(k + 1) uses the level of cycles run at k, falling
    back to the level of all cycles for a k not run yet. Before any observation
    N_1 = L E (1 - slots / (L E)) K / E (a cold cache under uniform routing) and
    r(T) = (1 - (1 - K/E)^T) / (K/E) (distinct experts of T uniform tokens).
    """

    def __init__(self, t_max: int, layers: int, experts: int, top_k: int, slots: int, ema: float) -> None:
        t = np.arange(1, t_max + 1)
        distinct = 1.0 - (1.0 - top_k / experts) ** t  # [T] per-expert probability of being needed
        cold = max(0.0, 1.0 - slots / (layers * experts))
        self.level = _Ema(np.array([layers * experts * distinct[0] * cold]), ema)
        self.level_at_k = _Ema(np.full(t_max, self.level.value[0]), ema)  # index k: cycles of draft length k
        self.shape = _Ema(distinct / distinct[0], ema)
        self.distinct = _Ema(experts * distinct, ema)  # [T] distinct experts per layer that T tokens need
        self.E = experts
        self.rows = np.arange(layers)[:, None]  # [L, 1]

    def observe(self, verify_ids: np.ndarray, resident: np.ndarray) -> None:
        """verify_ids [T, L, K] of a finished cycle (draft length T - 1); resident [L, E] at its start."""
        n_tok, layers = verify_ids.shape[:2]
        seen = np.zeros((layers, self.E), dtype=bool)
        new, distinct = np.empty(n_tok), np.empty(n_tok)
        for t in range(n_tok):
            seen[self.rows, verify_ids[t]] = True
            new[t] = np.count_nonzero(seen & ~resident)
            distinct[t] = np.count_nonzero(seen) / layers
        self.level.update_one(0, float(new[0]))
        upto = min(n_tok, self.shape.value.size)
        self.level_at_k.update_one(upto - 1, float(new[0]))
        self.distinct.update(np.arange(upto), distinct[:upto])
        if upto > 1:
            self.shape.update(np.arange(1, upto), (new[1:upto] + 1.0) / (new[0] + 1.0))

    def levels(self) -> tuple[np.ndarray, np.ndarray]:
        """For each draft length k = 0..T_max-1 in its own cache regime: N_new(1) and N_new(k + 1)."""
        level = np.where(self.level_at_k.n > 0, self.level_at_k.value, self.level.value[0])
        return level, (level + 1.0) * self.shape.value - 1.0  # np.where made level a new array


class PlainDecodeShadow:
    """Misses per token that plain decoding (k = 0) would have with this cache: an LRU of expert ids only.

    It is fed the accepted path's routing one token at a time, whatever k the decoder runs, so its miss
    rate is that of the k = 0 regime even while speculation churns the real cache (long drafts load the
    union of many tokens' experts, rejected tokens' and mispredicted ones included, and evict what
    consecutive tokens would reuse). An LRU cache of C slots holds exactly the C most recently used
    experts, so a token misses the experts whose last use ranks below the C-th latest in their pool (one
    global pool, or one per layer). It stands in for the real eviction rule, which at k = 0 has no
    lookahead to use and ranks mostly by age.
    """

    def __init__(self, layers: int, experts: int, capacity: list[int], ema: float) -> None:
        self.last_use = np.full((layers, experts), -1, dtype=np.int64)
        self.capacity = np.asarray(capacity, dtype=np.int64)
        self.clock = 0
        self.misses = _Ema(np.zeros(1), ema)
        self.rows = np.arange(layers)[:, None]

    def _oldest_resident(self) -> np.ndarray:
        """The least recent last use an expert the LRU holds now can have: one value, or [L, 1] per layer (an
        expert is held when its last use is at least this)."""
        if self.capacity.size == 1:
            slots = int(min(self.capacity[0], self.last_use.size))
            threshold = np.partition(self.last_use, -slots, axis=None)[-slots] if slots else np.iinfo(np.int64).max
        else:
            ranked = -np.sort(-self.last_use, axis=1)  # each layer's uses, latest first
            per_layer = np.minimum(self.capacity, self.last_use.shape[1])
            threshold = np.where(per_layer > 0, ranked[np.arange(per_layer.size), np.maximum(per_layer - 1, 0)],
                                 np.iinfo(np.int64).max)[:, None]
        return np.maximum(threshold, 0)

    def start_from(self, resident: np.ndarray) -> None:
        """Begin with the real cache's contents (resident [L, E]), as if just used, once, before any token."""
        if self.clock == 0:
            n = int(np.count_nonzero(resident))
            self.last_use[resident] = np.arange(n)
            self.clock = n

    def observe(self, path_ids: np.ndarray) -> None:
        """path_ids [T, L, K]: the routing of a cycle's accepted tokens, in decoding order."""
        for ids in path_ids:
            missed = int(np.count_nonzero(self.last_use[self.rows, ids] < self._oldest_resident()))
            self.misses.update_one(0, missed)
            self.last_use[self.rows, ids] = self.clock + np.arange(ids.size).reshape(ids.shape)
            self.clock += ids.size

    def estimate(self) -> float | None:
        return float(self.misses.value[0]) if self.misses.n[0] else None


class RooflineGovernor(Governor):
    name = "roofline"

    def __init__(self, cfg: GovernorConfig, perf: PerfModel, layers: int, experts: int, top_k: int,
                 capacity: list[int]) -> None:
        self.cfg, self.perf = cfg, perf
        self.accept = AcceptanceEstimator(max(cfg.k_max, 1), cfg.prior_acceptance, cfg.ema, cfg.prior_weight)
        self.io = NewExpertEstimator(cfg.k_max + 1, layers, experts, top_k, sum(capacity), cfg.ema)
        self.plain = PlainDecodeShadow(layers, experts, capacity, cfg.ema)
        self.layers = layers
        self.cycles = 0
        self.zero_run = 0
        self.last_theta: np.ndarray = np.zeros(cfg.k_max + 1)
        self.overrun = _Ema(np.ones(cfg.k_max), cfg.ema)  # index k - 1: measured / modelled T_cycle(k)
        self._overrun_now: np.ndarray | None = None  # _overrun() until the next overrun update
        self._tokens_now: np.ndarray | None = None  # _tokens() until the next acceptance update
        self.probe_wait = cfg.probe_interval  # cycles at k = 0 before the next probe at k = 1
        self.probed = False

    def _model(self) -> tuple[np.ndarray, np.ndarray]:
        """Expected tokens and T_cycle (seconds) of a cycle at each k = 0..k_max, by the roofline model."""
        tokens = self._tokens()
        verify = self.perf.t_verify_routed(self.layers, self.io.distinct.value)
        n_init, n_all = self.io.levels()
        plain = self.plain.estimate()
        if plain is not None:
            n_init[0] = n_all[0] = plain
        return tokens, cycle_times(self.perf, n_init, n_all, verify)

    def _tokens(self) -> np.ndarray:
        """[k_max + 1] expected tokens of a cycle at k = 0..k_max, k_accept(k) + 1. Kept until a cycle with a
        draft updates the acceptance estimates (a cycle at k = 0 observes no position)."""
        if self._tokens_now is None:
            accept = self.accept.estimate()[: self.cfg.k_max]
            self._tokens_now = np.concatenate(([1.0], 1.0 + np.cumsum(np.cumprod(accept))))
        return self._tokens_now

    def _overrun(self) -> np.ndarray:
        """[k_max] measured / modelled cycle time of k = 1..k_max: per k where measured, else interpolated.
        Kept until a cycle at k >= 1 updates it (at k = 0, most cycles, it does not change)."""
        if self._overrun_now is None:
            seen = np.flatnonzero(self.overrun.n)
            if seen.size == 0:
                self._overrun_now = np.ones(self.cfg.k_max)
            else:
                ks = np.arange(1, self.cfg.k_max + 1)
                self._overrun_now = np.where(self.overrun.n > 0, self.overrun.value,
                                             np.interp(ks, seen + 1, self.overrun.value[seen]))
        return self._overrun_now

    def choose(self, k_cap: int) -> int:
        cfg = self.cfg
        hi = min(cfg.k_max, k_cap)
        if self.cycles < cfg.warmup:
            return hi
        lo = min(cfg.k_min, hi)
        tokens, times = self._model()
        times[1:] *= self._overrun()
        self.last_theta = tokens / times
        k = lo + int(np.argmax(self.last_theta[lo:hi + 1]))
        if k > 0:
            self.probe_wait = cfg.probe_interval
        elif self.probed:  # the probe did not bring speculation back: wait twice as long for the next
            self.probe_wait = min(2 * self.probe_wait, PROBE_BACKOFF_MAX * cfg.probe_interval)
        self.probed = k == 0 and hi >= 1 and self.zero_run >= self.probe_wait > 0
        return 1 if self.probed else k

    def observe(self, k: int, accepted: int, verify_ids: np.ndarray | None = None,
                resident_at_start: np.ndarray | None = None, cycle_s: float | None = None) -> None:
        if cycle_s is not None and k >= 1:
            self.overrun.update_one(k - 1, cycle_s / float(self._model()[1][k]))
            self._overrun_now = None
        self.cycles += 1
        self.zero_run = self.zero_run + 1 if k == 0 else 0
        seen = min(accepted + 1, k)  # positions 1..a accepted, a+1 rejected (if drafted), later unseen
        if seen:
            self.accept.observe((np.arange(seen) < accepted).astype(np.float64))
            self._tokens_now = None
        if resident_at_start is not None:
            self.plain.start_from(resident_at_start)
        if verify_ids is not None:
            self.plain.observe(verify_ids[:accepted + 1])
            if resident_at_start is not None:
                self.io.observe(verify_ids, resident_at_start)


def make_governor(cfg: GovernorConfig, perf: PerfModel | None = None, layers: int = 0, experts: int = 0,
                  top_k: int = 0, capacity: list[int] | None = None) -> Governor:
    if cfg.kind == "off":
        return OffGovernor()
    if cfg.kind == "static":
        return StaticGovernor(cfg.k)
    if perf is None:
        raise ValueError("the roofline governor needs a PerfModel")
    return RooflineGovernor(cfg, perf, layers, experts, top_k, capacity or [0])
