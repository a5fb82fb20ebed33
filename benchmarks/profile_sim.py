"""Where a simulation's wall time goes: inclusive time of the simulator's main parts, per run and per layer step.

Wraps each part in a timer (which adds ~0.1 µs per call, so the parts sum to a little more than an unwrapped run)
and simulates one system on the bundled demo trace (a100-40g-pcie4, 36 GiB) after one warm-up run. Parts nest:
a quiet pass contains its cache calls. Event passes (SimPy generators) are not timed as a part. Prints a table;
the wall time of the same run without timers comes first.

Usage:
    python benchmarks/profile_sim.py [--system speq]
"""

from __future__ import annotations

import argparse
import functools
import sys
import time
from collections import Counter

from moespeq.commands.output import print_table
from moespeq.hardware import get_hardware
from moespeq.policy.cache import ExpertCache
from moespeq.policy.governor import RooflineGovernor
from moespeq.sim.cycle import Decoder
from moespeq.sim.machine import Machine
from moespeq.sim.run import SimConfig, simulate
from moespeq.trace import demo_trace_path, read_trace

PARTS = [  # (owner, method, what it is)
    (Decoder, "_quiet_pass", "quiet passes (all of their layers)"),
    (Decoder, "_layer_plans", "layer plans of each pass"),
    (RooflineGovernor, "choose", "governor: choose k"),
    (RooflineGovernor, "observe", "governor: observe a cycle"),
    (ExpertCache, "access", "cache: access (counts, eviction statistics)"),
    (ExpertCache, "hold", "cache: hold"),
    (ExpertCache, "absent", "cache: absent"),
    (ExpertCache, "reserve_many", "cache: claim slots for a layer's misses"),
    (ExpertCache, "serve", "cache: access + hold + absent of a few experts"),
    (ExpertCache, "reserve_few", "cache: claim slots for a few misses"),
    (ExpertCache, "landed", "cache: landed"),
    (ExpertCache, "release", "cache: release"),
    (Decoder, "_fold_times", "fold a layer's experts over their landings"),
    (Machine, "copy_back_to_back", "account a layer's demand copies"),
]


def timed(method, name: str, totals: Counter, calls: Counter):
    @functools.wraps(method)
    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            totals[name] += time.perf_counter() - start
            calls[name] += 1
    return wrapper


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", default="speq")
    args = ap.parse_args()
    trace = read_trace(demo_trace_path())
    cfg = SimConfig(system=args.system, budget_bytes=36 * 2**30, hardware=get_hardware("a100-40g-pcie4"))
    simulate(trace, cfg)
    start = time.perf_counter()
    result = simulate(trace, cfg)
    plain_s = time.perf_counter() - start
    totals: Counter = Counter()
    calls: Counter = Counter()
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in PARTS]
    for owner, name, method in originals:
        setattr(owner, name, timed(method, name, totals, calls))
    try:
        start = time.perf_counter()
        simulate(trace, cfg)
        wrapped_s = time.perf_counter() - start
    finally:
        for owner, name, method in originals:
            setattr(owner, name, method)
    steps = trace.meta.model.moe_layers * (len(result.stats.cycle_k) + len(trace.sequences))
    sys.stdout.write(f"{args.system} on the demo: {result.stats.tokens} tokens, {steps} layer steps; "
                     f"{plain_s * 1e3:.0f} ms without timers, {wrapped_s * 1e3:.0f} ms with\n")
    rows = [(name, what, calls[name], f"{totals[name] * 1e3:.1f}", f"{totals[name] / steps * 1e6:.2f}")
            for (_, name, what) in PARTS if calls[name]]
    print_table(("part", "what", "calls", "ms", "µs per layer step"), rows)


if __name__ == "__main__":
    main()
