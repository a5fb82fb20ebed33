"""The decoding systems: each a named combination of policies plus a memory rule (moespeq.budget).

  hf-offload     HF Transformers' layer offload: every MoE layer streams in whole, one copy per layer,
                 every token, then computes; no cache, no overlap.
  ondemand       each needed expert fetched when its layer routes to it, into top-k staging slots; no
                 cache across tokens.
  lru-sc         Mixtral-Offloading: per-layer LRU cache; cached experts computed first while the missing
                 ones load; as many slots as speq has (same cache).
  lru-sm         the same with the draft's bytes given to the cache as well (same memory).
  gate-prefetch  per-layer LRU + next-layer gate prediction (Pre-gated MoE / ProMoE style), same memory.
  eam-prefetch   MoE-Infinity style: one LFRU pool + activation-matrix matching prefetch, same memory.
  speq           MoE-SpeQ: INT4 draft, ELB three-phase scheduler, lookahead eviction, one pool,
                 Amortization Roofline governor.
  speq-static    speq with a fixed draft length.
  oracle         Belady eviction + perfect prefetch, at the best static k: a bound on what any policy
                 of this framework reaches (k = 0 runs without the draft, with the same-memory layout).

Usage:
    spec = get_system("speq"); policy = spec.policy("phi-3.5-moe")
"""

from __future__ import annotations

from dataclasses import dataclass

from moespeq.budget import MEMORY_RULES
from moespeq.errors import UserError
from moespeq.policy.config import CacheConfig, GovernorConfig, PolicyConfig, PrefetchConfig


@dataclass(frozen=True)
class SystemSpec:
    name: str
    summary: str
    cache: CacheConfig
    prefetch: PrefetchConfig = PrefetchConfig()
    governor: GovernorConfig = GovernorConfig()
    transfer: str = "expert"  # expert: one copy per expert | layer: one copy per whole layer
    k_sweep: bool = False  # run every static k and keep the best (the oracle)

    @property
    def memory_rule(self) -> str:
        return MEMORY_RULES[self.name]

    @property
    def speculative(self) -> bool:
        return self.governor.kind != "off"

    def policy(self, model: str) -> PolicyConfig:
        """The system's default policy for a model."""
        return PolicyConfig(model=model, system=self.name, cache=self.cache, prefetch=self.prefetch,
                            governor=self.governor)


_LRU_LAYER = CacheConfig(eviction="lru", pool="layer")
_SPEQ_CACHE = CacheConfig(eviction="lookahead", pool="global")
SPEQ_STATIC_K = 4  # a common fixed draft length; `moespeq search` or --policy-file sets another

SYSTEMS: dict[str, SystemSpec] = {s.name: s for s in (
    SystemSpec("hf-offload", "HF Transformers offload: whole MoE layers stream every token, no cache",
               CacheConfig(eviction="lru", pool="global"), transfer="layer"),
    SystemSpec("ondemand", "each needed expert fetched on demand into top-k staging slots, no cache",
               CacheConfig(eviction="lru", pool="global")),
    SystemSpec("lru-sc", "Mixtral-Offloading per-layer LRU, cached experts first; speq's cache size", _LRU_LAYER),
    SystemSpec("lru-sm", "Mixtral-Offloading per-layer LRU, cached experts first; speq's memory", _LRU_LAYER),
    SystemSpec("gate-prefetch", "per-layer LRU + next-layer gate-prediction prefetch; speq's memory", _LRU_LAYER,
               PrefetchConfig(kind="gate")),
    SystemSpec("eam-prefetch", "MoE-Infinity style LFRU pool + activation-matrix prefetch; speq's memory",
               CacheConfig(eviction="lfru", pool="global"), PrefetchConfig(kind="eam")),
    SystemSpec("speq", "MoE-SpeQ: INT4 draft, ELB 3-phase prefetch, lookahead eviction, roofline governor",
               _SPEQ_CACHE, PrefetchConfig(kind="elb"), GovernorConfig(kind="roofline")),
    SystemSpec("speq-static", f"speq with a fixed draft length (k = {SPEQ_STATIC_K} by default)",
               _SPEQ_CACHE, PrefetchConfig(kind="elb"), GovernorConfig(kind="static", k=SPEQ_STATIC_K)),
    SystemSpec("oracle", "Belady cache + perfect prefetch at the best static k: a lower bound on TPOT",
               CacheConfig(eviction="belady", pool="global"), PrefetchConfig(kind="perfect"),
               GovernorConfig(kind="static", k=0), k_sweep=True),
)}


def get_system(name: str) -> SystemSpec:
    if name not in SYSTEMS:
        raise UserError(f"unknown system {name!r}: use one of {', '.join(SYSTEMS)}")
    return SYSTEMS[name]


def parse_systems(text: str) -> list[str]:
    """'all' or a comma-separated list of names, validated, in the order given."""
    if text.strip() == "all":
        return list(SYSTEMS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError("--systems is empty: give names separated by commas, or 'all'")
    for name in names:
        get_system(name)
    return names
