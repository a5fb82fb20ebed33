"""Run 20's measurement (runtime/results/ring_teams_run20_h200.json): the INT4 kernel's bulk-copy ring as on main
(commit 77f8b48) against this checkout's ring, side by side in one H200 call, on the four benchmark models at T = 1
and 2 (where the ring serves; at T >= 4 the tuner keeps the register path, whose code is unchanged).

This checkout's ring differs in two ways:
- teams: a block of 8 consumer warps forms two teams of 4 that take an item's stages in turn (the producer marks
  each stage's team), so each warp consumes its stages with the groups per stage of a 4-warp block while twice as
  many consumer warps issue per SM (run 19: 8 warps per block that split every stage thinner lost to 4);
- bias: phase 1's accumulators start at -136 * (the group's sum of x) instead of subtracting it after the mma
  (8 FFMA fewer per group pair).
Variants are KERNEL/SHAPE: KERNEL main (the ring source of --baseline DIR, normally the device checkout's
runtime/kernels, i.e. main) or k20 (this checkout), SHAPE as bulk_ring.RING ("wNbMcK": N consumer warps, M blocks
per SM, stages of K chunks). "register" is the register path at the tuner's fastest register candidate
(tune_timings_h200.json of run 19), "tuned" launch_moe_int4 at runtime/configs/NVIDIA_H200.json's parameters (run
19's tuning: the ring w4b2c16 at T = 1 for phi, mixtral, qwen1.5), both with this checkout's kernel.
Every variant is first checked on three routings against the reference (rel err <= 1e-2, every output written,
counters re-armed, a rerun bit-identical), again after the timing on one routing; a bad id is flagged by every k20
variant. Times alternate variant by variant over ROUNDS rounds of ITERS calls on rotated weight copies and routings
(each call another routing and another copy).

Usage (repository root, after `pip install -e .`):
    python3 runtime/results/ring_teams.py --baseline ../runtime/kernels   # $OUT/ring_teams.json, prints the table
    python3 runtime/results/ring_teams.py --table runtime/results/ring_teams_run20_h200.json
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bulk_ring  # noqa: E402 - run 19's ring harness
from dequant_views import build, committed_config  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2)
ROUNDS, ITERS = 7, 100
VARIANTS = ("main/w4b2c16", "main/w8b2c16", "k20/w4b2c16", "k20/w8b2c16", "k20/w8b1c32", "k20/w8b2c8")


def compile_ring(kernel_dir: Path):
    import cupy

    from moespeq.runtime.kernel_source import COMMON_HEADER
    from moespeq.runtime.moe_kernels import _OPTIONS

    text = (kernel_dir / "int4_moe.cu").read_text().replace(f'#include "{COMMON_HEADER}"',
                                                            (kernel_dir / COMMON_HEADER).read_text())
    fn = cupy.RawModule(code=text, options=_OPTIONS["int4_moe"]).get_function("moe_int4_ring_t8")
    fn.max_dynamic_shared_size_bytes = bulk_ring.SMEM_PER_BLOCK - fn.shared_size_bytes
    return fn


def register_config(name: str, tokens: int):
    from moespeq.runtime.launch_config import LaunchConfig

    cands = json.loads((Path(__file__).parent / "tune_timings_h200.json").read_text())["timings"][name]["moe_int4"]
    best = min((c for c in cands[str(tokens)] if not c.get("ring_chunks")), key=lambda c: c["us"])
    return LaunchConfig(**{k: v for k, v in best.items() if k != "us"})


def register_call(lb, tokens: int, cfg, out):
    from moespeq.runtime.moe_kernels import launch_moe_int4

    def launch(i, y):
        r = lb.routing(tokens)[i % len(lb.routing(tokens))]
        launch_moe_int4(lb.xs[tokens][i % len(lb.xs[tokens])], r.ids, r.w, lb.int4_layers[i % len(lb.int4_layers)],
                        lb.workspace, y, cfg)
    return launch, lambda i: launch(i, out)


def ring_launch(lb, fn, tokens: int, shape: str):
    """launch(i, y): routing / x / weight copy i into y through ring kernel fn at shape."""
    def launch(i, y):
        bulk_ring.ring_call(lb, fn, tokens, shape, y)(i)
    return launch


def check_launch(lb, launch, tokens: int, what: str, refs: list, routings: int = 3) -> dict:
    import cupy

    errs, ok = [], True
    for i in range(routings):
        ys = []
        for _ in range(2):
            y = cupy.full((tokens, lb.geo.hidden), 0xFFFF, dtype=cupy.uint16)
            launch(i, y)
            bulk_ring.finished_or_exit(f"{lb.spec.name} T={tokens} {what}")
            ys.append(y)
        errs.append(bulk_ring.rel_err(ys[0], refs[i]))
        written = not bool((ys[0] == 0xFFFF).any())  # SYNC: checks before timing
        same = bool((ys[0] == ys[1]).all())
        rearmed = not bool(lb.workspace.counters.any())
        ok = ok and written and same and rearmed and errs[-1] <= 1e-2
    return {"rel_err": errs, "passed": ok}


def measure(name: str, fns: dict) -> tuple[list[dict], dict]:
    import cupy

    lb, rows = build(name), []
    for t in TOKENS:
        refs = bulk_ring.references(lb, t)
        out = cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16)
        launches, calls, configs = {}, {}, {"register": register_config(name, t), "tuned": committed_config(lb.geo, t)}
        for v, cfg in configs.items():
            launches[v], calls[v] = register_call(lb, t, cfg, out)
        for v in VARIANTS:
            kernel, shape = v.split("/")
            if bulk_ring.ring_stages(fns[kernel], shape, t, lb.geo.hidden):
                launches[v] = ring_launch(lb, fns[kernel], t, shape)
                calls[v] = bulk_ring.ring_call(lb, fns[kernel], t, shape, out)
        checks = {v: check_launch(lb, launch, t, v, refs) for v, launch in launches.items()}
        times = bulk_ring.alternate(calls)
        after = {v: check_launch(lb, launch, t, v, refs, routings=1) for v, launch in launches.items()}
        med = {v: statistics.median(ts) for v, ts in times.items()}
        rows.append({"model": name, "tokens": t, "configs": {v: c.to_dict() for v, c in configs.items()},
                     "ring_stages": {v: bulk_ring.ring_stages(fns[v.split("/")[0]], v.split("/")[1], t, lb.geo.hidden)
                                     for v in calls if "/" in v},
                     "checks": checks, "checks_after_timing": after, "us": times, "median_us": med})
        sys.stdout.write(f"{name} T={t}: " + " ".join(
            f"{v} {us:.1f}{'' if checks[v]['passed'] and after[v]['passed'] else ' FAILED'}" for v, us in med.items())
            + "\n")
        sys.stdout.flush()
    bad = {v: bulk_ring.bad_id_flagged(lb, fns["k20"], v.split("/")[1]) for v in VARIANTS
           if v.startswith("k20/") and bulk_ring.ring_stages(fns["k20"], v.split("/")[1], 2, lb.geo.hidden)}
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows, bad


def table(path: str) -> str:
    """Markdown: µs per variant (% against main/w4b2c16, run 19's ring), then the fastest k20 ring against run 19's
    3x thresholds (bench_kernels_h200.json's cupy.matmul / 3)."""
    d = json.loads(Path(path).read_text())
    bench = json.loads((Path(__file__).parent / "bench_kernels_h200.json").read_text())
    mm = {(b["model"], b["tokens"]): b["cupy.matmul_us"] for b in bench["rows"]}
    names = list(dict.fromkeys(v for r in d["rows"] for v in r["median_us"]))
    out = ("| model | T | " + " | ".join(names) + " | fastest k20 | 3x needs <= |\n" + "|---" * (len(names) + 4)
           + "|\n")
    for r in d["rows"]:
        med, base = r["median_us"], r["median_us"].get("main/w4b2c16")
        cells = [(f"{med[v]:.1f}" + (f" ({100 * (med[v] / base - 1):+.1f} %)" if base and v != "main/w4b2c16" else ""))
                 if v in med else "-" for v in names]
        k20 = {v: med[v] for v in med if v.startswith("k20/")}
        best = min(k20, key=k20.get) if k20 else None
        m = mm.get((r["model"], r["tokens"]))
        out += (f"| {r['model']} | {r['tokens']} | " + " | ".join(cells) + " | "
                + (f"{best} {k20[best]:.1f}" if best else "-") + " | " + (f"{m / 3:.1f}" if m else "-") + " |\n")
    return out


def main() -> None:
    if "--table" in sys.argv:
        sys.stdout.write(table(sys.argv[sys.argv.index("--table") + 1]))
        return
    import cupy

    OUT.mkdir(parents=True, exist_ok=True)
    base_dir = Path(sys.argv[sys.argv.index("--baseline") + 1])
    fns = {"main": compile_ring(base_dir), "k20": compile_ring(Path(__file__).parents[1] / "kernels")}
    result = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rounds": ROUNDS, "iters": ITERS,
              "baseline": str(base_dir), "registers": {k: fn.num_regs for k, fn in fns.items()},
              "static_shared_bytes": {k: fn.shared_size_bytes for k, fn in fns.items()},
              "rows": [], "bad_id_flagged": {}}
    sys.stdout.write(json.dumps({k: result[k] for k in ("registers", "static_shared_bytes")}) + "\n")
    for name in MODELS:
        rows, bad = measure(name, fns)
        result["rows"] += rows
        result["bad_id_flagged"][name] = bad
        (OUT / "ring_teams.json").write_text(json.dumps(result, indent=1) + "\n")  # kept if a later model fails
    result["all_checks_passed"] = all(c["passed"] for r in result["rows"] for k in ("checks", "checks_after_timing")
                                      for c in r[k].values()) and all(
        ok for bad in result["bad_id_flagged"].values() for ok in bad.values())
    (OUT / "ring_teams.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(table(str(OUT / "ring_teams.json")) + f"all checks passed: {result['all_checks_passed']}\n")


if __name__ == "__main__":
    main()
