"""Run statistics and the metrics `moespeq simulate` reports (DESIGN §7).

  tpot_ms              decode time / decoded tokens (every sequence's tokens after the prefill's first)
  ttft_ms              mean prefill time (the prefill produces the first token)
  tokens_per_s         1000 / tpot_ms
  accepted_per_cycle   mean accepted draft tokens per cycle (the target's own token excluded, as the
                       paper's k_accept); tokens per cycle = accepted_per_cycle + 1
  mean_k               mean draft length
  hit_rate             per-step cache coverage (paper Table 3): of the (layer, expert) pairs each decoding
                       step needs, the fraction resident when its layer asks
  prefetch_precision   prefetched experts used before eviction / prefetched experts
  prefetch_recall      prefetched experts used / (those + demand loads): the share of loads anticipated
  prefetch_timely      prefetched experts landed before their use / those used
  pcie_gb, pcie_util   H2D gigabytes (1e9) during decoding and the link's busy fraction of decode time
  stall_ms_per_token   compute stream idle waiting for experts, per token
  draft_ms_per_token, verify_ms_per_token   compute time per token (tpot = draft + verify + stall)
  new_experts_per_cycle  experts a cycle needed that were not cached at its start (the roofline's N_new)

Usage:
    stats = RunStats(); ...; summary(stats, layout.to_dict())
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

TOKEN_COLUMNS = ("seq", "token", "cycle", "k", "accepted", "t_emit_s")


@dataclass
class RunStats:
    ttft_s: list[float] = field(default_factory=list)
    decode_s: float = 0.0
    tokens: int = 0
    cycles: int = 0
    k_sum: int = 0
    accepted_sum: int = 0
    draft_s: float = 0.0
    verify_s: float = 0.0
    stall_s: float = 0.0
    h2d_bytes: int = 0
    h2d_busy_s: float = 0.0
    cache: dict[str, int] = field(default_factory=dict)  # decode-time deltas of CacheCounters
    token_rows: list[tuple[int, int, int, int, int, float]] = field(default_factory=list)
    cycle_k: list[int] = field(default_factory=list)
    new_first: int = 0  # experts the first verified token needed that were not resident at cycle start
    new_all: int = 0  # ... that any verified token needed (the roofline's N_new)

    def add_cache(self, before: dict[str, int], after: dict[str, int]) -> None:
        for key, value in after.items():
            self.cache[key] = self.cache.get(key, 0) + value - before.get(key, 0)


def _ratio(num: float, den: float) -> float:
    return num / den if den else 0.0


def summary(stats: RunStats, memory: dict[str, Any]) -> dict[str, Any]:
    """The per-system metrics dict of `moespeq simulate --json`."""
    c, tok = stats.cache, max(stats.tokens, 1)
    useful, prefetched = c.get("prefetch_useful", 0), c.get("loads_prefetch", 0)
    tpot_s = stats.decode_s / tok
    return {
        "tpot_ms": tpot_s * 1e3,
        "ttft_ms": 1e3 * sum(stats.ttft_s) / max(len(stats.ttft_s), 1),
        "tokens_per_s": _ratio(1.0, tpot_s),
        "accepted_per_cycle": _ratio(stats.accepted_sum, stats.cycles),
        "mean_k": _ratio(stats.k_sum, stats.cycles),
        "hit_rate": _ratio(c.get("hits", 0), c.get("needed", 0)),
        "prefetch_precision": _ratio(useful, prefetched),
        "prefetch_recall": _ratio(useful, useful + c.get("loads_demand", 0)),
        "prefetch_timely": _ratio(c.get("prefetch_timely", 0), useful),
        "pcie_gb": stats.h2d_bytes / 1e9,
        "pcie_util": _ratio(stats.h2d_busy_s, stats.decode_s),
        "stall_ms_per_token": stats.stall_s * 1e3 / tok,
        "draft_ms_per_token": stats.draft_s * 1e3 / tok,
        "verify_ms_per_token": stats.verify_s * 1e3 / tok,
        "new_experts_per_cycle": _ratio(stats.new_all, stats.cycles),
        "tokens": stats.tokens,
        "cycles": stats.cycles,
        "memory": memory,
    }
