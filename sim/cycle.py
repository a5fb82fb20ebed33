"""The decode process: prefill, then speculative cycles (DESIGN §1) replayed on the lookahead trace.

One cycle at position n (x_0 = y[n] is the last accepted token):
  1. the governor picks k (capped by the trace: at most k_max and N - 2 - n);
  2. k draft forwards on the compute stream; after forward j its routing D[n, j] goes to the host (a
     small D2H copy), enters the ELB and is shown to the prefetcher (ELB phases I-III);
  3. verification of x_0..x_k in one pass, layer by layer: attention and router, then the experts the
     k + 1 tokens route to (V[n, :k+1], rejected tokens included), each once with its tokens grouped;
     cached experts first, missing ones fetched on demand and computed as they land (stall otherwise);
  4. accept a = the longest matching prefix of d[n, :k] (from the trace) and emit a + 1 tokens;
     the governor is told (k, a, the verified routing, the cache at the cycle's start).
k = 0 is plain decoding of one token with routing R[n] (every baseline). The prefill is one pass with
the prompt's routing; its duration is the TTFT. A step is a prefill or a cycle; steps are numbered
across the whole run (the oracle's schedule uses the same numbering).

A pass that starts with both copy engines idle, and in which only its own demand copies can happen (no
per-layer prefetch decisions, no timeline), is a quiet pass: it runs as plain arithmetic in one timeout
instead of a few SimPy events per layer, with the same floating-point operations (tests compare the two).
Plain decoding (k = 0) is almost always quiet; a verification after drafting seldom is.

Dimension letters: L MoE layers, E experts, K top-k, T tokens in a pass, J draft positions.

Usage:
    env.process(Decoder(env, machine, policies, costs, trace, system, rng, stats).run())
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import simpy

from moespeq.events import (
    ACCEPT,
    ATTENTION,
    DRAFT,
    EXPERT_COMPUTE,
    GOVERNOR,
    PREFILL,
    STALL,
    VERIFY,
    Recorder,
)
from moespeq.policy import Policies
from moespeq.policy.cache import ABSENT, RESIDENT
from moespeq.policy.prefetch import Prefetcher, Request
from moespeq.trace import LookaheadTrace, SequenceTrace

from .costs import CostModel
from .machine import Machine
from .metrics import RunStats
from .systems import SystemSpec

# ---- the trace as cycles ---------------------------------------------------------------------------------

def accepted_table(seq: SequenceTrace) -> np.ndarray:
    """[N, J+1] accepted draft tokens at position n for draft length k (column k)."""
    acc = seq.accepted() if seq.draft_tokens.shape[1] else np.zeros((seq.n_tokens, 0), dtype=bool)
    return np.concatenate([np.zeros((seq.n_tokens, 1), np.int64), np.cumsum(acc, axis=1)], axis=1)


def k_cap(trace: LookaheadTrace, seq: SequenceTrace, n: int) -> int:
    """Longest draft the trace supports at n: k_max, and no token past the sequence's last."""
    j = trace.meta.k_max if trace.meta.lookahead else 0
    return max(0, min(j, seq.n_tokens - 2 - n))


def step_routing(seq: SequenceTrace, n: int, k: int) -> np.ndarray:
    """[k+1, L, K] routing of the verified inputs x_0..x_k (V; R[n] when there is no lookahead)."""
    return seq.verify_ids[n, : k + 1] if seq.verify_ids.size else seq.target_ids[n: n + 1]


def static_schedule(trace: LookaheadTrace, k: int) -> np.ndarray:
    """need [S, L, E] of every step (prefills and cycles) of a run at static draft length k."""
    spec = trace.meta.model
    offsets = np.arange(spec.moe_layers)[None, :, None] * spec.experts  # [1, L, 1]
    needs = []

    def need(ids: np.ndarray) -> np.ndarray:
        mask = np.zeros(spec.moe_layers * spec.experts, dtype=bool)
        mask[(ids.astype(np.int64) + offsets).ravel()] = True
        return mask.reshape(spec.moe_layers, spec.experts)

    for seq in trace.sequences:
        needs.append(need(seq.prompt_ids))
        acc, n = accepted_table(seq), 0
        while n < seq.n_tokens - 1:
            kk = min(k, k_cap(trace, seq, n))
            needs.append(need(step_routing(seq, n, kk)))
            n += int(acc[n, kk]) + 1
    return np.stack(needs)


def predict_next_layer(ids: np.ndarray, accuracy: float, experts: int, rng: np.random.Generator) -> np.ndarray:
    """A next-layer gate prediction [T, K]: each true expert kept with P = accuracy, else a random other."""
    wrong = rng.random(ids.shape) >= accuracy
    if not wrong.any():
        return ids
    shift = rng.integers(1, experts, size=ids.shape)
    return np.where(wrong, (ids + shift) % experts, ids)


class LayerPlan(NamedTuple):
    """One layer's expert work in a pass: the distinct experts its tokens route to, [n] each, in id order."""

    experts: np.ndarray  # [n] expert ids
    flat: np.ndarray  # [n] layer * E + expert
    cost_s: np.ndarray  # [n] seconds of each expert's kernel over its tokens (tokens grouped by expert)
    fetch: np.ndarray  # [n] flat, most tokens first (ties: lower id): the order its misses are fetched in


class PassPlan(NamedTuple):
    """A pass's expert work: its layers' LayerPlans concatenated in layer order, [m] each, and where each
    layer's run starts and ends. Cut per layer on demand (`layer`); a quiet pass reads its layers from lists of
    the whole pass instead."""

    experts: np.ndarray  # [m]
    flat: np.ndarray  # [m]
    cost_s: np.ndarray  # [m]
    fetch: np.ndarray  # [m]
    bounds: list[tuple[int, int]]  # [L] (start, end) of each layer's run

    def layer(self, layer: int) -> LayerPlan:
        a, b = self.bounds[layer]
        return LayerPlan(self.experts[a:b], self.flat[a:b], self.cost_s[a:b], self.fetch[a:b])


def numpy_sum(values: list[float]) -> float:
    """float(np.add.reduce(values)) without the array for short lists: NumPy adds fewer than 8 terms in
    order and pairs them from 8 on."""
    return sum(values) if len(values) < 8 else float(np.add.reduce(values))


def _delay_to(now: float, t: float) -> float:
    """The delay d >= 0 with now + d == t in floating point (t - now alone can miss t by an ulp)."""
    d = t - now
    while now + d < t:
        d = math.nextafter(d, math.inf)
    while d > 0.0 and now + d > t:
        d = math.nextafter(d, 0.0)
    return d


class Decoder:
    """The compute stream: drives the policies through every step of the trace and fills RunStats."""

    quiet_passes = True  # False: every pass as events (tests compare the two)

    def __init__(self, env: simpy.Environment, machine: Machine, policies: Policies, costs: CostModel,
                 trace: LookaheadTrace, system: SystemSpec, rng: np.random.Generator, stats: RunStats,
                 recorder: Recorder) -> None:
        self.env, self.m, self.p, self.costs, self.trace = env, machine, policies, costs, trace
        self.system, self.rng, self.stats, self.rec = system, rng, stats, recorder
        spec = trace.meta.model
        self.L, self.E, self.K = spec.moe_layers, spec.experts, spec.top_k
        self._offsets = np.arange(self.L)[None, :, None] * self.E  # [1, L, 1]
        self._rows = np.arange(self.L)[:, None]  # [L, 1]
        self.gate_accuracy = policies.config.prefetch.gate_accuracy if policies.config.prefetch.kind == "gate" else None
        self.step = 0
        self.row_bytes = self.L * self.K * 4  # int16 ids + bf16 gate weights of one draft forward
        self.whole_layers = system.transfer == "layer"  # hf-offload: a miss copies the whole layer
        # per-layer prefetch decisions, skipped for prefetchers that make none (the ELB scheduler, none)
        kind = type(policies.prefetcher)
        self._router_hook = kind.on_router is not Prefetcher.on_router
        self._layer_done_hook = kind.on_layer_done is not Prefetcher.on_layer_done

    def run(self):
        for i, seq in enumerate(self.trace.sequences):
            t0 = self.env.now
            yield from self._pass(seq.prompt_ids, 0, PREFILL)
            self.p.prefetcher.end_step(seq.n_prompt)
            self.step += 1
            self.stats.ttft_s.append(self.env.now - t0)
            yield from self._decode(i, seq)

    # ---- a sequence ------------------------------------------------------------------------------------
    def _decode(self, index: int, seq: SequenceTrace):
        m, stats, cache = self.m, self.stats, self.p.cache
        before = cache.counters.as_dict()
        bytes0, busy0, t0 = m.h2d_bytes, m.h2d_busy_s, self.env.now
        acc, n = accepted_table(seq), 0
        while n < seq.n_tokens - 1:
            k = self.p.governor.choose(k_cap(self.trace, seq, n))
            a = int(acc[n, k])
            yield from self._cycle(seq, n, k, a)
            for i in range(a + 1):
                stats.token_rows.append((index, n + 1 + i, stats.cycles, k, a, self.env.now))
            stats.cycles += 1
            stats.k_sum += k
            stats.accepted_sum += a
            stats.tokens += a + 1
            stats.cycle_k.append(k)
            n += a + 1
        stats.decode_s += self.env.now - t0
        stats.h2d_bytes += m.h2d_bytes - bytes0
        stats.h2d_busy_s += m.h2d_busy_s - busy0
        stats.add_cache(before, cache.counters.as_dict())

    def _cycle(self, seq: SequenceTrace, n: int, k: int, a: int):
        p, step = self.p, self.step
        context = seq.n_prompt + n
        start = self.env.now
        resident = p.cache.resident_mask()  # [L, E] at the cycle's start
        if self.rec.enabled:
            self.rec.instant(GOVERNOR, self.env.now, k=k)
        p.elb.start(k)
        self._issue(p.prefetcher.begin_step(step, k + 1, k))
        for j in range(k):
            t0 = self.env.now
            yield self.m.compute(self.costs.draft_step_s(context + j))
            self.stats.draft_s += self.env.now - t0
            if self.rec.enabled:
                self.rec.span(DRAFT, "compute", t0, self.env.now, j=j)
            ids, weights = seq.draft_ids[n, j], seq.draft_weights[n, j]
            self.m.d2h(self.row_bytes, lambda j=j, ids=ids, weights=weights: self._on_row(step, j, ids, weights))
        verify_ids = step_routing(seq, n, k)
        yield from self._pass(verify_ids, context, VERIFY)
        p.prefetcher.end_step(a + 1)
        p.governor.observe(k, a, verify_ids, resident, self.env.now - start)
        self._count_new(verify_ids, resident)
        if self.rec.enabled:
            self.rec.instant(ACCEPT, self.env.now, k=k, accepted=a)
        self.step += 1

    def _count_new(self, verify_ids: np.ndarray, resident: np.ndarray) -> None:
        """Experts the cycle needed that were not resident at its start: of x_0, and of all k + 1 inputs."""
        rows = self._rows
        need = np.zeros((self.L, self.E), dtype=bool)
        need[rows, verify_ids[0]] = True
        self.stats.new_first += int(np.count_nonzero(need & ~resident))
        for ids in verify_ids[1:]:
            need[rows, ids] = True
        self.stats.new_all += int(np.count_nonzero(need & ~resident))

    def _on_row(self, step: int, j: int, ids: np.ndarray, weights: np.ndarray) -> None:
        """The host received draft forward j's routing: grow the ELB, let the scheduler prefetch."""
        if step != self.step:
            return  # the cycle already ended (a copy that outlived it)
        self.p.elb.add(ids, weights)
        self._issue(self.p.prefetcher.on_draft_row(j, ids, weights, self.m.backlog_s()))

    def _issue(self, requests: list[Request]) -> None:
        if requests:
            self.m.request(requests)

    # ---- one forward pass (prefill or verification) -----------------------------------------------------
    def _layer_plans(self, counts: np.ndarray) -> PassPlan:
        """What each layer's expert phase works on in a pass with counts [L, E] tokens per expert."""
        run = self.costs.pass_experts(counts)
        flat = run.layers * self.E + run.experts  # [m]
        fetch = flat[np.lexsort((-run.tokens, run.layers))]  # [m] per layer: most tokens first, stable
        bounds = list(zip([0, *run.ends[:-1]], run.ends, strict=True))
        return PassPlan(run.experts, flat, run.seconds, fetch, bounds)

    def _pass(self, ids: np.ndarray, context: int, kind: str):
        """Run the target over T tokens with routing ids [T, L, K] after `context` cached tokens."""
        env, p, m, step = self.env, self.p, self.m, self.step
        t_start, tokens = env.now, ids.shape[0]
        counts = np.bincount((ids.astype(np.int64) + self._offsets).ravel(),
                             minlength=self.L * self.E).reshape(self.L, self.E)  # [L, E] tokens per expert
        if kind == PREFILL:
            self._issue(p.prefetcher.begin_step(step, tokens, 0))
        busy0, layer_s = 0.0, self.costs.layer_s(tokens, context)
        plans = self._layer_plans(counts)
        if self._quiet(plans):
            end, busy0 = self._quiet_pass(plans, layer_s, self.costs.head_s(tokens, context))
            yield env.timeout(_delay_to(env.now, end))
        else:
            busy0 = yield from self._event_pass(ids, plans, layer_s)
            t0 = env.now
            yield m.compute(self.costs.head_s(tokens, context))
            busy0 += env.now - t0
        m.progress = (step, self.L)
        if kind == VERIFY:
            self.stats.verify_s += busy0
            self.stats.stall_s += env.now - t_start - busy0
        if self.rec.enabled:
            self.rec.span(kind, "compute", t_start, env.now, tokens=tokens)

    def _event_pass(self, ids: np.ndarray, plans: PassPlan, layer_s: float):
        """The layers of a pass as SimPy events: copies and prefetch decisions interleave with them.
        Returns the compute seconds."""
        env, p, m, step, busy0 = self.env, self.p, self.m, self.step, 0.0
        for layer in range(self.L):
            m.progress = (step, layer)
            p.cache.progress(step, layer)
            p.elb.verify_at(layer)
            t0 = env.now
            yield m.compute(layer_s)
            busy0 += env.now - t0
            if self.rec.enabled:
                self.rec.span(ATTENTION, "compute", t0, env.now, layer)
            plan = plans.layer(layer)
            p.cache.access(layer, plan.experts)
            predicted = None
            if self.gate_accuracy is not None and layer + 1 < self.L:
                predicted = predict_next_layer(ids[:, layer + 1], self.gate_accuracy, self.E, self.rng)
            if self._router_hook:
                self._issue(p.prefetcher.on_router(layer, ids[:, layer], predicted))
            busy0 += yield from self._experts(layer, plan)
            if self._layer_done_hook:
                self._issue(p.prefetcher.on_layer_done(layer))
            m.unpark()
        return busy0

    def _quiet(self, plans: PassPlan) -> bool:
        """Can the pass run as plain arithmetic (`_quiet_pass`)? Yes when nothing but the compute stream can
        act: both engines idle, no per-layer prefetch decisions, no timeline, per-expert copies, and every
        layer's experts fit its pool (so a layer's misses all get a slot at once)."""
        if (self.rec.enabled or self._router_hook or self._layer_done_hook or self.gate_accuracy is not None
                or self.whole_layers or not self.quiet_passes or not self.m.idle()):
            return False
        return self.p.cache.layers_fit([b - a for a, b in plans.bounds])

    def _quiet_pass(self, plans: PassPlan, layer_s: float, head_s: float) -> tuple[float, float]:
        """`_event_pass` and the LM head from now on an idle machine, in plain arithmetic with the same
        floating-point operations as the events would do: a layer's misses start back to back at once
        (nothing else is queued), its experts fold over their landings, the copies land before the next layer.
        Returns (end time, compute seconds)."""
        m, step = self.m, self.step
        t, busy = self.env.now, 0.0
        flat, cost, fetch = plans.flat.tolist(), plans.cost_s.tolist(), plans.fetch.tolist()  # [m] each
        # the calls of every layer, looked up once (a pass runs tens of layers, each a few microseconds)
        progress, verify_at, compute_s, experts = self.p.cache.progress, self.p.elb.verify_at, m.compute_s, self._quiet_experts
        for layer, (a, b) in enumerate(plans.bounds):
            m.progress = (step, layer)
            progress(step, layer)
            verify_at(layer)
            t1 = t + compute_s(layer_s, t)
            busy += t1 - t
            t = t1
            t, total = experts(layer, flat[a:b], cost[a:b], fetch[a:b], t)
            busy += total
        t1 = t + m.compute_s(head_s, t)
        return t1, busy + (t1 - t)

    def _quiet_experts(self, layer: int, flat: list[int], cost: list[float], fetch: list[int],
                       t: float) -> tuple[float, float]:
        """A quiet pass's expert phase of one layer from t (LayerPlan's fields as lists): (end time, compute
        seconds). The cache's scalar forms: a layer has a few experts (plain decoding: top-K of one token),
        where NumPy's per-call cost would be most of the work; numpy_sum for the array's sum."""
        cache, m = self.p.cache, self.m
        misses = cache.serve(fetch)
        if misses:
            cache.reserve_few(misses)  # all granted: the layer fits its pool (`_quiet`)
            m.copy_back_to_back(layer, misses, t)
            total, end = self._fold_times(flat, cost, t)[3:]
            cache.landed(misses)
            if end > t:
                t = t + (end - t)  # as a timeout of end - now would advance the clock
        else:
            total = numpy_sum(cost) * m.compute_s(1.0, t)
            t = t + total
        cache.release(flat)
        return t, total

    def _experts(self, layer: int, plan: LayerPlan):
        """Compute a layer's experts: resident first, the rest as they land.

        The misses go to the copy engine as one demand batch; once it has started them their landing
        times are known, and the expert kernels are folded over the landings in one timeout (`_fold`).
        Returns the compute seconds.
        """
        env, cache, m = self.env, self.p.cache, self.m
        experts, flat, cost = plan.experts, plan.flat, plan.cost_s
        state = cache.state
        cache.hold(flat)
        misses = plan.fetch[cache.absent(plan.fetch)]  # [m] flat, in fetch order
        if not misses.size:
            if (state[flat] == RESIDENT).all():  # the common fast path: nothing to wait for
                busy = float(cost.sum()) * m.compute_s(1.0)
                if self.rec.enabled:
                    self._record_fold(layer, experts.tolist(), [env.now] * flat.size,
                                      (cost * m.compute_s(1.0)).tolist(), env.now)
                yield env.timeout(busy)
                cache.release(flat)
                m.notify_release()
                return busy
            return (yield from self._fold(layer, experts, flat, cost, env.now))  # prefetches in flight only
        batch = m.demand(self.step, layer, misses, whole_layer=self.whole_layers)
        t = env.now
        yield batch.ready  # the engine has started (some of) the misses: landing times known
        if not batch.flats.size:  # all of them started: one fold over every expert
            return (yield from self._fold(layer, experts, flat, cost, t))
        busy, pending = 0.0, np.ones(flat.size, dtype=bool)
        while True:  # some misses wait for a slot: fold whatever has started, else wait for the engine
            avail = pending & (state[flat] != ABSENT)
            if not avail.any():
                yield batch.ready
                continue
            sub = avail.nonzero()[0]
            fold_busy, t = yield from self._fold(layer, experts[sub], flat[sub], cost[sub], t, with_end=True)
            busy += fold_busy
            pending &= ~avail
            if not pending.any():
                return busy

    def _fold(self, layer: int, experts: np.ndarray, flat: np.ndarray, cost: np.ndarray, t: float,
              with_end: bool = False):
        """Run experts [a] (seconds cost [a]) from t, each once it has landed, in order of availability:
        t_i = max(t_{i-1}, avail_i) + c_i, i.e. end = max(t + sum c, max_i (avail_i + sum_{j >= i} c_j)),
        in one timeout; release them. Returns the compute seconds (and the end time if with_end).

        A layer has a handful of experts, so the order and the suffix sums are plain Python floats (the same
        IEEE operations as NumPy's elementwise ones, and sorted() is stable like argsort(kind="stable"));
        the total is NumPy's sum, sequential below 8 terms and pairwise from 8 on (tests check the two agree)."""
        env, cache, m = self.env, self.p.cache, self.m
        order, land, c, total, end = self._fold_times(flat.tolist(), cost.tolist(), t)
        if end > env.now:
            yield env.timeout(end - env.now)
        if self.rec.enabled:
            self._record_fold(layer, experts[order].tolist(), land, c, t)
        cache.release(flat)
        m.notify_release()
        return (total, end) if with_end else total

    def _fold_times(self, flat: list[int], seconds: list[float], t: float):
        """_fold's arithmetic at time t for experts flat [a] with kernel seconds [a]: (order, landing times and
        kernel seconds in that order, total, end)."""
        m, state, land_at = self.m, self.p.cache.state_items, self.m.land_at
        # resident experts are there from the start
        land = [t if state[f] == RESIDENT or (at := land_at.item(f)) <= t else at for f in flat]
        order = sorted(range(len(land)), key=land.__getitem__)
        scale = m.compute_s(1.0, t)
        land, c = [land[i] for i in order], [seconds[i] * scale for i in order]  # [a], [a] in order of availability
        total = numpy_sum(c)
        end, suffix = t + total, 0.0
        for i in range(len(c) - 1, -1, -1):  # by index, not zip(reversed(...)): twice as fast on a few experts
            suffix += c[i]
            if land[i] + suffix > end:
                end = land[i] + suffix
        return order, land, c, total, end

    def _record_fold(self, layer: int, experts: list[int], land: list[float], cost: list[float], t: float) -> None:
        for e, a, c in zip(experts, land, cost, strict=True):
            if a > t:
                self.rec.span(STALL, "compute", t, a, layer, e)
                t = a
            self.rec.span(EXPERT_COMPUTE, "compute", t, t + c, layer, e)
            t += c
