"""The Amortization Roofline operating points of a trace on a machine (`moespeq roofline`, paper Fig. 8).

For every draft length k = 0..k_max the trace is simulated with speq-static at that k; the run gives the
new experts per cycle (N_new: needed, not cached at the cycle's start, for the first verified token and
for all k + 1), and the trace gives the per-position acceptance. The model (moespeq.policy.roofline) then
places each k: I_amort, Theta(k), the compute roof of k and the I/O roof. The simulated throughput is
reported beside the model's, so the figure shows how far the additive T_cycle model is from the machine.

Usage:
    rows = roofline_points(trace, hardware, budget_bytes=36 * 2**30)
"""

from __future__ import annotations

from typing import Any

import numpy as np

from moespeq.hardware import HardwareProfile
from moespeq.policy.roofline import operating_point
from moespeq.trace import LookaheadTrace
from moespeq.trace_stats import acceptance_by_position

from .costs import CostModel
from .run import SimConfig, simulate, with_lookahead
from .systems import get_system


def roofline_points(trace: LookaheadTrace, hardware: HardwareProfile, budget_bytes: int, seed: int = 0) -> list[dict[str, Any]]:
    """One row per k = 0..k_max: the model's operating point plus the simulated tokens/s at that k."""
    trace = with_lookahead(trace, seed)
    spec = trace.meta.model
    accept = acceptance_by_position(trace)  # [J]
    context = int(np.mean([s.n_prompt + s.n_tokens / 2 for s in trace.sequences]))
    perf = CostModel(spec, hardware).perf_model(context, trace.meta.k_max, hardware.h2d_time_s(spec.expert_bytes_bf16))
    rows = []
    for k in range(trace.meta.k_max + 1):
        policy = get_system("speq-static").policy(spec.name).replace(governor={"k": k})
        result = simulate(trace, SimConfig(system="speq-static", budget_bytes=budget_bytes, hardware=hardware,
                                           policy=policy, seed=seed))
        stats = result.stats
        new = [stats.new_first / stats.cycles] + [stats.new_all / stats.cycles] * k  # N_new(1), N_new(k + 1)
        rows.append({**operating_point(perf, k, accept, new), "simulated_tok_s": result.metrics["tokens_per_s"],
                     "simulated_accepted_per_cycle": result.metrics["accepted_per_cycle"]})
    return rows
