"""The machine in SimPy: a PCIe link with its copy engines, and one GPU compute stream.

  H2D engine   a process that takes work from a host-side priority queue. Key, field by field:
               (class: -1 D2H (one engine) / 0 demand / 1 prefetch, step, layer, -score, insertion order).
               A demand entry is a whole layer's misses (`demand`): they are claimed and copied back to
               back at once, which is exact because nothing can come before demand copies of the running
               layer; each copy's landing time goes to `land_at`, so the compute stream can fold its
               expert kernels over the landings without an event per copy. A prefetch is one copy. A copy's time
               is HardwareProfile.h2d_time_s (size-dependent bandwidth, per-copy latency, pinned or
               pageable); the part of a copy that overlaps a D2H transfer known when it starts moves at
               `h2d_during_d2h_gbps`. The slot is claimed from the cache when the copy *starts*, so
               victims are chosen with the freshest knowledge. A prefetch whose step and layer have passed
               is dropped; a prefetch the cache refuses (or cannot place) parks the whole prefetch queue
               until `unpark()` (after a layer finishes, which is when evictable experts appear), which
               retries them best first until the next refusal; a demand copy with no evictable slot
               waits for `notify_release()`.
  D2H engine   FIFO copies device to host (the draft's routing ids). With one copy engine both directions
               share the H2D engine's queue, at demand priority.
  compute      the decode process itself is the stream: `compute(seconds)` is a timeout. A kernel that
               starts while an H2D copy runs is stretched by (1 - copy_compute_overlap) of its length.

Same-time events follow SimPy's (time, priority, insertion) order, so runs are deterministic.

Usage:
    machine = Machine(env, hw, cache, expert_bytes, recorder); env.process(...)
"""

from __future__ import annotations

import heapq
from collections.abc import Callable

import numpy as np
import simpy

from moespeq.events import D2H_COPY, EVICT, H2D_COPY, PREFETCH_ISSUE, Recorder
from moespeq.hardware import HardwareProfile
from moespeq.policy.cache import ABSENT, OK, ExpertCache

DEMAND, PREFETCH, D2H = 0, 1, -1
WHOLE_LAYER = -1  # expert id recorded for a copy that moves every expert of a layer at once (hf-offload)


class PrefetchBatch:
    """One decision's prefetch requests, sorted by (step, layer, -score, expert); `pos` is the next one."""

    __slots__ = ("items", "pos")

    def __init__(self, items: list[tuple[int, int, float, int]]) -> None:
        self.items, self.pos = items, 0


class DemandBatch:
    """A running layer's misses, flat indices [m] (whole_layer: every absent expert of the layer, in one
    copy). `ready` fires each time the engine has started some of them; `flats` then holds the ones still
    waiting for a slot (empty when all are on their way)."""

    def __init__(self, layer: int, flats: np.ndarray, whole_layer: bool, ready: simpy.Event) -> None:
        self.layer, self.flats, self.whole_layer, self.ready = layer, flats, whole_layer, ready

    def announce(self, env: simpy.Environment, waiting: np.ndarray) -> None:
        """The engine has started all misses but `waiting` [w]: fire `ready` (and arm a new one if any wait)."""
        done, self.flats = self.ready, waiting
        if waiting.size:
            self.ready = env.event()
        done.succeed()


class Machine:
    def __init__(self, env: simpy.Environment, hw: HardwareProfile, cache: ExpertCache, expert_bytes: int,
                 recorder: Recorder, pinned: bool = True) -> None:
        self.env, self.hw, self.cache, self.rec = env, hw, cache, recorder
        self.E, self.expert_bytes, self.pinned = cache.E, expert_bytes, pinned
        self.copy_s = hw.h2d_time_s(expert_bytes, pinned)
        self.layer_copy_s = hw.h2d_time_s(expert_bytes * cache.E, pinned)
        # [L*E] ends of back-to-back copies (NumPy's products, read one by one)
        self._copy_ends_s = (self.copy_s * np.arange(1, cache.L * cache.E + 1)).tolist()
        self.progress = (0, -1)  # (step, layer) the compute stream is at; set by the decoder
        self._heap: list[tuple] = []
        self._parked: list[tuple] = []  # a heap of prefetches the cache refused, retried after unpark()
        self._retry = False
        self._queued = bytearray(cache.L * cache.E)  # 1: the expert has a prefetch in the queue (read one by one)
        self._seq = 0
        self._wake: simpy.Event | None = None
        self._slot_wait: simpy.Event | None = None
        self.land_at = np.zeros(cache.L * cache.E)  # landing time of each expert's latest copy
        self.d2h_window = (0.0, 0.0)  # [start, end) of the latest D2H data transfer
        self.busy_until = 0.0  # when the H2D engine's current copies end
        self.h2d_busy_s = 0.0
        self.h2d_bytes = 0
        self.d2h_bytes = 0
        self.copies = 0
        self._d2h_queue: list[tuple[int, Callable[[], None]]] = []
        self._d2h_cache: dict[int, tuple[float, float]] = {}
        self._d2h_wake: simpy.Event | None = None
        env.process(self._h2d())
        if hw.copy_engines >= 2:
            env.process(self._d2h())

    # ---- requests ---------------------------------------------------------------------------------------
    def request(self, requests: list[tuple[int, int, int, float]]) -> None:
        """Queue prefetch copies [(step, layer, expert, score)]; experts already queued are ignored.

        One decision's requests enter the queue as one sorted batch that the engine merges with the rest
        (the same order as one entry each, without a heap operation per request).
        """
        items, queued, E = [], self._queued, self.E  # noqa: N806
        for step, layer, expert, score in requests:
            flat = layer * E + expert
            if not queued[flat]:
                queued[flat] = True
                items.append((step, layer, -score, expert))
        if self.rec.enabled:
            for step, layer, _, expert in items:
                self.rec.instant(PREFETCH_ISSUE, self.env.now, layer, expert, step=step)
        if items:
            items.sort()
            self._push((PREFETCH, *items[0][:3], PrefetchBatch(items)))

    def demand(self, step: int, layer: int, flats: np.ndarray, whole_layer: bool = False) -> DemandBatch:
        """Queue the misses (flat indices [m]) of a running layer, copied in this order; whole_layer: the
        layer's absent experts in one copy instead (hf-offload)."""
        batch = DemandBatch(layer, flats, whole_layer, self.env.event())
        self._push((DEMAND, step, layer, 0.0, batch))
        return batch

    def _push(self, entry: tuple) -> None:
        self._seq += 1
        heapq.heappush(self._heap, (*entry[:4], self._seq, entry[4]))
        self._kick()

    def d2h(self, n_bytes: int, done: Callable[[], None]) -> None:
        """Copy n_bytes to the host, then call `done` (the host now has the data)."""
        if self.hw.copy_engines >= 2:
            self._d2h_queue.append((n_bytes, done))
            if self._d2h_wake is not None and not self._d2h_wake.triggered:
                self._d2h_wake.succeed()
        else:
            self._push((D2H, 0, 0, 0.0, (n_bytes, done)))

    def unpark(self) -> None:
        """Give parked prefetches another try, best first (the cache may have evictable experts now)."""
        if self._parked:
            self._retry = True
            self._kick()

    def notify_release(self) -> None:
        if self._slot_wait is not None and not self._slot_wait.triggered:
            self._slot_wait.succeed()

    def idle(self) -> bool:
        """Both engines wait for work with nothing queued or parked: until the compute stream asks for a
        copy, no process but it can act (the condition of the decoder's quiet passes)."""
        if self._heap or self._parked or self._wake is None or self._wake.triggered:
            return False
        return self.hw.copy_engines < 2 or (not self._d2h_queue and self._d2h_wake is not None
                                            and not self._d2h_wake.triggered)

    def backlog_s(self) -> float:
        """Time to drain the H2D queue as it stands (expert copies only)."""
        queued = sum(len(e[5].items) - e[5].pos if e[0] == PREFETCH else 1 for e in self._heap)
        return queued * self.copy_s + max(0.0, self.busy_until - self.env.now)

    def _kick(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    # ---- the H2D engine -----------------------------------------------------------------------------------
    def _stale(self, step: int, layer: int) -> bool:
        now_step, now_layer = self.progress
        return step < now_step or (step == now_step and layer < now_layer)

    def _h2d(self):
        env = self.env
        while True:
            retry = self._retry and bool(self._parked)
            if not self._heap and not retry:
                self._wake = env.event()
                yield self._wake
                continue
            from_parked = retry and (not self._heap or self._parked[0] < self._heap[0])
            entry = heapq.heappop(self._parked if from_parked else self._heap)
            cls, payload = entry[0], entry[5]
            if cls == PREFETCH:
                yield from self._prefetch(entry)
            elif cls == DEMAND:
                yield from self._demand(entry)
            else:
                yield from self._d2h_copy(*payload)

    def _next_live(self, batch: PrefetchBatch) -> int:
        """Skip (and unqueue) a batch's items that landed meanwhile or whose layer has passed; -1 if none left."""
        state, queued, E = self.cache.state, self._queued, self.E  # noqa: N806
        while batch.pos < len(batch.items):
            step, layer, _, expert = batch.items[batch.pos]
            flat = layer * E + expert
            if state[flat] == ABSENT and not self._stale(step, layer):
                return flat
            queued[flat] = False
            batch.pos += 1
        return -1

    def _prefetch(self, entry: tuple):
        batch: PrefetchBatch = entry[5]
        flat = self._next_live(batch)
        if flat < 0:
            return
        status, victim = self.cache.reserve(flat, demand=False)
        if status != OK:  # later prefetches would be refused for the same reason: park them all
            heapq.heappush(self._parked, (PREFETCH, *batch.items[batch.pos][:3], entry[4], batch))
            if any(e[0] == PREFETCH for e in self._heap):
                for e in self._heap:
                    if e[0] == PREFETCH:
                        heapq.heappush(self._parked, e)
                self._heap = [e for e in self._heap if e[0] != PREFETCH]
                heapq.heapify(self._heap)
            self._retry = False
            return
        self._queued[flat] = False
        batch.pos += 1
        if batch.pos < len(batch.items):  # the rest waits its turn in the queue
            heapq.heappush(self._heap, (PREFETCH, *batch.items[batch.pos][:3], entry[4], batch))
        end = self._start(flat, victim, self.env.now, "prefetch")
        yield self.env.timeout(end - self.env.now)
        self.cache.landed(flat)

    def _demand(self, entry: tuple):
        """Claim slots for as many of the batch's misses as fit, copy them back to back, fire batch.ready."""
        batch: DemandBatch = entry[5]
        if batch.whole_layer:
            yield from self._layer_copy(batch)
            return
        # every one is absent: only this engine starts copies, and it serves a demand batch before any
        # prefetch, so none of them started since the decoder found them missing
        cache, t, flats = self.cache, self.env.now, batch.flats
        granted, victims = cache.reserve_many(flats)
        if victims and self.rec.enabled:
            for victim in victims:
                self.rec.instant(EVICT, t, victim // self.E, victim % self.E)
        started = flats[:granted]
        if granted:
            t = self.copy_back_to_back(batch.layer, started.tolist(), t)
        waiting = flats[granted:]
        batch.announce(self.env, waiting)
        if waiting.size:  # no evictable slot: retry after the compute stream releases one
            heapq.heappush(self._heap, entry)
            self._slot_wait = self.env.event()
        if granted:
            yield self.env.timeout(t - self.env.now)
            cache.landed(started)
        if waiting.size and self._slot_wait is not None and not self._slot_wait.triggered:
            yield self._slot_wait

    def copy_back_to_back(self, layer: int, flats: list[int], t: float) -> float:
        """Account demand copies of a layer's experts flats [m] (slots claimed) started back to back at t;
        returns when the last lands. Copies that may overlap a D2H transfer are timed one by one."""
        if t < self.d2h_window[1]:
            for flat in flats:
                t = self._start(flat, -1, t, "demand")
            return t
        # at full rate: one account, the same arithmetic whether or not a timeline is recorded
        n, land_at, ends_s = len(flats), self.land_at, self._copy_ends_s
        for i, flat in enumerate(flats):  # not zip(..., strict=...): a keyword call costs more than the loop here
            land_at[flat] = t + ends_s[i]
        end = t + n * self.copy_s
        self._account(t, end, self.expert_bytes * n, layer, -1, "demand", n, record=False)
        if self.rec.enabled:
            lands = [t + ends_s for ends_s in self._copy_ends_s[:n]]
            for flat, start, land in zip(flats, [t, *lands[:-1]], lands, strict=True):
                self.rec.span(H2D_COPY, "h2d", start, land, layer, flat % self.E, bytes=self.expert_bytes,
                              kind="demand")
        return end

    def _layer_copy(self, batch: DemandBatch):
        """hf-offload: the whole layer in one copy, into slots freed for it."""
        lo = batch.layer * self.E
        flats = np.flatnonzero(self.cache.state[lo:lo + self.E] == ABSENT) + lo
        waiting = flats
        while waiting.size:
            granted, victims = self.cache.reserve_many(waiting)
            if self.rec.enabled:
                for victim in victims:
                    self.rec.instant(EVICT, self.env.now, victim // self.E, victim % self.E)
            waiting = waiting[granted:]
            if waiting.size:
                self._slot_wait = self.env.event()
                yield self._slot_wait
        end = self.env.now + self._duration(self.layer_copy_s, self.expert_bytes * len(flats), self.env.now)
        self._account(self.env.now, end, self.expert_bytes * len(flats), batch.layer, WHOLE_LAYER, "demand")
        self.land_at[flats] = end
        batch.announce(self.env, flats[:0])
        yield self.env.timeout(end - self.env.now)
        self.cache.landed(flats)

    def _start(self, flat: int, victim: int, t0: float, kind: str) -> float:
        """Account one expert copy starting at t0 (after an eviction); returns its landing time."""
        if victim >= 0 and self.rec.enabled:
            self.rec.instant(EVICT, t0, victim // self.E, victim % self.E)
        end = t0 + self._duration(self.copy_s, self.expert_bytes, t0)
        self.land_at[flat] = end
        self._account(t0, end, self.expert_bytes, flat // self.E, flat % self.E, kind)
        return end

    def _duration(self, base_s: float, n_bytes: int, t0: float) -> float:
        overlap = min(t0 + base_s, self.d2h_window[1]) - max(t0, self.d2h_window[0])
        if overlap <= 0:
            return base_s
        fast = n_bytes / base_s  # the part overlapping a D2H transfer runs at the reduced rate
        slow = min(fast, self.hw.h2d_during_d2h_gbps * 1e9)
        return base_s + overlap * (fast / slow - 1.0)

    def _account(self, t0: float, end: float, n_bytes: int, layer: int, expert: int, kind: str,
                 copies: int = 1, record: bool = True) -> None:
        self.busy_until = end
        self.h2d_busy_s += end - t0
        self.h2d_bytes += n_bytes
        self.copies += copies
        if record and self.rec.enabled:
            self.rec.span(H2D_COPY, "h2d", t0, end, layer, expert, bytes=n_bytes, kind=kind)

    # ---- the D2H engine -----------------------------------------------------------------------------------
    def _d2h_times(self, n_bytes: int) -> tuple[float, float]:
        """(latency, transfer) seconds of a D2H copy; every draft row has the same size, so they are cached."""
        times = self._d2h_cache.get(n_bytes)
        if times is None:
            table = self.hw.d2h_pinned
            transfer = n_bytes / (table.at(n_bytes) * 1e9)
            latency = self.hw.copy_latency_s if n_bytes < table.size_bytes[0] else 0.0
            times = self._d2h_cache[n_bytes] = (latency, transfer)
        return times

    def _d2h_copy(self, n_bytes: int, done: Callable[[], None]):
        t0 = self.env.now
        latency, transfer = self._d2h_times(n_bytes)
        self.d2h_window = (t0 + latency, t0 + latency + transfer)
        yield self.env.timeout(latency + transfer)
        self.d2h_bytes += n_bytes
        if self.rec.enabled:
            self.rec.span(D2H_COPY, "d2h", t0, self.env.now, bytes=n_bytes)
        done()

    def _d2h(self):
        while True:
            if not self._d2h_queue:
                self._d2h_wake = self.env.event()
                yield self._d2h_wake
                continue
            n_bytes, done = self._d2h_queue.pop(0)
            yield from self._d2h_copy(n_bytes, done)

    # ---- compute ------------------------------------------------------------------------------------------
    def compute_s(self, seconds: float, now: float | None = None) -> float:
        """A kernel's time when it starts now (or at `now`): stretched while an H2D copy runs and copies are
        not fully hidden."""
        if self.hw.copy_compute_overlap < 1.0 and self.busy_until > (self.env.now if now is None else now):
            return seconds * (2.0 - self.hw.copy_compute_overlap)
        return seconds

    def compute(self, seconds: float) -> simpy.Timeout:
        return self.env.timeout(self.compute_s(seconds))
