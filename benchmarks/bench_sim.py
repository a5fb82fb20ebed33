"""Simulator speed: simulated tokens per wall second on one core, and the wall time of a policy search.

Part 1 pins the process to one CPU and simulates each system on the bundled demo trace (Phi-3.5-MoE
geometry, a100-40g-pcie4, 36GiB) and on a synthetic 500-token Phi-3.5-MoE trace; tokens per second count
decoded tokens (the prefills are simulated too, and included in the wall time). Part 2 times
`moespeq search` of `--search-evals` configurations on the 500-token trace with `--jobs` processes.
Issue 3's goals: >= 2,000 tokens/s for speq; 200 configurations x 500 tokens in under 2 minutes on 2 cores.
Prints a table and writes JSON with the command, machine and versions.

Usage:
    python benchmarks/bench_sim.py [--systems speq,lru-sm] [--repeats 3] [--search-evals 200] [--jobs 2]
                                   [--out benchmarks/results/bench_sim.json]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # one core means one BLAS thread too
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
import simpy  # noqa: E402

import moespeq  # noqa: E402
from moespeq.commands.output import print_table  # noqa: E402
from moespeq.hardware import get_hardware  # noqa: E402
from moespeq.sim.run import SimConfig, simulate  # noqa: E402
from moespeq.sim.search import SearchConfig, search  # noqa: E402
from moespeq.spec import get_model  # noqa: E402
from moespeq.trace import demo_trace_path, read_trace, write_trace  # noqa: E402
from moespeq.traces.synth import SynthConfig, synthesize  # noqa: E402

HARDWARE, BUDGET = "a100-40g-pcie4", 36 * 2**30


def machine() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip()
    return {"platform": platform.platform(), "cpu": model, "cpus": os.cpu_count(), "git_commit": commit}


def speed(trace, system: str, repeats: int) -> dict:
    """Median wall seconds of `repeats` simulations (after one warm-up) and decoded tokens per second."""
    cfg = SimConfig(system=system, budget_bytes=BUDGET, hardware=get_hardware(HARDWARE))
    result = simulate(trace, cfg)
    walls = []
    for _ in range(repeats):
        start = time.perf_counter()
        simulate(trace, cfg)
        walls.append(time.perf_counter() - start)
    wall = statistics.median(walls)
    return {"system": system, "tokens": result.metrics["tokens"], "wall_s": wall,
            "tokens_per_wall_s": result.metrics["tokens"] / wall, "tpot_ms": result.metrics["tpot_ms"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--systems", default="speq", help="systems to time on one core")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--search-evals", type=int, default=200, help="0 skips the search timing")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_sim.json"))
    args = parser.parse_args()

    all_cpus = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(all_cpus)})
    traces = {"demo": read_trace(demo_trace_path()),
              "synthetic-500": synthesize(SynthConfig(model=get_model("phi-3.5-moe"), seqs=1, tokens=500, seed=0))}
    rows = [{"trace": name, **speed(trace, system, args.repeats)}
            for name, trace in traces.items() for system in args.systems.split(",")]
    os.sched_setaffinity(0, all_cpus)
    print_table(("trace", "system", "tokens", "wall s", "tokens/s", "TPOT ms"),
                [(r["trace"], r["system"], r["tokens"], r["wall_s"], r["tokens_per_wall_s"], r["tpot_ms"]) for r in rows])

    search_result = None
    if args.search_evals:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "synthetic-500.parquet"
            write_trace(traces["synthetic-500"], path)
            cfg = SearchConfig(trace_path=str(path), hardware=HARDWARE, budget_bytes=BUDGET, evals=args.search_evals,
                               jobs=args.jobs)
            start = time.perf_counter()
            found = search(cfg)
            wall = time.perf_counter() - start
        search_result = {"evals": len(found.evaluations), "tokens_per_eval": traces["synthetic-500"].n_tokens - 1,
                         "jobs": args.jobs, "wall_s": wall, "best_tpot_ms": found.best_eval.tpot_ms}
        sys.stdout.write(f"\nsearch: {search_result['evals']} configurations x {search_result['tokens_per_eval']} "
                         f"tokens, {args.jobs} processes: {wall:.1f} s (best TPOT {found.best_eval.tpot_ms:.1f} ms)\n")

    report = {"command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), "machine": machine(),
              "versions": {"moespeq": moespeq.__version__, "python": platform.python_version(),
                           "numpy": np.__version__, "scipy": scipy.__version__, "simpy": simpy.__version__},
              "hardware": HARDWARE, "budget_bytes": BUDGET, "speed": rows, "search": search_result}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    sys.stdout.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
