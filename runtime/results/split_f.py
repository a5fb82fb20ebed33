"""Run 17's measurement (runtime/results/split_f_run17{a,b}_h200.json, two H200 calls): the INT4 kernel's split-F
path against the committed two-phase kernel, side by side in each call, on the four benchmark models at T = 1, 2,
4, 8 (16: the committed kernel alone, which the split-F path does not serve).

The split-F path (int4_moe.cu's moe_split_f, LaunchConfig.split_f, tune.split_f_candidates and its gpu tests) is
in commit 7da82d4 only; the next commit removed it, so run this script there (`git checkout 7da82d4`); --table works
anywhere.
committed  the two-phase kernel at the launch parameters of runtime/configs/NVIDIA_H200.json (run 13's tuning; the
           two calls read a copy of it, committed_configs_run17.json of 7da82d4, with the same contents).
split_f    the split-F path at every candidate of the tuner (runtime/tune.py: 4 or 8 warps, 64 or 128 F rows per
           item, the most blocks per SM that fit and one fewer); the best is reported beside the committed kernel.
variants   the best split-F candidate of each model and T compiled again with -D switches (int4_moe.cu of
           7da82d4), timed in further alternating rounds beside it and the committed kernel:
           red8 (-DMOE_SPLIT_F_RED_BATCH=8: 8 partials per lane in flight in the reduction instead of 16),
           idle_pf (-DMOE_SPLIT_F_IDLE_PF=1: blocks without an item prefetch the items' down slices into L2),
           depth_a3 (-DMOE_INT4_DEPTH1=3: 3 gate/up groups in flight per warp instead of 2) and nored
           (-DMOE_SPLIT_F_DIAG_NORED=1: no grid barrier and no reduction; y is not written, timing only).
           The first call (split_f_run17a_h200.json, the code of 89ff2ff) had depth8 (-DMOE_SPLIT_F_DEPTH=8: 8 down
           units in flight per warp instead of 4) in place of these, and a reduction of 8 partials in flight.
Every candidate is first checked on three routings against the reference (rel err <= 1e-2, every output written,
counters re-armed, a rerun bit-identical). Times alternate candidate by candidate over ROUNDS rounds of ITERS calls
on runtime/kernel_bench.py's rotated weight copies and routings (each call another routing and another copy).

Usage (repository root, after `pip install -e .`):
    python3 runtime/results/split_f.py            # writes $OUT/split_f.json, prints the table
    python3 runtime/results/split_f.py --profile  # Nsight Compute (time_budget.NCU_ARGS) on one launch of the
        # committed kernel and of the split-F path at PROFILED's parameters, phi-3.5-moe and mixtral-8x7b at T = 1:
        # $OUT/ncu_split_f.txt
    python3 runtime/results/split_f.py --table runtime/results/split_f_run17b_h200.json   # the README's table
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from dequant_views import build, call_of, committed_config  # noqa: E402 - run 13's INT4-only layer bench, launch
from small_t_levers import rel_err  # noqa: E402

from moespeq.runtime.launch_config import LaunchConfig  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2, 4, 8, 16)
ROUNDS, ITERS = 5, 100
VARIANTS = {"red8": ("-DMOE_SPLIT_F_RED_BATCH=8",), "idle_pf": ("-DMOE_SPLIT_F_IDLE_PF=1",),
            "depth_a3": ("-DMOE_INT4_DEPTH1=3",), "nored": ("-DMOE_SPLIT_F_DIAG_NORED=1",)}


def references(lb, tokens: int) -> list:
    """The reference output of the first three routings (each on its own weight copy)."""
    from moespeq.runtime.reference import moe_int4_reference

    sets = lb.routing(tokens)  # makes lb.xs[tokens] too
    return [moe_int4_reference(lb.xs[tokens][i], sets[i].ids, sets[i].w, lb.int4_layers[i % len(lb.int4_layers)])
            for i in range(3)]


def check(lb, tokens: int, cfg: LaunchConfig, refs: list) -> dict:
    """Three routings against the reference; written, re-armed, bit-identical rerun."""
    import cupy

    from moespeq.runtime.moe_kernels import launch_moe_int4

    errs, ok = [], True
    ws = lb.workspace
    for i, ref in enumerate(refs):
        r, x, layer = lb.routing(tokens)[i], lb.xs[tokens][i], lb.int4_layers[i % len(lb.int4_layers)]
        ys = []
        for _ in range(2):
            y = cupy.full((tokens, lb.geo.hidden), 0xFFFF, dtype=cupy.uint16)
            launch_moe_int4(x, r.ids, r.w, layer, ws, y, cfg)
            ys.append(y)
        errs.append(rel_err(ys[0], ref))
        written = not bool((ys[0] == 0xFFFF).any())  # SYNC: checks before timing
        same = bool((ys[0] == ys[1]).all())
        rearmed = not bool(ws.counters.any())
        ok = ok and written and same and rearmed and errs[-1] <= 1e-2
    return {"rel_err": errs, "passed": ok}


def candidates(tokens: int) -> dict[str, LaunchConfig]:
    from moespeq.runtime.tune import split_f_candidates

    return {f"w{c.warps}b{c.blocks_per_sm}f{c.split_f}": c for c in split_f_candidates(tokens)}


def alternate(calls: dict) -> dict[str, list[float]]:
    """µs per call of each, ROUNDS medians of ITERS calls, the calls alternating round by round (so that drift in
    clocks or temperature hits every variant alike)."""
    from moespeq.runtime.timing import median_time_s

    times: dict[str, list[float]] = {v: [] for v in calls}
    for _ in range(ROUNDS):
        for v, call in calls.items():
            times[v].append(median_time_s(call, iters=ITERS) * 1e6)
    return times


def variant_modules() -> dict:
    import cupy

    from moespeq.runtime.kernel_source import kernel_source
    from moespeq.runtime.moe_kernels import _OPTIONS

    def options(extra: tuple) -> tuple:  # the committed options, a macro that the variant sets left out
        names = {o.split("=")[0] for o in extra}
        return (*(o for o in _OPTIONS["int4_moe"] if o.split("=")[0] not in names), *extra)
    return {v: cupy.RawModule(code=kernel_source("int4_moe"), options=options(o)) for v, o in VARIANTS.items()}


def variant_calls(lb, mods: dict, tokens: int, cfg: LaunchConfig) -> dict:
    """The -D variants of the split-F path at `cfg`, on the same rotated layers and routings as lb.int4_call."""
    import cupy

    from moespeq.runtime import moe_kernels as mk

    out = cupy.empty((tokens, lb.geo.hidden), dtype=cupy.uint16)
    fns = {v: m.get_function(mk.int4_function(cfg, tokens)) for v, m in mods.items()}
    committed = mk.get_kernel("int4_moe", mk.int4_function(cfg, tokens))
    # the same grid as the committed entry's: a variant must not gain blocks by using fewer registers
    assert all(mk.occupancy(f, cfg.warps) >= min(cfg.blocks_per_sm, mk.occupancy(committed, cfg.warps))
               for f in fns.values())
    return {v: call_of(lb, f, tokens, cfg, out) for v, f in fns.items()}


def measure(name: str, mods: dict) -> list[dict]:
    import cupy

    lb, rows = build(name), []
    for t in TOKENS:
        cfgs = {"committed": committed_config(lb.geo, t), **candidates(t)}
        refs = references(lb, t)
        checks = {v: check(lb, t, c, refs) for v, c in cfgs.items()}
        times = alternate({v: lb.int4_call(t, c) for v, c in cfgs.items()})
        med = {v: statistics.median(ts) for v, ts in times.items()}
        split = {v: us for v, us in med.items() if v != "committed"}
        best = min(split, key=split.get) if split else None
        var_times = {}
        if best:
            calls = {"committed": lb.int4_call(t, cfgs["committed"]), "best": lb.int4_call(t, cfgs[best]),
                     **variant_calls(lb, mods, t, cfgs[best])}
            var_times = alternate(calls)
        rows.append({"model": name, "tokens": t, "configs": {v: c.to_dict() for v, c in cfgs.items()},
                     "checks": checks, "us": times, "median_us": med, "best_split_f": best,
                     "variants_us": var_times,
                     "variants_median_us": {v: statistics.median(ts) for v, ts in var_times.items()},
                     "mean_distinct_experts": lb.mean_distinct(t),
                     "mean_bytes": lb.mean_distinct(t) * lb.geo.expert_bytes_int4})
        sys.stdout.write(f"{name} T={t}: " + " ".join(f"{v} {us:.1f}{'' if checks[v]['passed'] else ' FAILED'}"
                                                       for v, us in med.items()) + "\n  variants at " + str(best)
                         + ": " + " ".join(f"{v} {us:.1f}" for v, us in rows[-1]["variants_median_us"].items()) + "\n")
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows


# the best split-F parameters of both calls at T = 1 (split_f_run17{a,b}_h200.json)
PROFILED = {"phi-3.5-moe": {"warps": 8, "blocks_per_sm": 2, "split_f": 64},
            "mixtral-8x7b": {"warps": 8, "blocks_per_sm": 2, "split_f": 128}}


def profile() -> None:
    """This script's --ncu launches under run 16's Nsight Compute arguments (clocks as found, L2 flushed)."""
    import subprocess

    from time_budget import NCU_ARGS

    cmd = [*NCU_ARGS, sys.executable, __file__, "--ncu"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ncu_split_f.txt").write_text(" ".join(cmd) + "\n" + run.stdout + run.stderr)
    sys.stdout.write(f"ncu exit {run.returncode}\n")


def profile_launches() -> None:
    import cupy

    for name, cfg in PROFILED.items():
        lb = build(name)
        for c in (committed_config(lb.geo, 1), LaunchConfig(**cfg)):
            lb.int4_call(1, c)(0)
            cupy.cuda.runtime.deviceSynchronize()  # SYNC: one profiled launch at a time
            sys.stdout.write(f"launch: {name} T=1 {c}\n")
        del lb
        cupy.get_default_memory_pool().free_all_blocks()


def table(path: str) -> str:
    """Markdown: the committed kernel against the best split-F candidate per model and T (GB/s and % of this call's
    2 GiB device copy, speedup over run 13's cupy.matmul), then the -D variants at that candidate."""
    d = json.loads(Path(path).read_text())
    bench = json.loads((Path(__file__).parent / "bench_kernels_h200.json").read_text())
    mm = {(b["model"], b["tokens"]): b["cupy.matmul_us"] for b in bench["rows"]}
    hbm = d["hbm_copy_gbps_2gib"]
    out = ("| model | T | committed µs | % HBM | best split-F | µs | % | % HBM | speedup over cupy.matmul (run 13): "
           "committed / split-F |\n" + "|---" * 9 + "|\n")
    for r in d["rows"]:
        c, b = r["median_us"]["committed"], r["best_split_f"]
        frac = 100 * r["mean_bytes"] / c / 1e3 / hbm
        if b is None:
            out += f"| {r['model']} | {r['tokens']} | {c:.1f} | {frac:.1f} | - | - | - | - | - |\n"
            continue
        s, m = r["median_us"][b], mm.get((r["model"], r["tokens"]))
        speed = f"{m / c:.2f} / {m / s:.2f}" if m else "-"
        out += (f"| {r['model']} | {r['tokens']} | {c:.1f} | {frac:.1f} | {b} | {s:.1f} | {100 * (s / c - 1):+.1f} | "
                f"{100 * r['mean_bytes'] / s / 1e3 / hbm:.1f} | {speed} |\n")
    rows = [r for r in d["rows"] if r["best_split_f"]]
    names = list(rows[0]["variants_median_us"])
    out += ("\n| model | T | at | " + " | ".join(names) + " |\n" + "|---" * (len(names) + 3) + "|\n")
    for r in rows:
        v = r["variants_median_us"]
        out += f"| {r['model']} | {r['tokens']} | {r['best_split_f']} | " + " | ".join(f"{v[n]:.1f}" for n in names) + " |\n"
    return out


def main() -> None:
    if "--table" in sys.argv:
        sys.stdout.write(table(sys.argv[sys.argv.index("--table") + 1]))
        return
    if "--profile" in sys.argv:
        profile()
        return
    if "--ncu" in sys.argv:
        profile_launches()
        return
    import cupy

    from moespeq.runtime import moe_kernels as mk
    from moespeq.runtime.copy_bench import hbm_copy_gbps

    OUT.mkdir(parents=True, exist_ok=True)
    fns = {f: mk.get_kernel("int4_moe", f) for f in ("moe_int4_t8", "moe_int4_t16", "moe_int4_split_f64",
                                                      "moe_int4_split_f128")}
    mods = variant_modules()
    result = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rounds": ROUNDS, "iters": ITERS,
              "registers": {f: fn.num_regs for f, fn in fns.items()},
              "variant_registers": {v: {f: m.get_function(f).num_regs for f in ("moe_int4_split_f64", "moe_int4_split_f128")}
                                    for v, m in mods.items()},
              "occupancy": {f: {w: mk.occupancy(fn, w) for w in (4, 8)} for f, fn in fns.items()},
              "shared_bytes": {f: fn.shared_size_bytes for f, fn in fns.items()},
              "hbm_copy_gbps_2gib": hbm_copy_gbps(), "rows": []}
    sys.stdout.write(json.dumps({k: result[k] for k in ("registers", "variant_registers", "occupancy", "shared_bytes",
                                                         "hbm_copy_gbps_2gib")}) + "\n")
    for name in MODELS:
        result["rows"] += measure(name, mods)
        (OUT / "split_f.json").write_text(json.dumps(result, indent=1) + "\n")  # kept if a later model fails
    result["all_checks_passed"] = all(c["passed"] for r in result["rows"] for c in r["checks"].values())
    (OUT / "split_f.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(table(str(OUT / "split_f.json")) + f"all checks passed: {result['all_checks_passed']}\n")


if __name__ == "__main__":
    main()
