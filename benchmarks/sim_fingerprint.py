"""A fingerprint of simulator results over many setups, to show that a change meant to be faster changes no
result: run it before and after and compare the printed hash.

Setups: the demo trace at 30 and 36 GiB, and synthetic DeepSeek-V2-Lite (locality 0.6; 12 and 20 GiB) and
Mixtral-8x7B (0.3; 30 and 50 GiB) traces of 120 tokens, each with every system on a100-40g-pcie4 and
h200-pcie5 (108 runs, ~40 s). Per run it keeps the metrics, cache counters, draft lengths and bytes moved
(or the error a system raises at a budget it does not fit).

Usage:
    python benchmarks/sim_fingerprint.py [--out results.json]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

from moespeq.errors import UserError
from moespeq.hardware import get_hardware
from moespeq.sim.run import SimConfig, simulate
from moespeq.sim.systems import SYSTEMS
from moespeq.spec import get_model
from moespeq.trace import demo_trace_path, read_trace
from moespeq.traces.synth import SynthConfig, synthesize

GIB = 2**30
HARDWARE = ("a100-40g-pcie4", "h200-pcie5")


def setups():
    traces = {"demo": (read_trace(demo_trace_path()), (30, 36))}
    for name, model, locality, budgets in (("deepseek", "deepseek-v2-lite", 0.6, (12, 20)),
                                           ("mixtral", "mixtral-8x7b", 0.3, (30, 50))):
        trace = synthesize(SynthConfig(model=get_model(model), seqs=1, prompt_len=16, tokens=120, locality=locality,
                                       seed=3))
        traces[name] = (trace, budgets)
    for name, (trace, budgets) in traces.items():
        for budget in budgets:
            for system in SYSTEMS:
                for hw in HARDWARE:
                    yield f"{name}/{budget}GiB/{system}/{hw}", trace, system, budget, hw


def fingerprint() -> dict:
    out = {}
    for key, trace, system, budget, hw in setups():
        try:
            r = simulate(trace, SimConfig(system=system, budget_bytes=budget * GIB, hardware=get_hardware(hw)))
        except UserError as exc:
            out[key] = str(exc)
            continue
        out[key] = [r.metrics, r.counters, r.stats.cycle_k, r.h2d_bytes]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="also write every run's results as JSON")
    args = ap.parse_args()
    results = fingerprint()
    text = json.dumps(results, sort_keys=True, default=float)
    if args.out:
        args.out.write_text(text + "\n")
    sys.stdout.write(f"{len(results)} runs, md5 {hashlib.md5(text.encode()).hexdigest()}\n")


if __name__ == "__main__":
    main()
