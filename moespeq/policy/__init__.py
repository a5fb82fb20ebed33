"""Pure decision logic for offloaded MoE decoding, shared by the simulator and the runtime (DESIGN §4).

Nothing here knows the time. Objects are told events (a layer routed, a copy landed, a cycle ended)
and asked for decisions (victims, prefetch requests, the next draft length). The simulator answers
"when" with SimPy time, the runtime with CUDA events; both drive the same objects.

  config     PolicyConfig: the serializable knobs (JSON, strict), tied to one model
  cache      ExpertCache: slots, residency, holds, counters
  eviction   lru, lfu, lfru, lookahead (ELB-aware), belady (oracle)
  elb        the Expert Lookahead Buffer
  prefetch   none, gate (next layer), eam (MoE-Infinity style), perfect (oracle)
  scheduler  the ELB three-phase scheduler (MoE-SpeQ)
  governor   off, static k, the Amortization Roofline governor
  roofline   the performance model Theta(k) behind the governor and `moespeq roofline`

Usage:
    p = build_policies(PolicyConfig(model="phi-3.5-moe"), layers=32, experts=16, top_k=2, slots=113)
"""

from __future__ import annotations

from dataclasses import dataclass

from moespeq.policy.cache import ExpertCache, split_slots
from moespeq.policy.config import (
    CacheConfig,
    GovernorConfig,
    PolicyConfig,
    PrefetchConfig,
    load_policy,
    save_policy,
)
from moespeq.policy.elb import ExpertLookaheadBuffer
from moespeq.policy.eviction import FutureUses, make_eviction
from moespeq.policy.governor import Governor, make_governor
from moespeq.policy.prefetch import EamPrefetcher, GatePrefetcher, NoPrefetch, PerfectPrefetcher, Prefetcher
from moespeq.policy.roofline import PerfModel
from moespeq.policy.scheduler import ElbScheduler

__all__ = ["CacheConfig", "ExpertCache", "ExpertLookaheadBuffer", "FutureUses", "Governor", "GovernorConfig",
           "PerfModel", "PolicyConfig", "Policies", "PrefetchConfig", "Prefetcher", "build_policies",
           "load_policy", "save_policy"]


@dataclass
class Policies:
    """One system's live decision objects."""

    config: PolicyConfig
    cache: ExpertCache
    elb: ExpertLookaheadBuffer
    prefetcher: Prefetcher
    governor: Governor


def build_policies(cfg: PolicyConfig, layers: int, experts: int, top_k: int, slots: int,
                   perf: PerfModel | None = None, future: FutureUses | None = None) -> Policies:
    """The objects a PolicyConfig names, for a model of L layers x E experts (top-K) and `slots` cache slots.

    `perf` is needed by the roofline governor and the ELB scheduler; `future` (the true schedule of
    needs) by belady eviction and the perfect prefetcher.
    """
    elb = ExpertLookaheadBuffer(layers, experts)
    rule = make_eviction(cfg.cache.eviction, layers, experts, cfg.cache.decay, cfg.cache.tie_break, elb, future)
    slots = min(slots, layers * experts)
    capacity = split_slots(slots, layers, experts, cfg.cache.layer_split) if cfg.cache.pool == "layer" else [slots]
    cache = ExpertCache(layers, experts, capacity, rule)
    governor = make_governor(cfg.governor, perf, layers, experts, top_k, capacity)
    kind = cfg.prefetch.kind
    prefetcher: Prefetcher
    if kind == "none":
        prefetcher = NoPrefetch(cache)
    elif kind == "gate":
        prefetcher = GatePrefetcher(cache)
    elif kind == "eam":
        p = cfg.prefetch
        prefetcher = EamPrefetcher(cache, top_k, p.eam_window, p.eam_width, p.eam_depth)
    elif kind == "perfect":
        if future is None:
            raise ValueError("the perfect prefetcher needs the future schedule: pass future=")
        prefetcher = PerfectPrefetcher(cache, future)
    else:
        if perf is None:
            raise ValueError("the elb scheduler needs a PerfModel: pass perf=")
        prefetcher = ElbScheduler(cache, elb, perf, cfg.prefetch.phase2_aggressiveness)
    return Policies(cfg, cache, elb, prefetcher, governor)
