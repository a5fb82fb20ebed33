"""Launch-parameter search for the MoE kernels: time every candidate, keep the fastest (CuPy only).

Candidates: 4 or 8 warps per block with 1, 2, 4 or (8 warps) 8 of them per row tile, the most blocks per SM that fit
and one fewer, 1, 2 or 4 splits of F in the down projection (at least one 128-wide group per split); for the INT4
kernel at T <= 8 also its bulk-copy ring (RING_CANDIDATES, where at least 2 stages fit). The result goes
to runtime/configs/<device>.json through launch_config.write_configs.

Usage:
    best = tune(layer_bench, "moe_int4", tokens=(1, 4, 8))   # {tokens: (LaunchConfig, seconds)}
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from moespeq.runtime.kernel_bench import LayerBench
from moespeq.runtime.launch_config import LaunchConfig
from moespeq.runtime.layout import ExpertGeometry
from moespeq.runtime.moe_kernels import get_kernel, occupancy, ring_stages
from moespeq.runtime.timing import median_time_s

log = logging.getLogger(__name__)

_FUNCTIONS = {"moe_int4": ("int4_moe", "moe_int4_t8", "moe_int4_t16"),
              "moe_bf16": ("expert_bf16", "moe_bf16_t8", "moe_bf16_t16")}


# (consumer warps, blocks per SM, chunks per stage, most stages or 0: as many as fit, splits of F in the down
# projection) of the ring: run 19's best shapes at T = 1-2, 3 blocks per SM (run 20: mixtral T = 1), 2 blocks of
# 16-chunk stages at depth 3 and 2 (run 22b: 4 stages, where they fit, made mixtral T = 1 6 % slower than 3 and phi
# 1 % faster), and that at 2 splits (run 22f: mixtral T = 1 -3.9 %, 5-32 % slower elsewhere)
RING_CANDIDATES = ((4, 2, 16, 0, 1), (4, 2, 16, 3, 1), (4, 2, 16, 2, 1), (4, 2, 16, 3, 2), (8, 2, 16, 0, 1),
                   (4, 2, 8, 0, 1), (8, 1, 32, 0, 1), (4, 3, 16, 0, 1), (4, 3, 8, 0, 1))


def candidates(kernel: str, tokens: int, geo: ExpertGeometry, max_splits: int) -> list[LaunchConfig]:
    source, small, large = _FUNCTIONS[kernel]
    fn = get_kernel(source, small if tokens <= 8 else large)
    splits = [j for j in (1, 2, 4) if j <= min(max_splits, geo.moe_ffn // 128)]
    out = []
    for warps in (4, 8):
        most = min(4, occupancy(fn, warps))
        out += [LaunchConfig(warps, blocks, j, ks) for ks in (1, 2, 4, 8) if ks <= warps
                for blocks in sorted({max(1, most - 1), most}) for j in splits]
    if kernel == "moe_int4":
        ring = (LaunchConfig(w, b, j, 1, chunks, depth) for w, b, chunks, depth, j in RING_CANDIDATES if j in splits)
        out += [cfg for cfg in ring if ring_stages(cfg, tokens, geo)]
    return out


def time_candidates(lb: LayerBench, kernel: str, tokens: Sequence[int],
                    iters: int = 20) -> dict[int, list[tuple[LaunchConfig, float]]]:
    """Every candidate's median seconds per token count for one model's shapes."""
    call = lb.int4_call if kernel == "moe_int4" else lb.bf16_call
    return {t: [(cfg, median_time_s(call(t, cfg), iters=iters, warmup=3))
                for cfg in candidates(kernel, t, lb.geo, lb.workspace.max_splits)] for t in tokens}


def fastest(timings: dict[int, list[tuple[LaunchConfig, float]]]) -> dict[int, tuple[LaunchConfig, float]]:
    return {t: min(timed, key=lambda pair: pair[1]) for t, timed in timings.items()}


def tune(lb: LayerBench, kernel: str, tokens: Sequence[int], iters: int = 20) -> dict[int, tuple[LaunchConfig, float]]:
    """Fastest configuration per token count for one model's shapes."""
    best = fastest(time_candidates(lb, kernel, tokens, iters))
    for t, (cfg, seconds) in best.items():
        log.info("%s %s T=%d: best %s at %.1f us", kernel, lb.spec.name, t, cfg, seconds * 1e6)
    return best
