"""MoE-SpeQ's expert scheduler: three phases of prefetching driven by the Expert Lookahead Buffer.

The paper (§3.3) names the phases but not their boundaries or selection rule; these are ours (DESIGN §1):

  Phase I, priming (draft row 0, which routes the first verified token x_0): fetch every expert of that
      row the cache lacks, at once. Verification's first token needs exactly these, and nothing else is
      known yet; cached experts are served without a copy (temporal locality).
  Phase II, bandwidth-guided (rows 1..k-2, as they arrive): among predicted experts not yet fetched,
      ordered by (verify layer, confidence x reuse count), fetch only those the link can deliver before
      verification reaches their layer:  backlog + i * t_copy <= a * (t_until_verify + layer * t_layer),
      where t_until_verify = (k - 1 - j) * T_d,token, t_layer is one verify layer of k + 1 tokens, and
      a is `phase2_aggressiveness`. Distant draft tokens are less certain; fetching only what can land in
      time keeps wrong guesses from taking slots and link time from sure ones.
  Phase III, saturation (after the last row, k - 1): fetch every remaining predicted expert, layer 0 first.

Misses left at verification are fetched on demand by the driver (the critical path, counted as stalls).
The ELB itself is filled by the driver, which also feeds the lookahead eviction rule from it.

Usage:
    sched = ElbScheduler(cache, elb, perf, aggressiveness=1.0)
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from moespeq.policy.cache import ABSENT, ExpertCache
from moespeq.policy.elb import ExpertLookaheadBuffer
from moespeq.policy.prefetch import Prefetcher, Request
from moespeq.policy.roofline import PerfModel


class ElbScheduler(Prefetcher):
    name = "elb"

    def __init__(self, cache: ExpertCache, elb: ExpertLookaheadBuffer, perf: PerfModel,
                 aggressiveness: float = 1.0) -> None:
        super().__init__(cache)
        self.elb, self.perf, self.aggressiveness = elb, perf, aggressiveness
        self.requested = np.zeros(cache.L * cache.E, dtype=bool)
        self.k = 0
        self.phase_counts = [0, 0, 0]  # requests issued by phases I, II, III

    def begin_step(self, step: int, tokens: int, k: int) -> list[Request]:
        self.requested[:] = False
        self.k = k
        return super().begin_step(step, tokens, k)

    def _candidates(self, mask: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Flat indices in (layer, -score) order among mask [L*E] that are absent and not yet requested."""
        flat = (mask & ~self.requested & (self.cache.state == ABSENT)).nonzero()[0]
        order = np.lexsort((-score[flat], flat // self.cache.E))
        return flat[order], score[flat[order]]

    def _issue(self, flat: np.ndarray, score: np.ndarray, phase: int) -> list[Request]:
        self.requested[flat] = True
        self.phase_counts[phase] += flat.size
        layers, experts = np.divmod(flat, self.cache.E)
        return list(zip(repeat(self.step, flat.size), layers.tolist(), experts.tolist(), score.tolist(), strict=True))

    def on_draft_row(self, j: int, ids: np.ndarray, weights: np.ndarray, backlog_s: float) -> list[Request]:
        E = self.cache.E  # noqa: N806
        elb_score = (self.elb.confidence * self.elb.reuse).ravel()  # [L*E]
        requests: list[Request] = []
        if j == 0:  # Phase I
            row = np.zeros(self.cache.L * E, dtype=bool)
            row[(np.arange(self.cache.L)[:, None] * E + ids).ravel()] = True
            requests += self._issue(*self._candidates(row, elb_score), phase=0)
        if j == self.k - 1:  # Phase III
            requests += self._issue(*self._candidates(self.elb.mask.ravel(), elb_score), phase=2)
        elif j >= 1:  # Phase II
            flat, score = self._candidates(self.elb.mask.ravel(), elb_score)
            t_layer = self.perf.t_verify_layer(self.k + 1)
            until = (self.k - 1 - j) * self.perf.draft_token_s + (flat // E) * t_layer  # [n]
            ready = backlog_s + np.arange(1, flat.size + 1) * self.perf.copy_s  # [n]
            keep = ready <= self.aggressiveness * until
            requests += self._issue(flat[keep], score[keep], phase=1)
        return requests
