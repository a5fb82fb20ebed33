"""The GPU expert cache as pure bookkeeping: which expert sits in which slot, and what may be evicted.

Slots hold bf16 routed experts. They form one pool shared by all layers, or one pool per layer (as in
Mixtral-Offloading). Each expert (flat index f = layer * E + expert) is ABSENT, LOADING (a copy into its
slot is in flight) or RESIDENT. The driver (simulator or runtime) tells the cache what happens:

  access(layer, experts)   a verify/decode layer routed to these experts (counts coverage, feeds the rule)
  hold / release           experts the running layer still needs: never evicted while held
  reserve(f, demand)       a copy of f is about to start: returns OK with the evicted victim (or -1 for a
                           free slot), NO_ROOM (every slot is loading or held; a demand copy waits for a
                           release), or REFUSED (the rule will not let a prefetch evict any candidate)
  landed(f)                the copy finished

and asks nothing about time. Counters are in `counters` (tests and metrics read them, not private fields).
A layer of a few experts (plain decoding: top-K of one token) can go through `serve` (access + hold + which
are absent), `reserve_few`, and landed / release of lists instead: the same bookkeeping in scalar
arithmetic, because on a handful of elements NumPy's per-call cost is most of the work (a test compares
the two forms).

Usage:
    cache = ExpertCache(layers=32, experts=16, capacity=[113], eviction=make_eviction("lru", 32, 16))
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np

from moespeq.policy.eviction import EvictionPolicy

ABSENT, LOADING, RESIDENT = 0, 1, 2
OK, NO_ROOM, REFUSED = 0, 1, 2
# the same codes as 0-d arrays of the state array's dtype: NumPy compares an array with these several times
# faster than with a Python int (no promotion of a Python scalar), which counts on the simulator's hot path
_ABSENT, _RESIDENT = np.array(ABSENT, dtype=np.int8), np.array(RESIDENT, dtype=np.int8)


@dataclass
class CacheCounters:
    needed: int = 0  # (layer, expert) pairs a step required, each counted once per step and layer
    hits: int = 0  # of those, resident when the layer asked (the paper's per-step coverage numerator)
    loads_demand: int = 0  # copies started because a layer needed a missing expert
    loads_prefetch: int = 0  # copies started by a prefetcher
    evictions: int = 0
    prefetch_useful: int = 0  # prefetched experts that a layer used before they were evicted
    prefetch_timely: int = 0  # ... and that had landed by then
    prefetch_wasted: int = 0  # prefetched experts evicted without a use

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def split_slots(total: int, layers: int, experts: int, tilt: float = 0.0) -> list[int]:
    """Slots per layer for a per-layer pool: weight 1 + tilt * (1 - 2 l / (L - 1)), largest remainders.

    tilt 0 is the even split (the remainder goes to the earliest layers); tilt > 0 favors early layers,
    whose experts verification needs first. Every layer gets at least one slot and at most E.
    """
    if total < layers:
        raise ValueError(f"{total} cache slots cannot give each of {layers} layers a slot")
    pos = np.arange(layers) / max(layers - 1, 1)
    weight = 1.0 + tilt * (1.0 - 2.0 * pos) + 1e-9 * (layers - np.arange(layers))  # [L]; ties to early layers
    share = weight / weight.sum() * total
    slots = np.maximum(np.floor(share).astype(np.int64), 1)
    while slots.sum() > total:
        slots[np.argmax(slots)] -= 1
    order = np.argsort(-(share - np.floor(share)), kind="stable")
    i = 0
    while slots.sum() < total and i < 4 * layers:
        layer = order[i % layers]
        if slots[layer] < experts:
            slots[layer] += 1
        i += 1
    return [int(min(s, experts)) for s in slots]


class ExpertCache:
    """Residency of L x E experts in pools of slots, with an eviction rule (moespeq.policy.eviction)."""

    def __init__(self, layers: int, experts: int, capacity: Sequence[int], eviction: EvictionPolicy) -> None:
        if len(capacity) not in (1, layers) or min(capacity) < 1:
            raise ValueError(f"capacity {list(capacity)}: one global size or one size per layer, each >= 1")
        self.L, self.E, self.eviction = layers, experts, eviction
        n = layers * experts
        # The per-expert flags are bytearrays with NumPy views of the same memory: the views for whole-pool and
        # whole-layer work, the bytearrays (*_items) for one expert at a time, which Python indexes several times
        # faster than NumPy (the scalar forms below touch them a few times per expert; state_items is public for
        # the simulator's fold, which reads it per expert too)
        self.state_items = bytearray(n)
        self.state = np.frombuffer(self.state_items, dtype=np.int8)  # ABSENT, LOADING or RESIDENT
        # an expert is evictable when its state exceeds this bar: RESIDENT (2) > 1, unless held (bar 2); one
        # comparison finds a pool's evictable experts
        self._bar_items = bytearray(b"\x01" * n)
        self._bar = np.frombuffer(self._bar_items, dtype=np.int8)
        self._prefetched_items = bytearray(n)
        self.prefetched = np.frombuffer(self._prefetched_items, dtype=bool)  # loaded by a prefetcher, not used yet
        # The same as 0.0 where evictable, else inf: added to an eviction key it masks out the rest in one operation
        # (the scalar forms' victim search, at almost every miss). The scalar forms keep it current expert by
        # expert; the array forms only mark it stale (a whole-array update would cost them more than they do), and
        # the next search rebuilds it.
        self._unevictable = np.full(n, np.inf)
        self._unevictable_stale = False
        self.slot_of = np.full(n, -1, dtype=np.int32)
        self.per_layer = len(capacity) == layers and layers > 1
        caps = [min(c, experts if self.per_layer else n) for c in capacity]
        self.capacity = caps
        self._range = [(p * experts, (p + 1) * experts) for p in range(layers)] if self.per_layer else [(0, n)]
        starts = np.concatenate([[0], np.cumsum(caps)[:-1]])
        self._free = [list(range(s + c - 1, s - 1, -1)) for s, c in zip(starts.tolist(), caps, strict=True)]
        self._used = [0] * len(caps)
        self.clock = 0
        self.step = 0
        self.counters = CacheCounters()

    @property
    def slots(self) -> int:
        return int(sum(self.capacity))

    def _pool(self, flat: int) -> int:
        return flat // self.E if self.per_layer else 0

    # ---- told by the driver -------------------------------------------------------------------------
    def progress(self, step: int, layer: int) -> None:
        """Decoding is at `step`, computing `layer` (-1 before the first layer)."""
        self.step = step
        self.eviction.progress(step, max(layer, 0))

    def access(self, layer: int, experts: np.ndarray) -> np.ndarray:
        """A layer needs these distinct experts [n]; returns which were resident [n] bool."""
        flat = layer * self.E + experts
        hit = self.state[flat] == _RESIDENT
        c = self.counters
        c.needed += flat.size
        c.hits += int(np.count_nonzero(hit))
        was_prefetched = self.prefetched[flat]
        useful = int(np.count_nonzero(was_prefetched))
        if useful:
            c.prefetch_useful += useful
            c.prefetch_timely += int(np.count_nonzero(was_prefetched & hit))
            self.prefetched[flat] = False
        self.eviction.on_access(flat, self.clock)
        self.clock += 1
        return hit

    def absent(self, flat: np.ndarray) -> np.ndarray:
        """[n] bool: which experts of flat [n] are absent (neither loading nor resident)."""
        return self.state[flat] == _ABSENT

    def layers_fit(self, sizes: list[int]) -> bool:
        """Do sizes[l] experts of each layer l fit its pool at once (so that holding them leaves room for their
        copies)?"""
        if self.per_layer:
            return all(n <= c for n, c in zip(sizes, self.capacity, strict=True))
        return max(sizes) <= self.capacity[0]

    def _evictable(self, lo: int, hi: int) -> np.ndarray:
        """[hi - lo] bool: resident and not held, of experts lo..hi (one pool)."""
        return self.state[lo:hi] > self._bar[lo:hi]

    def _current_unevictable(self) -> np.ndarray:
        """[L*E] _unevictable, rebuilt if an array form changed state or holds since it was last current."""
        if self._unevictable_stale:
            self._unevictable = np.where(self.state > self._bar, 0.0, np.inf)
            self._unevictable_stale = False
        return self._unevictable

    @property
    def held(self) -> np.ndarray:
        """[L*E] bool: held by the running layer."""
        return self._bar == 2

    def hold(self, flat: np.ndarray) -> None:
        self._bar[flat] = 2
        self._unevictable_stale = True

    def release(self, flat: np.ndarray | list[int]) -> None:
        if isinstance(flat, list):  # a few experts (`serve`): no array to build
            state, bar, unevictable = self.state_items, self._bar_items, self._unevictable
            for f in flat:
                bar[f] = 1
                if state[f] == RESIDENT:
                    unevictable[f] = 0.0
        else:
            self._bar[flat] = 1
            self._unevictable_stale = True

    def serve(self, flat: list[int]) -> list[int]:
        """access, then hold, of one layer's few distinct experts flat [n] (in any order), one at a time;
        returns the absent ones in the order given."""
        state, prefetched, bar = self.state_items, self._prefetched_items, self._bar_items
        unevictable, c = self._unevictable, self.counters
        absent, hits = [], 0
        for f in flat:
            s = state[f]
            if s == RESIDENT:
                hits += 1
            elif s == ABSENT:
                absent.append(f)
            if prefetched[f]:
                c.prefetch_useful += 1
                if s == RESIDENT:
                    c.prefetch_timely += 1
                prefetched[f] = False
            bar[f] = 2
            unevictable[f] = np.inf
        c.needed += len(flat)
        c.hits += hits
        self.eviction.on_access(flat, self.clock)
        self.clock += 1
        return absent

    # ---- asked by the copy engine ---------------------------------------------------------------------
    def reserve(self, flat: int, demand: bool) -> tuple[int, int]:
        """Claim a slot for a copy of `flat`: (OK, victim or -1), (NO_ROOM, -1) or (REFUSED, victim)."""
        if self.state[flat] != ABSENT:
            raise RuntimeError(f"expert {divmod(flat, self.E)} is already loading or resident")
        pool = self._pool(flat)
        victim = -1
        if self._used[pool] >= self.capacity[pool]:
            lo, hi = self._range[pool]
            candidates = self._evictable(lo, hi)
            if not np.count_nonzero(candidates):
                return NO_ROOM, -1
            victim = self.eviction.victim(candidates, lo)
            if not demand and not self.eviction.admit(flat, victim):
                return REFUSED, victim
            self._evict(victim, pool)
        self._used[pool] += 1
        self.state[flat] = LOADING
        self.slot_of[flat] = self._free[pool].pop()
        self.prefetched[flat] = not demand
        if demand:
            self.counters.loads_demand += 1
        else:
            self.counters.loads_prefetch += 1
        return OK, victim

    def reserve_many(self, flat: np.ndarray) -> tuple[int, list[int]]:
        """Claim slots for demand copies of absent experts flat [m] (one pool), evicting in one decision.

        Returns how many (a prefix of flat) got a slot, and the victims. Same result as m calls of
        reserve(f, demand=True): a claimed slot is LOADING, so it is never another claim's victim, and
        an eviction changes no other expert's rank. (A single miss, the common case, goes through
        reserve: scalar work, no arrays.)"""
        if flat.size == 1:
            status, victim = self.reserve(int(flat[0]), demand=True)
            return (0, []) if status != OK else (1, [victim] if victim >= 0 else [])
        pool = self._pool(int(flat[0]))
        if self.per_layer and np.count_nonzero(flat // self.E != pool):
            raise ValueError("reserve_many takes experts of one pool")
        free = self.capacity[pool] - self._used[pool]
        need = flat.size - max(free, 0)
        victims: list[int] = []
        if need > 0:
            lo, hi = self._range[pool]
            candidates = self._evictable(lo, hi)
            chosen = self.eviction.victims(candidates, lo, min(need, int(np.count_nonzero(candidates))))  # [v]
            self._evict_many(chosen, pool)
            victims = chosen.tolist()
        granted = min(flat.size, self.capacity[pool] - self._used[pool])
        claimed, free_list = flat[:granted], self._free[pool]
        self._used[pool] += granted
        self.state[claimed] = LOADING
        self.slot_of[claimed] = free_list[len(free_list) - granted:][::-1]
        del free_list[len(free_list) - granted:]
        self.prefetched[claimed] = False
        self.counters.loads_demand += granted
        return granted, victims

    def reserve_few(self, flat: list[int]) -> tuple[int, list[int]]:
        """reserve_many for a few absent experts flat [m] (one pool), one at a time."""
        pool = self._pool(flat[0])
        if self.per_layer and any(f // self.E != pool for f in flat):
            raise ValueError("reserve_few takes experts of one pool")
        need = len(flat) - max(self.capacity[pool] - self._used[pool], 0)
        victims = self._victims(pool, need) if need > 0 else []
        for victim in victims:
            self._evict(victim, pool)
        granted = min(len(flat), self.capacity[pool] - self._used[pool])
        free_list = self._free[pool]
        state, prefetched, slot_of = self.state_items, self._prefetched_items, self.slot_of
        for f in flat[:granted]:
            state[f] = LOADING
            slot_of[f] = free_list.pop()
            prefetched[f] = False
        self._used[pool] += granted
        self.counters.loads_demand += granted
        return granted, victims

    def _victims(self, pool: int, m: int) -> list[int]:
        """The first m experts of a pool to evict (fewer if fewer are evictable), in one decision. Where the
        rule orders by one key, by repeated masked argmins (the first minimum, like a stable sort)."""
        lo, hi = self._range[pool]
        key = self.eviction.order_key(lo, hi)  # [hi - lo] or None
        if key is None:
            candidates = self._evictable(lo, hi)
            return self.eviction.victims(candidates, lo, min(m, int(np.count_nonzero(candidates)))).tolist()
        masked = key + self._current_unevictable()[lo:hi]  # [hi - lo] inf where not _evictable (keys are finite)
        chosen: list[int] = []
        while True:
            i = int(masked.argmin())
            if masked.item(i) == np.inf:  # nothing evictable left
                return chosen
            chosen.append(lo + i)
            if len(chosen) == m:
                return chosen
            masked[i] = np.inf

    def _evict_many(self, victims: np.ndarray, pool: int) -> None:
        """_evict for several victims of one pool at once."""
        wasted = self.prefetched[victims]
        self.counters.prefetch_wasted += int(np.count_nonzero(wasted))
        self.prefetched[victims] = False
        self.counters.evictions += victims.size
        self.state[victims] = ABSENT
        self._unevictable_stale = True
        self._free[pool].extend(self.slot_of[victims].tolist())
        self.slot_of[victims] = -1
        self._used[pool] -= victims.size

    def _evict(self, victim: int, pool: int) -> None:
        if self._prefetched_items[victim]:
            self.counters.prefetch_wasted += 1
            self._prefetched_items[victim] = False
        self.counters.evictions += 1
        self.state_items[victim] = ABSENT
        self._unevictable[victim] = np.inf
        self._free[pool].append(self.slot_of.item(victim))
        self.slot_of[victim] = -1
        self._used[pool] -= 1

    def landed(self, flat: int | list[int] | np.ndarray) -> None:
        """Copies of flat (one index, or several demand copies [m]: a few as a list, one at a time) finished."""
        if isinstance(flat, list):
            state, bar, unevictable = self.state_items, self._bar_items, self._unevictable
            for f in flat:
                state[f] = RESIDENT
                if bar[f] == 1:
                    unevictable[f] = 0.0
                self.eviction.on_insert(f, self.clock)
            return
        self.state[flat] = RESIDENT
        self._unevictable_stale = True
        prefetched = False if isinstance(flat, np.ndarray) else bool(self.prefetched[flat])
        self.eviction.on_insert(flat, self.clock, prefetched)

    def preload(self, flat: Sequence[int]) -> None:
        """Make experts resident without counting loads (a warm start), as far as free slots allow."""
        for f in flat:
            pool = self._pool(f)
            if self.state[f] == ABSENT and self._used[pool] < self.capacity[pool]:
                self._used[pool] += 1
                self.slot_of[f] = self._free[pool].pop()
                self.state[f] = RESIDENT
                self._unevictable_stale = True

    # ---- snapshots ------------------------------------------------------------------------------------
    def resident_mask(self) -> np.ndarray:
        """[L, E] bool: resident now."""
        return (self.state == RESIDENT).reshape(self.L, self.E)
