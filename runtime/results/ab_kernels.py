"""A/B timing of the MoE kernels of two source trees through the runtime's own launch path, side by side in one call:
for a change meant to leave speed alone (a refactor that moves ptxas's scheduling, say), every model's INT4 layer at
T = 1, 2, 4, 8, 16 and bf16 verify layer at T = 1, 4, 16, each at the tuned launch parameters of
runtime/configs/<device>.json, with the kernels built from BASE (a folder holding int4_moe.cu, expert_bf16.cu and
moe_common.cuh: a commit's files shipped beside the checkout) and from this checkout. Correctness is the gpu tests'
job (run them on the checkout first); this only times. Rounds alternate A and B over every cell, ROUNDS rounds of
ITERS calls on runtime/kernel_bench.py's rotated weight copies and routings.

Run 22e (ab_kernels_run22e_h200.json): BASE = commit 4d22507's kernels, the checkout commit be2425b's (the ring's and
the register path's phase-2 partial store and count taken into one pair of functions of moe_common.cuh,
store_partial and count_partial, which compiles to the same instruction counts with other scheduling: nvcc 13.0,
cuobjdump).

Usage (repository root, after `pip install -e .`):
    python3 runtime/results/ab_kernels.py [BASE]     # default .k22base/ab; $OUT/ab_kernels.json, prints the table
    python3 runtime/results/ab_kernels.py --table runtime/results/ab_kernels_run22e_h200.json
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bulk_ring  # noqa: E402 - the results scripts' harness

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
INT4_TOKENS, BF16_TOKENS = (1, 2, 4, 8, 16), (1, 4, 16)
ROUNDS, ITERS = 5, 100


def modules(base: Path) -> dict:
    """{"A": {source name: RawModule} built from base, "B": from this checkout}, with the runtime's options."""
    import cupy

    from moespeq.runtime.kernel_source import COMMON_HEADER, KERNEL_DIR, kernel_source
    from moespeq.runtime.moe_kernels import _OPTIONS

    def text_a(name: str) -> str:
        return (base / f"{name}.cu").read_text().replace(f'#include "{COMMON_HEADER}"', (base / COMMON_HEADER).read_text())

    assert (KERNEL_DIR / COMMON_HEADER).is_file()
    names = ("int4_moe", "expert_bf16")
    return {"A": {n: cupy.RawModule(code=text_a(n), options=_OPTIONS[n]) for n in names},
            "B": {n: cupy.RawModule(code=kernel_source(n), options=_OPTIONS[n]) for n in names}}


def use(mods: dict) -> None:
    """Make the runtime's launch functions take their kernels from mods (its kernel caches emptied)."""
    from moespeq.runtime import moe_kernels as mk

    mk._module = lambda name: mods[name]
    mk.get_kernel.cache_clear()
    mk._ring_kernel.cache_clear()
    mk.occupancy.cache_clear()


def measure(name: str, mods: dict) -> list[dict]:
    import cupy

    from moespeq.runtime.kernel_bench import LayerBench
    from moespeq.runtime.launch_config import launch_config
    from moespeq.runtime.moe_kernels import device_info
    from moespeq.runtime.timing import median_time_s
    from moespeq.spec import get_model

    lb, dev = LayerBench.build(get_model(name)), device_info().name
    cells = [("moe_int4", t) for t in INT4_TOKENS] + [("moe_bf16", t) for t in BF16_TOKENS]
    times = {cell: {"A": [], "B": []} for cell in cells}
    for _ in range(ROUNDS):
        for side in ("A", "B"):
            use(mods[side])
            for kernel, t in cells:
                cfg = launch_config(kernel, dev, lb.geo, t)
                call = lb.int4_call(t, cfg) if kernel == "moe_int4" else lb.bf16_call(t, cfg)
                times[(kernel, t)][side].append(median_time_s(call, iters=ITERS) * 1e6)
    rows = []
    for (kernel, t), ab in times.items():
        med = {side: statistics.median(v) for side, v in ab.items()}
        rows.append({"model": name, "kernel": kernel, "tokens": t, "config": launch_config(kernel, dev, lb.geo, t).to_dict(),
                     "us": ab, "median_us": med})
        sys.stdout.write(f"{name} {kernel} T={t}: A {med['A']:.1f} B {med['B']:.1f} ({100 * (med['B'] / med['A'] - 1):+.1f} %)\n")
    sys.stdout.flush()
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows


def table(path: str) -> str:
    d = json.loads(Path(path).read_text())
    out = "| model | kernel | T | A µs | B µs | B / A - 1 | A rounds spread | B rounds spread |\n|---|---|---|---|---|---|---|---|\n"
    for r in d["rows"]:
        m, us = r["median_us"], r["us"]
        spread = {s: 100 * (max(us[s]) / min(us[s]) - 1) for s in ("A", "B")}
        out += (f"| {r['model']} | {r['kernel']} | {r['tokens']} | {m['A']:.1f} | {m['B']:.1f} | "
                f"{100 * (m['B'] / m['A'] - 1):+.1f} % | {spread['A']:.1f} % | {spread['B']:.1f} % |\n")
    return out


def main() -> None:
    if bulk_ring.table_asked(table):
        return
    import cupy

    base = Path(sys.argv[1] if len(sys.argv) > 1 else ".k22base/ab")
    OUT.mkdir(parents=True, exist_ok=True)
    mods = modules(base)
    result = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "base": str(base), "rounds": ROUNDS,
              "iters": ITERS, "rows": []}
    bulk_ring.collect_rows(result, MODELS, lambda name: measure(name, mods), OUT / "ab_kernels.json", table)


if __name__ == "__main__":
    main()
