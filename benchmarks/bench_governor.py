"""Governor quality: speq's TPOT against the best and the worst fixed draft length, over a set of scenarios.

A governor cannot know the best static k in advance; its regret is speq's TPOT over the best speq-static
TPOT of the same trace, machine and budget (1.00 = as good as the best k chosen with hindsight). Each
scenario is a synthetic trace (routing locality, acceptance) of one model on one hardware profile at one
budget, chosen so that the best k ranges from 0 (speculation does not pay) to long drafts. Prints a table
and writes JSON with the command, machine and versions.

Usage:
    python benchmarks/bench_governor.py [--seqs 4] [--tokens 256] [--jobs 2]
                                        [--out benchmarks/results/bench_governor.json]
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from moespeq.commands.output import print_table
from moespeq.hardware import get_hardware
from moespeq.provenance import provenance
from moespeq.sim.run import SimConfig, simulate
from moespeq.sim.systems import get_system
from moespeq.spec import get_model
from moespeq.traces.synth import SynthConfig, synthesize
from moespeq.units import parse_bytes

# (name, model, synth knobs, hardware, budget)
SCENARIOS: list[tuple[str, str, dict, str, str]] = [
    ("phi-default-a100", "phi-3.5-moe", {}, "a100-40g-pcie4", "36GiB"),
    ("phi-local-a100", "phi-3.5-moe", {"locality": 0.6}, "a100-40g-pcie4", "36GiB"),
    ("phi-very-local-a100", "phi-3.5-moe", {"locality": 0.85}, "a100-40g-pcie4", "36GiB"),
    ("phi-low-accept-a100", "phi-3.5-moe", {"acceptance": 0.4}, "a100-40g-pcie4", "36GiB"),
    ("phi-default-h200", "phi-3.5-moe", {}, "h200-pcie5", "64GiB"),
    ("phi-all-resident-h200", "phi-3.5-moe", {}, "h200-pcie5", "110GiB"),
    ("mixtral-default-a100", "mixtral-8x7b", {}, "a100-40g-pcie4", "36GiB"),
    ("qwen-default-h200", "qwen1.5-moe-a2.7b", {"locality": 0.3}, "h200-pcie5", "24GiB"),
    ("qwen-default-a100", "qwen1.5-moe-a2.7b", {"locality": 0.3}, "a100-40g-pcie4", "16GiB"),
    ("deepseek-local-a100", "deepseek-v2-lite", {"locality": 0.5, "acceptance": 0.95}, "a100-40g-pcie4", "16GiB"),
    ("deepseek-local-h200", "deepseek-v2-lite", {"locality": 0.5, "acceptance": 0.95}, "h200-pcie5", "40GiB"),
    ("deepseek-low-accept-h200", "deepseek-v2-lite", {"locality": 0.5, "acceptance": 0.5}, "h200-pcie5", "40GiB"),
]


def run_scenario(args: tuple[tuple[str, str, dict, str, str], int, int]) -> dict:
    (name, model, knobs, hardware, budget), seqs, tokens = args
    trace = synthesize(SynthConfig(model=get_model(model), seqs=seqs, tokens=tokens, seed=1, **knobs))
    hw, budget_bytes = get_hardware(hardware), parse_bytes(budget)
    static_policy = get_system("speq-static").policy(model)
    static = {}
    for k in range(trace.meta.k_max + 1):
        policy = static_policy.replace(governor={"kind": "static", "k": k})
        static[k] = simulate(trace, SimConfig("speq-static", budget_bytes, hw, policy=policy)).metrics["tpot_ms"]
    speq = simulate(trace, SimConfig("speq", budget_bytes, hw)).metrics
    best_k = min(static, key=lambda k: static[k])
    return {"scenario": name, "model": model, "knobs": knobs, "hardware": hardware, "budget": budget,
            "static_tpot_ms": static, "best_static_k": best_k, "speq_tpot_ms": speq["tpot_ms"],
            "speq_mean_k": speq["mean_k"], "regret": speq["tpot_ms"] / static[best_k],
            "vs_worst": speq["tpot_ms"] / max(static.values())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seqs", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/bench_governor.json")
    args = ap.parse_args(argv)
    work = [(s, args.seqs, args.tokens) for s in SCENARIOS]
    with ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(run_scenario, work))
    print_table(["scenario", "best k", "best static ms", "k=0 ms", "speq ms", "mean k", "speq/best"],
                [[r["scenario"], r["best_static_k"], round(r["static_tpot_ms"][r["best_static_k"]], 2),
                  round(r["static_tpot_ms"][0], 2), round(r["speq_tpot_ms"], 2), round(r["speq_mean_k"], 2),
                  round(r["regret"], 3)] for r in rows])
    geo = math.exp(sum(math.log(r["regret"]) for r in rows) / len(rows))
    worst = max(r["regret"] for r in rows)
    sys.stdout.write(f"speq / best static k: geometric mean {geo:.3f}, worst {worst:.3f}\n")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    out = {"provenance": provenance(["python", *sys.argv]), "git_commit": commit, "seqs": args.seqs, "tokens": args.tokens,
           "geomean_regret": geo, "worst_regret": worst, "scenarios": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
