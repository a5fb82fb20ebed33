"""Eviction rules: which cached expert to give up when a slot is needed, and whether a prefetch may take one.

Each rule keeps per-expert statistics over flat indices f = layer * E + expert and answers two questions:
`victim(candidates)` (the evictable expert to drop) and `admit(new, victim)` (may a *prefetch* of `new`
evict `victim`; demand loads are always admitted). Two clocks drive them, both told by the cache:
`clock` counts accesses (recency), `step` counts decoding steps (frequency decay).

  lru        evict the least recently used. Mixtral-Offloading's per-layer cache.
  lfu        evict the least frequently used, ties by recency. Favors hot experts of skewed routing.
  lfru       decayed frequency f <- f * decay^(steps since last use) + 1; evict the smallest, ties by
             recency. Frequency that forgets, for routing that drifts (MoE-Infinity's cache is of this kind).
  lookahead  never evict what the ELB says verification needs when anything else can go; among the rest
             evict the expert whose next predicted use is farthest, ties by decayed frequency, then
             recency (or recency first: `tie_break`). A prefetch is admitted only if its victim's next
             predicted use is farther than the prefetched expert's, so prefetching never pushes out
             something needed sooner (Belady's rule on the ELB's horizon). DESIGN §1.
  belady     the same rule on the true future (an oracle): next use from the whole remaining schedule.

The history rules (lru, lfu, lfru) admit every prefetch: they have no notion of the future.

Usage:
    rule = make_eviction("lookahead", layers=32, experts=16, elb=elb)
"""

from __future__ import annotations

import numpy as np

from moespeq.policy.elb import FAR, ExpertLookaheadBuffer


class EvictionPolicy:
    """Recency and decayed-frequency bookkeeping shared by every rule; subclasses define the order."""

    name = "base"

    def __init__(self, layers: int, experts: int, decay: float = 0.9) -> None:
        n = layers * experts
        self.L, self.E, self.decay = layers, experts, decay
        self.last_use = np.zeros(n, dtype=np.float64)  # access clock of the last use (or insertion)
        self.count = np.zeros(n, dtype=np.float64)  # plain use count
        self.freq = np.zeros(n, dtype=np.float64)  # decayed count as of freq_step
        self.freq_step = np.zeros(n, dtype=np.float64)
        self.step = 0
        self.layer = 0

    # ---- told ---------------------------------------------------------------------------------------
    def progress(self, step: int, layer: int) -> None:
        self.step, self.layer = step, layer

    def on_access(self, flat: np.ndarray, clock: int) -> None:
        self.last_use[flat] = clock
        self.count[flat] += 1
        self.freq[flat] = self.freq[flat] * self.decay ** (self.step - self.freq_step[flat]) + 1.0
        self.freq_step[flat] = self.step

    def on_insert(self, flat: int, clock: int) -> None:
        """A newly loaded expert counts as just used for recency, so it is not the next victim."""
        self.last_use[flat] = clock

    # ---- asked --------------------------------------------------------------------------------------
    def decayed(self, lo: int, hi: int) -> np.ndarray:
        return self.freq[lo:hi] * self.decay ** (self.step - self.freq_step[lo:hi])

    def victim(self, candidates: np.ndarray, lo: int) -> int:
        """Flat index of the expert to evict among candidates [hi - lo] bool (at least one True)."""
        raise NotImplementedError

    def admit(self, new: int, victim: int) -> bool:
        return True


def _argmin_ties(keys: list[np.ndarray], candidates: np.ndarray) -> int:
    """Index of the lexicographically smallest key tuple among candidates (first index on full ties)."""
    alive = candidates.copy()
    for key in keys:
        best = key[alive].min()
        alive &= key <= best
        if np.count_nonzero(alive) == 1:
            break
    return int(np.flatnonzero(alive)[0])


class LRU(EvictionPolicy):
    name = "lru"

    def victim(self, candidates: np.ndarray, lo: int) -> int:
        keys = self.last_use[lo:lo + candidates.size]
        return lo + int(np.where(candidates, keys, np.inf).argmin())


class LFU(EvictionPolicy):
    name = "lfu"

    def victim(self, candidates: np.ndarray, lo: int) -> int:
        hi = lo + candidates.size
        return lo + _argmin_ties([self.count[lo:hi], self.last_use[lo:hi]], candidates)


class LFRU(EvictionPolicy):
    name = "lfru"

    def victim(self, candidates: np.ndarray, lo: int) -> int:
        hi = lo + candidates.size
        return lo + _argmin_ties([self.decayed(lo, hi), self.last_use[lo:hi]], candidates)


class _NextUse(EvictionPolicy):
    """Farthest next use first, then the tie-break; prefetches admitted only over farther victims."""

    def __init__(self, layers: int, experts: int, decay: float = 0.9, tie_break: str = "freq-recency") -> None:
        super().__init__(layers, experts, decay)
        self.tie_break = tie_break

    def next_use(self) -> np.ndarray:
        """[L*E] distance (any monotone unit) to each expert's next use; FAR-or-more when unknown."""
        raise NotImplementedError

    def victim(self, candidates: np.ndarray, lo: int) -> int:
        hi = lo + candidates.size
        ties = [self.decayed(lo, hi), self.last_use[lo:hi]]
        if self.tie_break == "recency-freq":
            ties.reverse()
        return lo + _argmin_ties([-self.next_use()[lo:hi].astype(np.float64), *ties], candidates)

    def admit(self, new: int, victim: int) -> bool:
        nxt = self.next_use()
        return bool(nxt[victim] > nxt[new])


class Lookahead(_NextUse):
    name = "lookahead"

    def __init__(self, layers: int, experts: int, elb: ExpertLookaheadBuffer, decay: float = 0.9,
                 tie_break: str = "freq-recency") -> None:
        super().__init__(layers, experts, decay, tie_break)
        self.elb = elb
        self._cached_version = -1
        self._next = np.full(layers * experts, FAR, dtype=np.int64)

    def next_use(self) -> np.ndarray:
        if self._cached_version != self.elb.version:
            self._next = self.elb.next_use()
            self._cached_version = self.elb.version
        return self._next


class FutureUses:
    """The true schedule of needs, for oracles: need [S, L, E] bool over the S steps of a whole run."""

    def __init__(self, need: np.ndarray) -> None:
        S, L, E = need.shape  # noqa: N806
        self.need = need
        self.S, self.L, self.E = S, L, E
        nxt = np.full((S + 1, L, E), S, dtype=np.int32)  # nxt[s] = first step >= s that needs it (S: never)
        for s in range(S - 1, -1, -1):
            nxt[s] = np.where(need[s], s, nxt[s + 1])
        self._next_step = nxt
        self._layer = np.arange(L)[:, None]

    def positions(self, step: int, layer: int) -> np.ndarray:
        """[L*E] position (step * L + layer) of each expert's next use at or after (step, layer); huge if never."""
        if step >= self.S:
            return np.full(self.L * self.E, FAR * self.S + FAR, dtype=np.int64)
        now = self.need[step] & (self._layer >= layer)
        later = self._next_step[step + 1].astype(np.int64)
        pos = np.where(now, step, later) * self.L + self._layer
        return np.where(pos >= self.S * self.L, FAR * self.S + FAR, pos).ravel()


class Belady(_NextUse):
    name = "belady"

    def __init__(self, layers: int, experts: int, future: FutureUses, decay: float = 0.9,
                 tie_break: str = "freq-recency") -> None:
        super().__init__(layers, experts, decay, tie_break)
        self.future = future
        self._key = (-1, -1)
        self._next = future.positions(0, 0)

    def next_use(self) -> np.ndarray:
        if self._key != (self.step, self.layer):
            self._next = self.future.positions(self.step, self.layer)
            self._key = (self.step, self.layer)
        return self._next


def make_eviction(name: str, layers: int, experts: int, decay: float = 0.9, tie_break: str = "freq-recency",
                  elb: ExpertLookaheadBuffer | None = None, future: FutureUses | None = None) -> EvictionPolicy:
    """The rule named `name` (see the module docstring); lookahead needs the ELB, belady the future."""
    if name == "lru":
        return LRU(layers, experts, decay)
    if name == "lfu":
        return LFU(layers, experts, decay)
    if name == "lfru":
        return LFRU(layers, experts, decay)
    if name == "lookahead":
        if elb is None:
            raise ValueError("lookahead eviction needs the ELB: pass elb=")
        return Lookahead(layers, experts, elb, decay, tie_break)
    if name == "belady":
        if future is None:
            raise ValueError("belady eviction needs the future schedule: pass future=")
        return Belady(layers, experts, future, decay, tie_break)
    raise ValueError(f"unknown eviction {name!r}: use lru, lfu, lfru, lookahead or belady")
