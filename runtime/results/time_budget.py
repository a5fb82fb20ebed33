"""Run 16's measurement (runtime/results/time_budget_run16_h200.json): where the fused INT4 kernel's time goes at
T = 1 (T = 2 and 8 for contrast), on phi-3.5-moe and mixtral-8x7b at the committed tuned launch parameters.

Nothing here is a candidate change. Each variant is the committed kernel with one part of its work removed by
-D switches of moe_common.cuh / int4_moe.cu of commit 91450ab, which added this script (the next commit removed
them again: run this script there, `git checkout 91450ab`). Every switch at 0 compiles to the committed kernel's
SASS (nvcc 13.0, diffed).
The variants compute WRONG results (timing only), except `full`:
  full        the committed kernel (checked against the reference on three routings per model and T).
  empty       -DMOE_DIAG_NOLOOP=1: first ticket, routing prologue, exit; no item loop.
  fixed       -DMOE_DIAG_P1=1 -DMOE_DIAG_P2=1: prologue, the whole ticket loop (one barrier per ticket), exit; the
              items do nothing.
  p1          -DMOE_DIAG_P2=1: phase 1 (gate/up items) only; phase-2 tickets do nothing.
  p2          -DMOE_DIAG_P1=1: phase 2 (down items) only, h read from the workspace as the last full launch left
              it, without waiting for phase 1; phase-1 tickets do nothing.
  p1_nomma    p1 with the mma chain removed: loads and dequantization kept, XOR-folded into one accumulator.
  p1_loads    p1 with loads only: weight words, scales and B rows XOR-folded, no dequantization, no mma.
  p1_nored    p1 without the k-split sum through shared memory (its barrier) and without the fence before the
              per-expert count (-DMOE_DIAG_NORED=1); warps whose sum is skipped keep their results by a store
              that never happens.
  p1_nofence  p1 without that fence only (-DMOE_DIAG_NORED=2).
  p2_nopf     p2 without the L2 prefetch of each item's down weights (-DMOE_L2_PREFETCH=0).
  nored       the full kernel with NORED: no k-split sums, no fences, and phase 2 writes its partials without the
              row-tile counter and the last-arriver sum (y is not written).
  nowait      the full kernel whose phase-2 items do not wait for their expert's phase 1 (-DMOE_DIAG_NOWAIT=1).
  nopf        the full kernel without the phase-2 L2 prefetch (-DMOE_L2_PREFETCH=0; its results are right).
References on the same bytes (the packed codes and scales of the experts in use, per routing):
  stream4/8   a plain read of those bytes, 16-byte ld.global.nc loads (as the kernel's weight loads), 4 or 8 in
              flight per thread, XOR-folded; the committed kernel's grid and block shape.
  stream4_wide  stream4 with as many blocks of that shape as fit an SM (the grid is not the limit).
  memcpy      cudaMemcpyAsync device to device of the same number of bytes (3 rotated sources).
Times alternate variant by variant over ROUNDS rounds of ITERS calls on runtime/kernel_bench.py's rotated layers
and routings; the counters are checked re-armed after every variant's first launch (a variant that left them
armed would make the next one do nothing).

Usage (repository root of commit 91450ab, after `pip install -e .`; --table also works here):
    python3 runtime/results/time_budget.py            # writes $OUT/time_budget.json, prints the table
    python3 runtime/results/time_budget.py --profile  # Nsight Compute (NCU_ARGS) on one launch each of PROFILED,
                                                      # phi-3.5-moe and mixtral-8x7b at T = 1: $OUT/ncu_time_budget.txt
    python3 runtime/results/time_budget.py --table runtime/results/time_budget_run16_h200.json
        # the README's tables from a result file (no GPU)
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from dequant_views import build, call_of, committed_config  # noqa: E402 - run 13's layer and launch
from small_t_levers import launch_once, rel_err  # noqa: E402 - run 14's checks

from moespeq.runtime.kernel_source import kernel_source  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b")
TOKENS = (1, 2, 8)
ROUNDS, ITERS = 7, 100
VARIANTS = {"full": (), "empty": ("-DMOE_DIAG_NOLOOP=1",), "fixed": ("-DMOE_DIAG_P1=1", "-DMOE_DIAG_P2=1"),
            "p1": ("-DMOE_DIAG_P2=1",), "p2": ("-DMOE_DIAG_P1=1",),
            "p1_nomma": ("-DMOE_DIAG_P1=2", "-DMOE_DIAG_P2=1"), "p1_loads": ("-DMOE_DIAG_P1=3", "-DMOE_DIAG_P2=1"),
            "p1_nored": ("-DMOE_DIAG_NORED=1", "-DMOE_DIAG_P2=1"),
            "p1_nofence": ("-DMOE_DIAG_NORED=2", "-DMOE_DIAG_P2=1"), "p2_nopf": ("-DMOE_DIAG_P1=1", "-DMOE_L2_PREFETCH=0"),
            "nored": ("-DMOE_DIAG_NORED=1",), "nowait": ("-DMOE_DIAG_NOWAIT=1",), "nopf": ("-DMOE_L2_PREFETCH=0",)}
REFERENCES = ("stream4", "stream8", "stream4_wide", "memcpy")
# which bytes each part reads: all six arrays, gate+up codes and scales (phase 1), down (phase 2), none
BYTES_OF = {"full": "all", "nored": "all", "nowait": "all", "nopf": "all", "stream4": "all", "stream8": "all",
            "stream4_wide": "all", "memcpy": "all", "p1": "p1", "p1_nomma": "p1", "p1_loads": "p1", "p1_nored": "p1",
            "p1_nofence": "p1", "p2": "p2", "p2_nopf": "p2"}

STREAM_SOURCE = r"""
// The achievable-bandwidth reference: the packed codes and scales of the experts in use read once, 16 bytes per
// load on the MoE kernel's weight path (ld.global.nc, no L1 allocation), UNROLL loads in flight per thread,
// XOR-folded and kept by a store that never happens.
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}

// base[a], units[a]: array a of the six (gate codes, gate scales, up codes, up scales, down codes, down scales)
// and its 16-byte units per expert; used[0..n_used): the experts in use
template <int UNROLL>
__device__ void stream_read(const unsigned long long* base, const long long* units, const int* used, int n_used,
                            unsigned* sink) {
    const long long first = blockIdx.x * (long long)blockDim.x + threadIdx.x, step = (long long)gridDim.x * blockDim.x;
    unsigned f = 0;
    for (int a = 0; a < 6; ++a) {
        const long long n = units[a];
        for (int u = 0; u < n_used; ++u) {
            const uint4* p = reinterpret_cast<const uint4*>(base[a]) + used[u] * n;
            long long i = first;
            // software-pipelined: the next UNROLL loads are issued before the current ones are folded (folding
            // right after loading let ptxas reuse the registers, which waited on each load: ~2 in flight)
            uint4 v[UNROLL];
            if (i + (UNROLL - 1) * step < n) {
#pragma unroll
                for (int k = 0; k < UNROLL; ++k) v[k] = ld_stream(p + i + k * step);
                for (i += UNROLL * step; i + (UNROLL - 1) * step < n; i += UNROLL * step) {
                    uint4 w[UNROLL];
#pragma unroll
                    for (int k = 0; k < UNROLL; ++k) w[k] = ld_stream(p + i + k * step);
#pragma unroll
                    for (int k = 0; k < UNROLL; ++k) {
                        f ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
                        v[k] = w[k];
                    }
                }
#pragma unroll
                for (int k = 0; k < UNROLL; ++k) f ^= v[k].x ^ v[k].y ^ v[k].z ^ v[k].w;
            }
            for (; i < n; i += step) {
                const uint4 v = ld_stream(p + i);
                f ^= v.x ^ v.y ^ v.z ^ v.w;
            }
        }
    }
    if (f == 0x9e3779b9u) sink[0] = f;
}

extern "C" __global__ void stream_read4(const unsigned long long* base, const long long* units, const int* used,
                                        int n_used, unsigned* sink) { stream_read<4>(base, units, used, n_used, sink); }
extern "C" __global__ void stream_read8(const unsigned long long* base, const long long* units, const int* used,
                                        int n_used, unsigned* sink) { stream_read<8>(base, units, used, n_used, sink); }
"""


def modules():
    import cupy

    from moespeq.runtime.moe_kernels import _OPTIONS  # the committed kernel's compile options

    return {v: cupy.RawModule(code=kernel_source("int4_moe"), options=(*_OPTIONS["int4_moe"], *opts))
            for v, opts in VARIANTS.items()}


def layer_bytes(lb) -> dict[str, int]:
    """Bytes per expert: all six arrays, phase 1's four (gate, up), phase 2's two (down)."""
    e = lb.int4_layers[0]
    per = {k: (m.codes.nbytes + m.scales.nbytes) // lb.geo.experts for k, m in
           (("gate", e.gate), ("up", e.up), ("down", e.down))}
    assert sum(per.values()) == lb.geo.expert_bytes_int4, (per, lb.geo.expert_bytes_int4)
    return {"all": sum(per.values()), "p1": per["gate"] + per["up"], "p2": per["down"]}


def reference_calls(lb, tokens: int, grid: tuple, block: tuple) -> dict:
    """stream4, stream8, stream4_wide and memcpy calls on routing i's experts in use (layer i's copy for the
    streams)."""
    import cupy
    import numpy as np

    from moespeq.runtime import moe_kernels as mk

    sets, geo = lb.routing(tokens), lb.geo
    mod = cupy.RawModule(code=STREAM_SOURCE, options=("--std=c++17",))
    used = [cupy.asarray([e for e, _ in r.groups], dtype=cupy.int32) for r in sets]
    arrays = [(L.gate.codes, L.gate.scales, L.up.codes, L.up.scales, L.down.codes, L.down.scales) for L in lb.int4_layers]
    bases = [cupy.asarray([a.data.ptr for a in arr], dtype=cupy.uint64) for arr in arrays]
    units = cupy.asarray([a.nbytes // geo.experts // 16 for a in arrays[0]], dtype=cupy.int64)
    sink = cupy.zeros(1, dtype=cupy.uint32)
    nbytes = [len(r.groups) * geo.expert_bytes_int4 for r in sets]
    srcs = [cupy.empty(max(nbytes), dtype=cupy.uint8) for _ in range(3)]  # rotated, as the layers are
    for s in srcs:
        s.fill(0xA5)  # not zeros (METHOD.md), though a copy does not look at its bytes
    dst = cupy.empty(max(nbytes), dtype=cupy.uint8)
    stream_ptr = cupy.cuda.get_current_stream().ptr

    def stream(fn, grid):
        def call(i: int) -> None:
            u = used[i % len(sets)]
            fn(grid, block, (bases[i % len(bases)], units, u, np.int32(u.size), sink))
        return call

    s4 = mod.get_function("stream_read4")
    wide = (mk.device_info().sm_count * mk.occupancy(s4, block[0] // 32),)

    def memcpy(i: int) -> None:
        cupy.cuda.runtime.memcpyAsync(dst.data.ptr, srcs[i % 3].data.ptr, nbytes[i % len(sets)],
                                      cupy.cuda.runtime.memcpyDeviceToDevice, stream_ptr)

    return {"stream4": stream(s4, grid), "stream8": stream(mod.get_function("stream_read8"), grid),
            "stream4_wide": stream(s4, wide), "memcpy": memcpy, "wide_grid": wide[0]}


def checks(fns, lb, tokens: int, cfg) -> dict:
    """full against the reference on three routings; every variant's counters re-armed after one launch."""
    from moespeq.runtime.reference import moe_int4_reference

    sets, xs, out = lb.routing(tokens), lb.xs[tokens], {"full_rel_err": [], "full_written": [], "rearmed": {}}
    for i in range(3):
        r, x, layer = sets[i], xs[i], lb.int4_layers[i % len(lb.int4_layers)]
        y, written, rearmed, flags = launch_once(fns["full"], lb, tokens, cfg, 0, x, r.ids, r.w, layer)
        out["full_rel_err"].append(rel_err(y, moe_int4_reference(x, r.ids, r.w, layer)))
        out["full_written"].append(written and rearmed and flags == 0)
    for v, fn in fns.items():
        r = sets[0]
        _, _, rearmed, _ = launch_once(fn, lb, tokens, cfg, 0, xs[0], r.ids, r.w, lb.int4_layers[0])
        out["rearmed"][v] = rearmed
    # leave h of a real launch in the workspace for p2 (which reads it without waiting)
    launch_once(fns["full"], lb, tokens, cfg, 0, xs[0], sets[0].ids, sets[0].w, lb.int4_layers[0])
    out["passed"] = all(e <= 1e-2 for e in out["full_rel_err"]) and all(out["full_written"]) and all(
        out["rearmed"].values())
    return out


def alternate(calls: dict) -> dict[str, list[float]]:
    """µs per call of each, ROUNDS medians of ITERS calls, the calls alternating round by round."""
    from moespeq.runtime.timing import median_time_s

    times: dict[str, list[float]] = {v: [] for v in calls}
    for _ in range(ROUNDS):  # alternate, so that drift in clocks or temperature hits every variant alike
        for v, call in calls.items():
            times[v].append(median_time_s(call, iters=ITERS) * 1e6)
    return times


def budget(med: dict[str, float], mean_bytes: dict[str, float]) -> dict:
    """Per part: µs, GB/s of the bytes it reads, fraction of the full kernel; the derived join."""
    full = med["full"]
    parts = {v: {"us": us, "frac_of_full": us / full,
                 "gbps": mean_bytes[BYTES_OF[v]] / us / 1e3 if v in BYTES_OF else None} for v, us in med.items()}
    parts["memcpy"]["gbps_read_plus_write"] = 2 * mean_bytes["all"] / med["memcpy"] / 1e3
    # join: what running both phases in one launch adds to the two run apart (negative: they overlap)
    derived = {"join_us": full - (med["p1"] + med["p2"] - med["fixed"]),
               "ticket_loop_us": med["fixed"] - med["empty"],
               "p1_work_us": med["p1"] - med["fixed"], "p2_work_us": med["p2"] - med["fixed"],
               "p1_mma_us": med["p1"] - med["p1_nomma"], "p1_dequant_us": med["p1_nomma"] - med["p1_loads"],
               "p1_reduction_us": med["p1"] - med["p1_nored"], "p1_fence_us": med["p1"] - med["p1_nofence"],
               "p2_prefetch_us": med["p2"] - med["p2_nopf"], "prefetch_us": full - med["nopf"],
               "reduction_us": full - med["nored"],
               "wait_us": full - med["nowait"], "full_over_stream8": full / med["stream8"],
               "full_over_stream4": full / med["stream4"]}
    return {"parts": parts, "derived": derived}


def measure(mods, name: str) -> list[dict]:
    import cupy

    from moespeq.runtime import moe_kernels as mk

    lb, rows = build(name), []
    per_expert = layer_bytes(lb)
    for t in TOKENS:
        cfg = committed_config(lb.geo, t)
        entry = "moe_int4_t8" if t <= 8 else "moe_int4_t16"
        fns = {v: m.get_function(entry) for v, m in mods.items()}
        grid = (mk.device_info().sm_count * min(cfg.blocks_per_sm, mk.occupancy(fns["full"], cfg.warps)),)
        block = (32 * cfg.warps,)
        ok = checks(fns, lb, t, cfg)
        outs = {v: cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16) for v in fns}
        calls = {v: call_of(lb, fn, t, cfg, outs[v]) for v, fn in fns.items()}
        refs = reference_calls(lb, t, grid, block)
        wide_grid = refs.pop("wide_grid")
        calls.update(refs)
        # every variant at the committed kernel's grid: fewer registers must not mean more blocks
        assert all(mk.device_info().sm_count * min(cfg.blocks_per_sm, mk.occupancy(fn, cfg.warps)) == grid[0]
                   for fn in fns.values())
        times = alternate(calls)
        med = {v: statistics.median(ts) for v, ts in times.items()}
        distinct = lb.mean_distinct(t)
        mean_bytes = {k: distinct * b for k, b in per_expert.items()}
        rows.append({"model": name, "tokens": t, "config": cfg.to_dict(), "grid": grid[0], "block": block[0],
                     "stream4_wide_grid": wide_grid, "mean_distinct_experts": distinct, "mean_bytes": mean_bytes, "checks": ok, "us": times,
                     "median_us": med, **budget(med, mean_bytes)})
        sys.stdout.write(f"{name} T={t} ({'checks ok' if ok['passed'] else 'CHECK FAILED'}, full rel err "
                         f"{max(ok['full_rel_err']):.1e}): " + " ".join(f"{v} {us:.1f}" for v, us in med.items()) + "\n")
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows


PROFILED = ("full", "p1", "stream8")
# Clocks left as found; L2 flushed before each profiled kernel (ncu's default cache control). The stall ratios are
# cycles a warp spent in each state per issued instruction (the WarpStateStats section's breakdown).
STALLS = ("long_scoreboard", "barrier", "membar", "short_scoreboard", "wait", "math_pipe_throttle", "lg_throttle",
          "mio_throttle", "no_instruction", "not_selected", "selected", "sleeping", "dispatch_stall", "branch_resolving")
NCU_ARGS = ("ncu", "--clock-control", "none", "--kernel-name", "regex:moe_int4|stream_read",
            "--section", "SpeedOfLight", "--section", "Occupancy", "--section", "SchedulerStats",
            "--section", "WarpStateStats", "--metrics",
            ",".join(("dram__bytes_read.sum", "dram__throughput.avg.pct_of_peak_sustained_elapsed",
                      *(f"smsp__average_warps_issue_stalled_{s}_per_issue_active.ratio" for s in STALLS))))


def profile() -> None:
    """Run this script's --ncu launches under NCU_ARGS; without the extra metrics if ncu refuses one of them."""
    import subprocess

    cmd = [*NCU_ARGS, sys.executable, __file__, "--ncu"]
    run, note = subprocess.run(cmd, capture_output=True, text=True), ""
    if run.returncode != 0:
        note = f"first try failed ({run.returncode}): {run.stderr[-2000:]}\nretried without --metrics\n"
        cut = cmd.index("--metrics")
        cmd = cmd[:cut] + cmd[cut + 2:]
        run = subprocess.run(cmd, capture_output=True, text=True)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "ncu_time_budget.txt").write_text(note + " ".join(cmd) + "\n" + run.stdout + run.stderr)
    sys.stdout.write(f"ncu exit {run.returncode}\n")


def profile_launches() -> None:
    """One launch of each PROFILED part per model at T = 1 (for Nsight Compute, which flushes L2 between kernels)."""
    import cupy

    from moespeq.runtime import moe_kernels as mk
    from moespeq.runtime.moe_kernels import _OPTIONS

    mods = {v: cupy.RawModule(code=kernel_source("int4_moe"), options=(*_OPTIONS["int4_moe"], *VARIANTS[v]))
            for v in PROFILED if v in VARIANTS}
    for name in MODELS:
        lb = build(name)
        cfg, out = committed_config(lb.geo, 1), cupy.empty((1, lb.geo.hidden), dtype=cupy.uint16)
        fn = mods["full"].get_function("moe_int4_t8")
        grid = (mk.device_info().sm_count * min(cfg.blocks_per_sm, mk.occupancy(fn, cfg.warps)),)
        refs = reference_calls(lb, 1, grid, (32 * cfg.warps,))
        refs.pop("wide_grid")
        for v in PROFILED:
            call = refs[v] if v in refs else call_of(lb, mods[v].get_function("moe_int4_t8"), 1, cfg, out)
            call(0)
            cupy.cuda.runtime.deviceSynchronize()  # SYNC: one profiled launch at a time
            sys.stdout.write(f"launch: {name} T=1 {v}\n")
        del lb, refs
        cupy.get_default_memory_pool().free_all_blocks()


PARTS = ("full", "empty", "fixed", "p1", "p1_loads", "p1_nomma", "p1_nored", "p1_nofence", "p2", "p2_nopf", "nored",
         "nowait", "nopf", "stream4", "stream8", "stream4_wide", "memcpy")


def tables(path: str) -> str:
    """Markdown: µs (GB/s of the bytes the part reads, % of full) per part, model and T; the derived terms; what
    the goals need (3x: run 13's cupy.matmul / 3; 75 %: of this run's 2 GiB copy)."""
    d = json.loads(Path(path).read_text())
    rows = d["rows"]
    head = "| part | " + " | ".join(f"{r['model'].split('-')[0]} T = {r['tokens']}" for r in rows) + " |\n"
    rule = "|---" * (len(rows) + 1) + "|\n"

    def cell(p: dict) -> str:
        gbps = f"{p['gbps']:.0f}, " if p["gbps"] else ""
        return f"{p['us']:.1f} ({gbps}{100 * p['frac_of_full']:.0f} %)"
    out = head + rule + "".join(f"| {v} | " + " | ".join(cell(r["parts"][v]) for r in rows) + " |\n" for v in PARTS)
    out += "\n" + head + rule + "".join(f"| {k} | " + " | ".join(f"{r['derived'][k]:.2f}" for r in rows) + " |\n"
                                       for k in rows[0]["derived"])
    bench = json.loads((Path(__file__).parent / "bench_kernels_h200.json").read_text())
    ceiling = bench["goals"]["bandwidth_frac"] * d["hbm_copy_gbps_2gib"]
    mm = {(b["model"], b["tokens"]): b["cupy.matmul_us"] for b in bench["rows"]}
    out += ("\n| model | T | MB | full µs | % of copy | stream4 µs | % of copy | 75 % of copy needs µs | 3x over cupy.matmul"
            " needs µs |\n" + "|---" * 9 + "|\n")
    for r in rows:
        # the 3x goal is set at T = 1 only
        need3 = f"{mm[(r['model'], 1)] / bench['goals']['speedup_t1']:.1f}" if r["tokens"] == 1 else "-"
        frac = {v: 100 * r["parts"][v]["gbps"] / d["hbm_copy_gbps_2gib"] for v in ("full", "stream4")}
        out += (f"| {r['model']} | {r['tokens']} | {r['mean_bytes']['all'] / 1e6:.1f} | {r['median_us']['full']:.1f} | "
                f"{frac['full']:.0f} | {r['median_us']['stream4']:.1f} | {frac['stream4']:.0f} | "
                f"{r['mean_bytes']['all'] / ceiling / 1e3:.1f} | {need3} |\n")
    return out


def main() -> None:
    if "--table" in sys.argv:
        sys.stdout.write(tables(sys.argv[sys.argv.index("--table") + 1]))
        return
    import cupy

    from moespeq.runtime.copy_bench import hbm_copy_gbps

    if "--ncu" in sys.argv:
        profile_launches()
        return
    if "--profile" in sys.argv:
        profile()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    mods = modules()
    result = {"variants": {v: list(o) for v, o in VARIANTS.items()}, "references": list(REFERENCES),
              "rounds": ROUNDS, "iters": ITERS,
              "registers": {v: {f: m.get_function(f).num_regs for f in ("moe_int4_t8", "moe_int4_t16")}
                            for v, m in mods.items()},
              "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(),
              "hbm_copy_gbps_2gib": hbm_copy_gbps(), "rows": []}
    for name in MODELS:
        result["rows"] += measure(mods, name)
    result["all_checks_passed"] = all(r["checks"]["passed"] for r in result["rows"])
    (OUT / "time_budget.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(f"HBM copy (2 GiB, read + write): {result['hbm_copy_gbps_2gib']:.0f} GB/s\n")
    for r in result["rows"]:
        sys.stdout.write(f"{r['model']} T={r['tokens']} grid {r['grid']}x{r['block']} "
                         f"{r['mean_bytes']['all'] / 1e6:.1f} MB\n" + "".join(
                             f"  {v:9s} {p['us']:7.1f} us {100 * p['frac_of_full']:5.1f} %"
                             + (f" {p['gbps']:6.0f} GB/s" if p["gbps"] else "") + "\n" for v, p in r["parts"].items())
                         + "  " + " ".join(f"{k} {x:.2f}" for k, x in r["derived"].items()) + "\n")
    sys.stdout.write(f"all checks passed: {result['all_checks_passed']}\n")


if __name__ == "__main__":
    main()
