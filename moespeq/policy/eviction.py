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
             evict the expert whose next predicted use is farthest, and where the ELB predicts nothing
             fall back to LRU, judged at each expert's next opportunity (below). A prefetch is admitted
             only if its victim's next predicted use is farther than the prefetched expert's, so
             prefetching never pushes out something needed sooner (Belady's rule on the ELB's horizon).
             DESIGN §1.
  belady     the same rule on the true future (an oracle): next use from the whole remaining schedule.

The fallback of lookahead and belady serves one pool shared by all layers, which passes are walked
through in layer order. An expert of a layer the running pass has not reached can next be used in this
step; one of a layer it has passed, in the next step. Plain recency would rank the experts just used by
the layers behind (which cannot be used again before the next step) above the unpredicted experts of the
layers ahead (which can be used now), and plain decayed frequency likewise counts this step's use for one
and not yet for the other: both evict the soonest reusable experts first, so with an empty ELB (k = 0)
the rule did worse than per-layer LRU at the same slots. So every expert is judged at its next
opportunity (step, layer): first its age there in steps since its last use (LRU, evict the oldest), then
its decayed frequency there (`decay` per step; frequent experts of skewed routing stay), then the farther
opportunity goes first. `tie_break="freq-recency"` puts frequency before age.

The history rules (lru, lfu, lfru) admit every prefetch: they have no notion of the future.

Usage:
    rule = make_eviction("lookahead", layers=32, experts=16, elb=elb)
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from moespeq.policy.elb import FAR, ExpertLookaheadBuffer


class EvictionPolicy:
    """Recency and decayed-frequency bookkeeping shared by every rule; subclasses define the order."""

    name = "base"

    def __init__(self, layers: int, experts: int, decay: float = 0.9) -> None:
        n = layers * experts
        self.L, self.E, self.decay = layers, experts, decay
        self.last_use = np.zeros(n, dtype=np.float64)  # access clock of the last use or insertion (_touch)
        self.count = np.zeros(n, dtype=np.float64)  # plain use count (kept by LFU, the one rule that reads it)
        self.freq = np.zeros(n, dtype=np.float64)  # decayed count as of freq_step
        self.freq_step = np.zeros(n, dtype=np.int64)
        self.last_step = np.zeros(n, dtype=np.int64)  # step of the last use (an access, not a prefetch)
        self.step = 0
        self.layer = 0
        self._tie: np.ndarray | None = None  # tie_key over all experts, valid until the stats change
        self._grow_powers(64)

    def _grow_powers(self, n: int) -> None:
        """decay ** s for whole steps s < n, as an array and a list: every path reads the same table
        (NumPy's vector pow and the C library's can differ in the last bit)."""
        self.powers = self.decay ** np.arange(n, dtype=np.float64)
        self._powers_list = self.powers.tolist()

    # ---- told ---------------------------------------------------------------------------------------
    def progress(self, step: int, layer: int) -> None:
        if step != self.step:
            self._new_step(step)
        self.step, self.layer = step, layer

    def _new_step(self, step: int) -> None:
        """Decoding moved to another step (progress is told every layer; this runs once a step)."""
        self._tie = None  # decayed frequencies changed
        if step + 2 > self.powers.size:  # a key looks at most one step ahead
            self._grow_powers(2 * (step + 2))

    def _use(self, flat: np.ndarray | int) -> Any:
        """Count a use of flat (one index or [n]) at this step; returns the new decayed frequencies."""
        if not isinstance(flat, np.ndarray):
            return self._use_one(flat)
        freq = self.freq[flat] * self.powers[self.step - self.freq_step[flat]] + 1.0
        self.freq[flat] = freq
        self.freq_step[flat] = self.step
        self._refresh(flat)
        return freq

    def _use_one(self, f: int) -> float:
        """_use of one expert in the same arithmetic on Python floats: several times faster than on NumPy."""
        freq = self.freq.item(f) * self._powers_list[self.step - self.freq_step.item(f)] + 1.0
        self.freq[f] = freq
        self.freq_step[f] = self.step
        if self._tie is not None:
            self._tie[f] = self._tie_key(f)
        return freq

    def _refresh(self, flat: np.ndarray | int) -> None:
        """Update the cached tie key of these experts only (the others' statistics did not change)."""
        if self._tie is not None:
            self._tie[flat] = self._tie_key(flat)

    def on_access(self, flat: np.ndarray | list[int], clock: int) -> None:
        """A layer used experts flat ([n] array, or a few as a list: one at a time, the same arithmetic)."""
        if clock >= _CLOCK_LIMIT:
            raise RuntimeError("access clock passed 2^27: the eviction tie key would lose recency order")
        if isinstance(flat, list):
            for f in flat:
                self._access_one(f, clock)
            return
        self._touch(flat, clock)
        self.last_step[flat] = self.step
        self._use(flat)

    def _access_one(self, f: int, clock: int) -> None:
        self._touch(f, clock)
        self.last_step[f] = self.step
        self._use(f)

    def _touch(self, flat: np.ndarray | int, clock: int) -> None:
        """Record flat's latest use or insertion by the access clock (the recency lru, lfu and lfru order by)."""
        self.last_use[flat] = clock

    def on_insert(self, flat: int | np.ndarray, clock: int, prefetched: bool = False) -> None:
        """A newly loaded expert counts as just used for recency, so it is not the next victim.

        A prefetched expert also gets one use of frequency credit (the prediction stands for the use it
        expects): otherwise frequency rules evict every prefetch before its use, as it has no count yet.
        A demand load's use was already counted by `on_access`.
        """
        self._touch(flat, clock)
        if prefetched:
            self._use(flat)
        else:
            self._refresh(flat)

    # ---- asked --------------------------------------------------------------------------------------
    def tie_key(self, lo: int, hi: int) -> np.ndarray:
        """LFRU's order: one float key, (decayed frequency, recency) lexicographically (smaller = evict first).

        The frequency is quantized to 1/1024 (closer values count as equal and recency decides); the
        recency clock must stay below 2^27 accesses (about 4 M tokens of a 32-layer model; on_access
        checks). Cached until the statistics change, because a batch of evictions asks many times in between.
        """
        if self._tie is None:
            self._tie = self._tie_key(slice(None))
        return self._tie[lo:hi]

    def _tie_key(self, flat: np.ndarray | int | slice) -> np.ndarray:
        freq_q = np.floor(self.freq[flat] * self.powers[self.step - self.freq_step[flat]] * _FREQ_SCALE)
        return freq_q * _CLOCK_LIMIT + self.last_use[flat]

    def keys(self, lo: int, hi: int) -> list[np.ndarray]:
        """Eviction order over experts lo..hi: lexicographic on these keys, smallest first."""
        raise NotImplementedError

    def order_key(self, lo: int, hi: int) -> np.ndarray | None:
        """[hi - lo] one key over experts lo..hi whose order (smallest first, ties to the lower index) is the
        eviction order of `victims`, or None where the rule needs several keys."""
        keys = self.keys(lo, hi)
        return keys[0] if len(keys) == 1 else None

    def victim(self, candidates: np.ndarray, lo: int) -> int:
        """Flat index of the expert to evict among candidates [hi - lo] bool (at least one True)."""
        keys = self.keys(lo, lo + candidates.size)
        alive = candidates
        for key in keys[:-1]:
            alive = alive & (key == np.where(alive, key, np.inf).min())
        return lo + _masked_argmin(keys[-1], alive)

    def victims(self, candidates: np.ndarray, lo: int, m: int) -> np.ndarray:
        """The first m experts to evict, in order (evicting one does not change the others' keys)."""
        if m == 1:
            return np.array([self.victim(candidates, lo)])
        idx = np.flatnonzero(candidates)
        keys = [k[idx] for k in self.keys(lo, lo + candidates.size)]
        order = np.argsort(keys[0], kind="stable") if len(keys) == 1 else np.lexsort(keys[::-1])
        return lo + idx[order[:m]]

    def admit(self, new: int, victim: int) -> bool:
        return True


_FREQ_SCALE = 1024.0
_CLOCK_LIMIT = float(2**27)
_AGE_LIMIT = float(2**20)
_FREQ_CAP = float(2**24 - 1)
_SCALAR_USES = 4  # _NextUse._use takes up to this many experts one at a time


def _masked_argmin(key: np.ndarray, candidates: np.ndarray) -> int:
    return int(np.where(candidates, key, np.inf).argmin())


def _flat(candidates: np.ndarray, lo: int) -> np.ndarray:
    """Flat indices [n] of the candidates [hi - lo] bool of the pool starting at lo."""
    flat = candidates.nonzero()[0]
    if lo:  # a per-layer pool (the global pool starts at 0)
        flat += lo
    return flat


class LRU(EvictionPolicy):
    name = "lru"

    def keys(self, lo: int, hi: int) -> list[np.ndarray]:
        return [self.last_use[lo:hi]]


class LFU(EvictionPolicy):
    name = "lfu"

    def _use(self, flat: np.ndarray | int) -> Any:
        self.count[flat] += 1
        return super()._use(flat)

    def keys(self, lo: int, hi: int) -> list[np.ndarray]:
        return [self.count[lo:hi] * _CLOCK_LIMIT + self.last_use[lo:hi]]


class LFRU(EvictionPolicy):
    name = "lfru"

    def keys(self, lo: int, hi: int) -> list[np.ndarray]:
        return [self.tie_key(lo, hi)]


class _NextUse(EvictionPolicy):
    """Farthest next use first, then the fallback order; prefetches admitted only over farther victims.

    The fallback order is kept as one packed float per expert (`_current_fallback`), updated where it
    changes instead of recomputed per decision: rebuilt when the step changes, a layer's slice switched
    to its next-step keys when the pass reaches it, an expert's keys recomputed when it is used.
    `keys` and `at_next_opportunity` state the order plainly (the reference the tests compare against).
    """

    def __init__(self, layers: int, experts: int, decay: float = 0.9, tie_break: str = "recency-freq") -> None:
        super().__init__(layers, experts, decay)
        if layers >= 256:
            raise ValueError(f"{layers} layers: the lookahead/belady eviction key packs 2 L below 512")
        self.recency_first = tie_break == "recency-freq"
        n = layers * experts
        self.layer_of = np.repeat(np.arange(layers), experts)  # [L*E]
        # [L*E] each, the pack's `farther` term (511 - distance, less the layer shift) of an expert whose next
        # opportunity is in this step (index False) or the next (True): constants, so a rebuild does not redo them;
        # floats, as _pack would convert them (exactly: small integers)
        self._farther = (511.0 - self.layer_of, 511.0 - self.layer_of - layers)
        self._decay1_scaled = float(self.powers[1]) * _FREQ_SCALE  # exact: the scale is a power of two
        self._fb = np.zeros(n)  # [L*E] the packed fallback key at (_fb_step, _fb_layer), less the layer shift
        self._fb_passed = np.zeros(n)  # [L*E] the same as if every layer were passed (next opportunity: step + 1)
        self._fb_step, self._fb_layer = -1, -1

    def _new_step(self, step: int) -> None:
        if step >= _AGE_LIMIT:
            raise RuntimeError("step passed 2^20: the eviction fallback key would lose age order")
        super()._new_step(step)

    def _touch(self, flat: np.ndarray | int, clock: int) -> None:
        """Nothing to record: these rules judge age in steps (last_step), never by the access clock."""

    def next_use(self) -> np.ndarray:
        """[L*E] distance (any monotone unit) to each expert's next use; FAR-or-more when unknown."""
        raise NotImplementedError

    # ---- the order, plainly -------------------------------------------------------------------------
    def keys(self, lo: int, hi: int) -> list[np.ndarray]:
        """The order as separate keys (the reference; victim and victims use the packed fallback key)."""
        age, freq, distance = self.at_next_opportunity(np.arange(lo, hi))
        first, second = (-age, freq) if self.recency_first else (freq, -age)
        return [-self.next_use()[lo:hi].astype(np.float64), first, second, -distance]

    def at_next_opportunity(self, flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Experts flat [n] judged at their next opportunity of use (module docstring): each [n] float,
        age in steps since the last use, decayed frequency (quantized as tie_key's), layers from now."""
        layer = self.layer_of[flat]
        passed = layer <= self.layer  # used again in the next step at the earliest
        opportunity = self.step + passed  # [n] step
        age = opportunity - self.last_step[flat]
        freq = self.freq[flat] * self.powers[opportunity - self.freq_step[flat]]
        distance = layer - self.layer + passed * self.L
        return age, np.floor(freq * _FREQ_SCALE), distance.astype(np.float64)

    # ---- the order, packed and kept current -----------------------------------------------------------
    def _pack(self, age: Any, freq: Any, farther: Any) -> Any:
        """keys()[1:] as one exact float (integers below 2^53), smaller first: age < 2^20 steps (progress
        checks), quantized frequency capped below 2^24 (larger ones tie), farther = 511 - distance >= 0."""
        # every term is an integer below 2^53, so any grouping gives the same float: the age and layer terms
        # are grouped to be added once where they are scalars and freq is an array
        if self.recency_first:
            return freq * 2.0**9 + (farther - age * 2.0**33)
        return freq * 2.0**29 + (farther - age * 2.0**9 + (_AGE_LIMIT - 1.0) * 2.0**9)

    def _packed(self, flat: np.ndarray | slice, passed: bool) -> np.ndarray:
        """[n] packed keys of experts flat [n], or of a run of them as a slice (views, not gathers), whose layer
        the pass has passed or not, less the current layer's shift (a constant within a decision):
        at_next_opportunity's arithmetic."""
        opportunity = self.step + passed
        freq = self.freq[flat] * self.powers[opportunity - self.freq_step[flat]]
        freq = np.minimum(np.floor(freq * _FREQ_SCALE), _FREQ_CAP)
        return self._pack(opportunity - self.last_step[flat], freq, self._farther[passed][flat])

    def _current_fallback(self) -> np.ndarray:
        """[L*E] the packed fallback keys at (step, layer)."""
        if self._fb_step != self.step or self.layer < self._fb_layer:
            self._fb_passed = self._packed(slice(None), True)
            ahead = (self.layer + 1) * self.E  # the first expert of the layers the pass has not reached
            self._fb[:ahead] = self._fb_passed[:ahead]
            self._fb[ahead:] = self._packed(slice(ahead, None), False)
            self._fb_step, self._fb_layer = self.step, self.layer
        elif self.layer > self._fb_layer:  # the pass reached more layers: their experts' next chance is the next step
            lo, hi = (self._fb_layer + 1) * self.E, (self.layer + 1) * self.E
            self._fb[lo:hi] = self._fb_passed[lo:hi]
            self._fb_layer = self.layer
        return self._fb

    def _use(self, flat: np.ndarray | int) -> Any:
        """Also repack the used experts' fallback keys. An array comes from ExpertCache.access: experts of
        one layer; a single expert, from a prefetch landing. A few experts go one by one: scalar arithmetic
        beats NumPy's per-call cost on tiny arrays."""
        if not isinstance(flat, np.ndarray):
            return self._use_one(flat)
        if flat.size <= _SCALAR_USES:
            for f in flat.tolist():
                self._use_one(f)
            return None
        freq = super()._use(flat)
        if self._fb_step != self.step:
            return freq  # the keys are rebuilt at the next decision
        layer = int(self.layer_of[flat[0]])
        if layer <= self.layer and self.last_step[flat[0]] == self.step:
            # accessed by the layer the pass is at: one step old at the next step's opportunity
            # (last_step = freq_step = step), frequency times decay^1 (numpy's power)
            quantized = np.minimum(np.floor(freq * self._decay1_scaled), _FREQ_CAP)
            self._fb[flat] = self._fb_passed[flat] = self._pack(1.0, quantized, 511.0 - layer - self.L)
        else:
            self._fb_passed[flat] = self._packed(flat, True)
            self._fb[flat] = np.where(self.layer_of[flat] <= self._fb_layer, self._fb_passed[flat],
                                      self._packed(flat, False))
        return freq

    def _access_one(self, f: int, clock: int) -> None:
        # _use_one of an expert used now (age 0) with fewer calls, on plain decoding's hot path (_touch
        # records nothing for these rules)
        self.last_step[f] = self.step
        freq = EvictionPolicy._use_one(self, f)
        if self._fb_step == self.step:  # else the keys are rebuilt at the next decision
            self._repack_one(f, freq, 0)

    def _use_one(self, f: int) -> float:
        freq = super()._use_one(f)
        if self._fb_step == self.step:
            self._repack_one(f, freq, self.step - self.last_step.item(f))
        return freq

    def _repack_one(self, f: int, freq: float, age: int) -> None:
        """_packed for one expert just used (freq_step = step, decayed frequency freq, `age` steps since its
        last access), in scalar arithmetic: its key at the next step always, and at this step only while the
        pass has not reached its layer (where the packed keys lag behind the pass, `_current_fallback` copies
        the next step's key too)."""
        layer = f // self.E
        passed = self._pack(age + 1, min(math.floor(freq * self._decay1_scaled), _FREQ_CAP), 511 - layer - self.L)
        self._fb_passed[f] = passed
        if layer <= self.layer:
            self._fb[f] = passed
        else:
            self._fb[f] = self._pack(age, min(math.floor(freq * _FREQ_SCALE), _FREQ_CAP), 511 - layer)

    def fallback_key(self, flat: np.ndarray) -> np.ndarray:
        """[n] the packed fallback keys of experts flat [n] (smaller = evict first), up to a constant."""
        return self._current_fallback()[flat]

    # ---- asked --------------------------------------------------------------------------------------
    def predicts_nothing(self) -> bool:
        """No expert has a known next use (all FAR): the fallback order alone decides."""
        return False

    def order_key(self, lo: int, hi: int) -> np.ndarray | None:
        return self._current_fallback()[lo:hi] if self.predicts_nothing() else None

    def victim(self, candidates: np.ndarray, lo: int) -> int:
        if self.predicts_nothing():
            return lo + _masked_argmin(self._current_fallback()[lo:lo + candidates.size], candidates)
        flat = _flat(candidates, lo)
        nxt = self.next_use()[flat]
        farthest = flat[nxt == nxt[nxt.argmax()]]  # argmax: cheaper than the max reduction on tens of experts
        return int(farthest[self.fallback_key(farthest).argmin()])

    def victims(self, candidates: np.ndarray, lo: int, m: int) -> np.ndarray:
        if m == 1:  # the common single miss: no sort
            return np.array([self.victim(candidates, lo)])
        flat = _flat(candidates, lo)
        if self.predicts_nothing():
            return flat[np.argsort(self.fallback_key(flat), kind="stable")[:m]]
        order = np.lexsort((self.fallback_key(flat), -self.next_use()[flat]))
        return flat[order[:m]]

    def admit(self, new: int, victim: int) -> bool:
        nxt = self.next_use()
        return bool(nxt[victim] > nxt[new])


class Lookahead(_NextUse):
    name = "lookahead"

    def __init__(self, layers: int, experts: int, elb: ExpertLookaheadBuffer, decay: float = 0.9,
                 tie_break: str = "recency-freq") -> None:
        super().__init__(layers, experts, decay, tie_break)
        self.elb = elb

    def next_use(self) -> np.ndarray:
        return self.elb.next_use()  # the layer of the next predicted use: a distance up to a constant

    def predicts_nothing(self) -> bool:
        return self.elb.rows == 0


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
                 tie_break: str = "recency-freq") -> None:
        super().__init__(layers, experts, decay, tie_break)
        self.future = future
        self._key = (-1, -1)
        self._next = future.positions(0, 0)

    def next_use(self) -> np.ndarray:
        if self._key != (self.step, self.layer):
            self._next = self.future.positions(self.step, self.layer)
            self._key = (self.step, self.layer)
        return self._next


def make_eviction(name: str, layers: int, experts: int, decay: float = 0.9, tie_break: str = "recency-freq",
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
