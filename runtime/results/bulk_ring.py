"""Run 19's measurement (runtime/results/bulk_ring_run19_h200.json): the INT4 kernel's block-level bulk-copy ring
(int4_moe.cu's moe_int4_ring_t8, T <= 8) against the committed two-phase kernel, side by side in one H200 call, on
the four benchmark models at T = 1, 2, 4, 8 (16: the committed kernel alone, which the ring does not serve).

committed  the two-phase kernel at the launch parameters of runtime/configs/NVIDIA_H200.json (run 13's tuning).
ring       moe_int4_ring_t8 at each of RING: N consumer warps plus one producer warp per block, M blocks per SM,
           stages of C 64-wide chunks per matrix (phase 1: gate and up of one 16-row tile; phase 2: 2C chunks of
           down and of h), as many stages as fit the shared memory of M blocks beside x (at most 16, at least
           2, else the variant is left out at that T); one split of F in the down projection.
Every candidate is first checked on three routings against the reference (rel err <= 1e-2, every output written,
counters re-armed, a rerun bit-identical), and a bad expert id is flagged on the ring path; after the timing the
first routing is checked again (the timed launches alternated both paths on one workspace). Times alternate
candidate by candidate over ROUNDS rounds of ITERS calls on runtime/kernel_bench.py's rotated weight copies and
routings (each call another routing and another copy).

--diag times, for phi-3.5-moe and mixtral-8x7b at T = 1 and 2, ring variants (DIAG_RING) compiled with each of
DIAG_OPTIONS beside the committed kernel: RING_DIAG=1 (consumers skip the groups: the ring's stream alone) and
RING_DIAG=2 (each slot filled on its first use only: the consumers alone, on stale bytes) are timing only (wrong
results); RING_PAIR=1 (a consumer warp takes its groups two at a time, two accumulator sets) and RING_BIAS=1 (phase
1 dequantizes to 136 + q and subtracts 136 * the group's sum of x) are candidate changes, checked against the
reference first. Run 19c's call (bulk_ring_diag_run19c_h200.json, commit de29c32) had every RING variant with
RING_DIAG 0, 1, 2; run 19d's (bulk_ring_diag_run19d_h200.json and ncu_bulk_ring_run19d_h200.txt, commit 5b652cd)
had DIAG_RING with w8b1c32 and base, pair, spin (RING_SPIN=1: mbarrier waits poll), pair_spin and pair_spin with
RING_DIAG 1 and 2; run 19e's (bulk_ring_diag_run19e_h200.json, commit 681d6ef) these DIAG_OPTIONS with the consumers
decoding every stage's ticket themselves; run 19f's (bulk_ring_diag_run19f_h200.json, commit ee84811) with the
producer writing the decoded item into the stage. The RING_* switches are in those commits only; the next made
RING_PAIR and RING_BIAS the ring's code and removed the others, so run --diag there (`git checkout ee84811`).
--profile runs Nsight Compute (time_budget.NCU_ARGS) on one launch each of the committed kernel and PROFILED's
ring variants, phi-3.5-moe at T = 1: $OUT/ncu_bulk_ring.txt.

Usage (repository root, after `pip install -e .`):
    python3 runtime/results/bulk_ring.py            # writes $OUT/bulk_ring.json, prints the table
    python3 runtime/results/bulk_ring.py --diag     # writes $OUT/bulk_ring_diag.json, prints its table
    python3 runtime/results/bulk_ring.py --profile  # writes $OUT/ncu_bulk_ring.txt
    python3 runtime/results/bulk_ring.py --table runtime/results/bulk_ring_run19b_h200.json  # a sweep's table
    python3 runtime/results/bulk_ring.py --diag-table runtime/results/bulk_ring_diag_run19f_h200.json
    python3 runtime/results/bulk_ring.py --bench BEFORE_BENCH BEFORE_TUNE AFTER_BENCH AFTER_TUNE
        # the README's run 19 benchmark table: bench_kernels / tune_timings JSON of two gpu_check runs
    python3 runtime/results/bulk_ring.py --tune-table runtime/results/tune_timings_h200.json
        # per model and T: the fastest ring and register candidates of a tuning run
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from dequant_views import build, committed_config  # noqa: E402 - run 13's INT4-only layer bench
from small_t_levers import rel_err  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2, 4, 8, 16)
ROUNDS, ITERS = 5, 100
RING = {"w8b1c16": (8, 1, 16), "w8b1c32": (8, 1, 32), "w4b2c16": (4, 2, 16), "w8b2c16": (8, 2, 16),
        "w8b2c8": (8, 2, 8)}
SMEM_PER_SM, SMEM_PER_BLOCK, SMEM_RESERVED = 233472, 232448, 1024  # H100 / H200: 228 KiB per SM, 227 per block
MAX_STAGES = 16  # RING_MAX_STAGES


def ring_bytes(chunks: int, stages: int, tokens: int, hidden: int) -> int:
    """Dynamic shared memory of RingGeometry: the stages (codes, scales, h rows), then x (rows 64 B longer)."""
    return stages * (1056 * chunks + tokens * (256 * chunks + 64)) + tokens * (2 * hidden + 64)


def ring_stages(fn, v: str, tokens: int, hidden: int) -> int:
    """The most stages that fit beside x in the shared memory of the variant's blocks (0: fewer than 2)."""
    _, blocks, chunks = RING[v]
    budget = min(SMEM_PER_BLOCK, SMEM_PER_SM // blocks - SMEM_RESERVED) - fn.shared_size_bytes
    stages = max(s for s in range(MAX_STAGES + 1) if s == 0 or ring_bytes(chunks, s, tokens, hidden) <= budget)
    return stages if stages >= 2 else 0


def ring_kernel():
    from moespeq.runtime import moe_kernels as mk

    fn = mk.get_kernel("int4_moe", "moe_int4_ring_t8")
    fn.max_dynamic_shared_size_bytes = SMEM_PER_BLOCK - fn.shared_size_bytes
    return fn


def resident_blocks(fn, v: str, tokens: int, hidden: int) -> int:
    import cupy

    warps, _, chunks = RING[v]
    shared = ring_bytes(chunks, ring_stages(fn, v, tokens, hidden), tokens, hidden)
    return cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor(fn.kernel.ptr, 32 * (warps + 1), shared)


def ring_call(lb, fn, tokens: int, v: str, out, sets=None, xs=None, layers=None, helpers: int = 1):
    """One launch of the ring entry per call i on routing, x and weight copy i (rotated), like lb.int4_call;
    `helpers` warps per block besides the consumers (1: the producer, the ring of runs 19-21; 2: and the output
    warp, from run 22)."""
    warps, blocks, chunks = RING[v]
    stages = ring_stages(fn, v, tokens, lb.geo.hidden)
    return ring_launches(lb, fn, tokens, out, blocks, warps + helpers, chunks, stages,
                         ring_bytes(chunks, stages, tokens, lb.geo.hidden), sets=sets, xs=xs, layers=layers)


def ring_launches(lb, fn, tokens: int, out, blocks: int, warps: int, chunks: int, stages: int, shared: int, splits: int = 1,
                  sets=None, xs=None, layers=None):
    """call(i): one launch of ring entry fn (blocks per SM, warps per block, shared bytes) on routing, x and weight
    copy i (rotated), `splits` splits of F in the down projection."""
    import numpy as np

    from moespeq.runtime import moe_kernels as mk

    sets, xs, layers = sets or lb.routing(tokens), xs or lb.xs[tokens], layers or lb.int4_layers
    geo, ws = lb.geo, lb.workspace
    grid, block = (mk.device_info().sm_count * blocks,), (32 * warps,)

    def call(i: int) -> None:
        r, e = sets[i % len(sets)], layers[i % len(layers)]
        fn(grid, block, (xs[i % len(xs)], r.ids, r.w, e.gate.codes, e.gate.scales, e.up.codes, e.up.scales,
                         e.down.codes, e.down.scales, out, ws.hbuf, ws.partial, ws.counters, np.int32(tokens),
                         np.int32(geo.top_k), np.int32(geo.experts), np.int32(geo.hidden), np.int32(geo.moe_ffn),
                         np.int32(splits), np.int32(1), np.int32(geo.max_used_experts), np.int32(stages),
                         np.int32(chunks)),
           shared_mem=shared)
    return call


def references(lb, tokens: int) -> list:
    from moespeq.runtime.reference import moe_int4_reference

    sets = lb.routing(tokens)
    return [moe_int4_reference(lb.xs[tokens][i], sets[i].ids, sets[i].w, lb.int4_layers[i % len(lb.int4_layers)])
            for i in range(3)]


def launcher(lb, fn, tokens: int, v: str):
    """launch(i, y): routing / x / weight copy i into y, by the committed kernel or ring variant v."""
    from moespeq.runtime.moe_kernels import launch_moe_int4

    if v == "committed":
        cfg = committed_config(lb.geo, tokens)

        def launch(i, y):
            r = lb.routing(tokens)[i]
            launch_moe_int4(lb.xs[tokens][i], r.ids, r.w, lb.int4_layers[i % len(lb.int4_layers)], lb.workspace, y, cfg)
        return launch

    def launch(i, y):
        ring_call(lb, fn, tokens, v, y)(i)
    return launch


def finished_or_exit(what: str, seconds: float = 10.0) -> None:
    """Wait for the launches so far; a launch that never ends (a ring deadlock) ends the script, not the call."""
    import time

    import cupy

    event, start = cupy.cuda.Event(), time.monotonic()
    event.record()
    while not event.done:
        if time.monotonic() - start > seconds:
            sys.stdout.write(f"HANG: {what} did not finish in {seconds} s\n")
            sys.stdout.flush()
            os._exit(3)
        time.sleep(0.01)


def check(lb, fn, tokens: int, v: str, refs: list, routings: int = 3) -> dict:
    import cupy

    launch, ws, errs, ok = launcher(lb, fn, tokens, v), lb.workspace, [], True
    for i in range(routings):
        ys = []
        for _ in range(2):
            y = cupy.full((tokens, lb.geo.hidden), 0xFFFF, dtype=cupy.uint16)
            launch(i, y)
            finished_or_exit(f"{lb.spec.name} T={tokens} {v}")
            ys.append(y)
        errs.append(rel_err(ys[0], refs[i]))
        written = not bool((ys[0] == 0xFFFF).any())  # SYNC: checks before timing
        same = bool((ys[0] == ys[1]).all())
        rearmed = not bool(ws.counters.any())
        ok = ok and written and same and rearmed and errs[-1] <= 1e-2
    return {"rel_err": errs, "passed": ok}


def bad_id_flagged(lb, fn, v: str, call_of=None) -> bool:
    """An id outside [0, E) on the ring path: flagged, the ticket and exit counters re-armed. call_of(lb, tokens, v, y,
    sets, xs) makes the launch (default: ring_call of kernel fn)."""
    import cupy

    from moespeq.runtime.kernel_bench import Routing

    r = lb.routing(2)[0]
    ids = r.ids.copy()
    ids[1, 0] = lb.geo.experts + 3
    y = cupy.zeros((2, lb.geo.hidden), dtype=cupy.uint16)
    sets, xs = [Routing(ids, r.w, [], r.used)], [lb.xs[2][0]]
    if call_of is None:
        ring_call(lb, fn, 2, v, y, sets=sets, xs=xs)(0)
    else:
        call_of(lb, 2, v, y, sets, xs)(0)
    finished_or_exit(f"{lb.spec.name} bad id {v}")
    flags = int(lb.workspace.counters[3].get())  # SYNC: correctness check
    lb.workspace.counters[3] = 0
    return flags == 1 and not bool(lb.workspace.counters[:3].any())


def alternate(calls: dict) -> dict[str, list[float]]:
    from moespeq.runtime.timing import median_time_s

    times: dict[str, list[float]] = {v: [] for v in calls}
    for _ in range(ROUNDS):
        for v, call in calls.items():
            times[v].append(median_time_s(call, iters=ITERS) * 1e6)
    return times


def measure(name: str, fn) -> list[dict]:
    import cupy

    lb, rows = build(name), []
    for t in TOKENS:
        variants = ["committed", *(v for v in RING if t <= 8 and ring_stages(fn, v, t, lb.geo.hidden))]
        refs = references(lb, t)
        checks = {v: check(lb, fn, t, v, refs) for v in variants}
        calls = {"committed": lb.int4_call(t, committed_config(lb.geo, t))}
        out = cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16)
        calls.update({v: ring_call(lb, fn, t, v, out) for v in variants[1:]})
        times = alternate(calls)
        after = {v: check(lb, fn, t, v, refs, routings=1) for v in variants}
        med = {v: statistics.median(ts) for v, ts in times.items()}
        rows.append({"model": name, "tokens": t, "committed_config": committed_config(lb.geo, t).to_dict(),
                     "ring_stages": {v: ring_stages(fn, v, t, lb.geo.hidden) for v in variants[1:]},
                     "ring_resident_blocks_per_sm": {v: resident_blocks(fn, v, t, lb.geo.hidden) for v in variants[1:]},
                     "checks": checks, "checks_after_timing": after, "us": times, "median_us": med,
                     "mean_distinct_experts": lb.mean_distinct(t),
                     "mean_bytes": lb.mean_distinct(t) * lb.geo.expert_bytes_int4})
        sys.stdout.write(f"{name} T={t}: " + " ".join(
            f"{v} {us:.1f}{'' if checks[v]['passed'] and after[v]['passed'] else ' FAILED'}" for v, us in med.items()) + "\n")
        sys.stdout.flush()
    bad = {v: bad_id_flagged(lb, fn, v) for v in RING if ring_stages(fn, v, 2, lb.geo.hidden)}
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows, bad


def table(path: str) -> str:
    """Markdown: the committed kernel and every ring variant per model and T (µs, % against committed), then % of
    this call's 2 GiB device copy and the speedup over bench_kernels_h200.json's cupy.matmul for the committed kernel
    and the best."""
    d = json.loads(Path(path).read_text())
    bench = json.loads((Path(__file__).parent / "bench_kernels_h200.json").read_text())
    mm = {(b["model"], b["tokens"]): b["cupy.matmul_us"] for b in bench["rows"]}
    hbm, names = d["hbm_copy_gbps_2gib"], list(d["ring"])
    out = ("| model | T | committed µs | " + " | ".join(names) + " | best | % HBM committed / best | "
           "speedup over cupy.matmul committed / best |\n" + "|---" * (len(names) + 6) + "|\n")
    for r in d["rows"]:
        med, c = r["median_us"], r["median_us"]["committed"]
        cells = [f"{med[v]:.1f} ({100 * (med[v] / c - 1):+.1f} %)" if v in med else "-" for v in names]
        ring = {v: med[v] for v in names if v in med}
        best = min(ring, key=ring.get) if ring else None
        b = ring[best] if best else c
        m = mm.get((r["model"], r["tokens"]))
        gbps = r["mean_bytes"] / 1e3
        out += (f"| {r['model']} | {r['tokens']} | {c:.1f} | " + " | ".join(cells) + f" | {best or '-'} | "
                f"{100 * gbps / c / hbm:.1f} / {100 * gbps / b / hbm:.1f} | "
                + (f"{m / c:.2f} / {m / b:.2f}" if m else "-") + " |\n")
    return out


DIAG_MODELS, DIAG_TOKENS = ("phi-3.5-moe", "mixtral-8x7b"), (1, 2)
DIAG_RING = {"w4b2c16": (4, 2, 16), "w8b2c16": (8, 2, 16), "w2b2c16": (2, 2, 16)}
DIAG_OPTIONS = {"base": (), "pair": ("-DRING_PAIR=1",), "bias": ("-DRING_BIAS=1",),
                "bias_pair": ("-DRING_BIAS=1", "-DRING_PAIR=1"),
                "bias_pair_diag1": ("-DRING_BIAS=1", "-DRING_PAIR=1", "-DRING_DIAG=1"),
                "bias_pair_diag2": ("-DRING_BIAS=1", "-DRING_PAIR=1", "-DRING_DIAG=2")}
PROFILED = (("w4b2c16", "base"), ("w4b2c16", "bias_pair"), ("w4b2c16", "bias_pair_diag2"))


def diag_kernels() -> dict:
    import cupy

    from moespeq.runtime.kernel_source import kernel_source
    from moespeq.runtime.moe_kernels import _OPTIONS

    fns = {}
    for d, opts in DIAG_OPTIONS.items():
        fn = cupy.RawModule(code=kernel_source("int4_moe"), options=(*_OPTIONS["int4_moe"], *opts)
                            ).get_function("moe_int4_ring_t8")
        fn.max_dynamic_shared_size_bytes = SMEM_PER_BLOCK - fn.shared_size_bytes
        fns[d] = fn
    RING.update(DIAG_RING)
    return fns


def diag() -> None:
    import cupy

    fns = diag_kernels()
    result = {"registers": {d: fn.num_regs for d, fn in fns.items()}, "options": DIAG_OPTIONS, "rows": []}
    for name in DIAG_MODELS:
        lb = build(name)
        for t in DIAG_TOKENS:
            refs = references(lb, t)
            out = cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16)
            calls, checks = {"committed": lb.int4_call(t, committed_config(lb.geo, t))}, {}
            for v in DIAG_RING:
                if not ring_stages(fns["base"], v, t, lb.geo.hidden):
                    continue
                for d, fn in fns.items():
                    if "diag" not in d:
                        checks[f"{v}/{d}"] = check(lb, fn, t, v, refs, routings=1)
                    calls[f"{v}/{d}"] = ring_call(lb, fn, t, v, out)
            for v, call in calls.items():  # each finishes (a hang ends the script)
                call(0)
                finished_or_exit(f"{name} T={t} {v}")
            times = alternate(calls)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            result["rows"].append({"model": name, "tokens": t, "checks": checks, "us": times, "median_us": med})
            sys.stdout.write(f"{name} T={t}: " + " ".join(f"{v} {us:.1f}" for v, us in med.items()) + "\n"
                             + "  checks passed: " + str(all(c["passed"] for c in checks.values())) + "\n")
            (OUT / "bulk_ring_diag.json").write_text(json.dumps(result, indent=1) + "\n")
        del lb
        cupy.get_default_memory_pool().free_all_blocks()


def profile() -> None:
    import subprocess

    from time_budget import NCU_ARGS

    cmd = [*NCU_ARGS, sys.executable, __file__, "--ncu"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    (OUT / "ncu_bulk_ring.txt").write_text(" ".join(cmd) + "\n" + run.stdout + run.stderr)
    sys.stdout.write(f"ncu exit {run.returncode}\n")


def profile_launches() -> None:
    import cupy

    fns = diag_kernels()
    lb = build("phi-3.5-moe")
    lb.int4_call(1, committed_config(lb.geo, 1))(0)
    out = cupy.empty((1, lb.geo.hidden), dtype=cupy.uint16)
    for v, d in PROFILED:
        ring_call(lb, fns[d], 1, v, out)(0)
        cupy.cuda.runtime.deviceSynchronize()  # SYNC: one profiled launch at a time
        sys.stdout.write(f"launch: phi-3.5-moe T=1 {v} {d}\n")


def diag_table(path: str) -> str:
    """Markdown: µs per diag cell, one column per option, rows per model, T and ring shape."""
    d = json.loads(Path(path).read_text())
    opts = list(dict.fromkeys(v.split("/")[1] for r in d["rows"] for v in r["median_us"] if "/" in v))
    out = "| model | T | committed | shape | " + " | ".join(opts) + " |\n" + "|---" * (len(opts) + 4) + "|\n"
    for r in d["rows"]:
        med = r["median_us"]
        for shape in dict.fromkeys(v.split("/")[0] for v in med if "/" in v):
            out += (f"| {r['model']} | {r['tokens']} | {med['committed']:.1f} | {shape} | "
                    + " | ".join(f"{med[f'{shape}/{o}']:.1f}" for o in opts) + " |\n")
    return out


def bench_table(before: str, before_tune: str, after: str, after_tune: str) -> str:
    """Markdown: two gpu_check runs' INT4 benchmark side by side (T = 16: the tuner's best median)."""
    b, a = (json.loads(Path(x).read_text()) for x in (before, after))
    rows = {(r["model"], r["tokens"]): r for r in b["rows"]}
    out = ("| model | T | experts | INT4 µs before | after | % | % HBM before | after | speedup over cupy.matmul "
           "before | after |\n" + "|---" * 10 + "|\n")
    for r in a["rows"]:
        o = rows[(r["model"], r["tokens"])]
        out += (f"| {r['model']} | {r['tokens']} | {r['distinct_experts']:.2f} | {o['int4_us']:.1f} | "
                f"**{r['int4_us']:.1f}** | {100 * (r['int4_us'] / o['int4_us'] - 1):+.1f} | "
                f"{100 * o['int4_bw_frac']:.1f} | **{100 * r['int4_bw_frac']:.1f}** | "
                f"{o['speedup_vs_cupy.matmul']:.2f} | **{r['speedup_vs_cupy.matmul']:.2f}** |\n")
    best = {}
    for label, path in (("before", before_tune), ("after", after_tune)):
        for model, kernels in json.loads(Path(path).read_text())["timings"].items():
            best.setdefault(model, {})[label] = min(c["us"] for c in kernels["moe_int4"]["16"])
    out += "\nT = 16 (tuner's best median of 20 calls): " + ", ".join(
        f"{m} {v['before']:.1f} -> {v['after']:.1f} µs" for m, v in best.items()) + "\n"
    for label, run in (("before", b), ("after", a)):
        met = sum(c["met"] for c in run["goal_checks"])
        need = ", ".join(f"{r['model']} {r['int4_us']:.1f} µs where 3x needs <= {r['cupy.matmul_us'] / 3:.1f}"
                         for r in run["rows"] if r["tokens"] == 1 and r["speedup_vs_cupy.matmul"] < 3)
        fracs = [c["value"] for c in run["goal_checks"] if c["goal"].startswith("int4 bandwidth")]
        out += (f"\n{label}: {met} of {len(run['goal_checks'])} goal checks met; 3x at T = 1 "
                + (f"missed: {need}" if need else "met by every model")
                + f"; INT4 % of HBM copy {100 * min(fracs):.1f}-{100 * max(fracs):.1f} (75 % needed)\n")
    return out


def tune_table(path: str) -> str:
    """Markdown: per model and T <= 8 the fastest ring candidate and the fastest register candidate (tuner µs)."""
    d = json.loads(Path(path).read_text())["timings"]
    out = "| model | T | best register µs | best ring | µs | % |\n" + "|---" * 6 + "|\n"
    for model, kernels in d.items():
        for t, cands in kernels["moe_int4"].items():
            ring = [c for c in cands if c.get("ring_chunks")]
            if not ring:
                continue
            reg = min(c["us"] for c in cands if not c.get("ring_chunks"))
            r = min(ring, key=lambda c: c["us"])
            out += (f"| {model} | {t} | {reg:.1f} | w{r['warps']}b{r['blocks_per_sm']}c{r['ring_chunks']} | "
                    f"{r['us']:.1f} | {100 * (r['us'] / reg - 1):+.1f} |\n")
    return out


def main() -> None:
    for flag, run in (("--diag", diag), ("--profile", profile), ("--ncu", profile_launches)):
        if flag in sys.argv:
            OUT.mkdir(parents=True, exist_ok=True)
            run()
            return
    for flag, fn, n in (("--table", table, 1), ("--diag-table", diag_table, 1), ("--bench", bench_table, 4),
                        ("--tune-table", tune_table, 1)):
        if flag in sys.argv:
            i = sys.argv.index(flag)
            sys.stdout.write(fn(*sys.argv[i + 1: i + 1 + n]))
            return
    import cupy

    from moespeq.runtime import moe_kernels as mk
    from moespeq.runtime.copy_bench import hbm_copy_gbps

    OUT.mkdir(parents=True, exist_ok=True)
    fn = ring_kernel()
    committed = {f: mk.get_kernel("int4_moe", f) for f in ("moe_int4_t8", "moe_int4_t16")}
    result = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rounds": ROUNDS, "iters": ITERS,
              "ring": {v: dict(zip(("consumer_warps", "blocks_per_sm", "chunks"), c, strict=True)) for v, c in RING.items()},
              "registers": {"moe_int4_ring_t8": fn.num_regs, **{f: k.num_regs for f, k in committed.items()}},
              "ring_static_shared_bytes": fn.shared_size_bytes,
              "hbm_copy_gbps_2gib": hbm_copy_gbps(), "rows": [], "bad_id_flagged": {}}
    sys.stdout.write(json.dumps({k: result[k] for k in ("registers", "ring_static_shared_bytes",
                                                         "hbm_copy_gbps_2gib")}) + "\n")
    measure_models(result, MODELS, lambda name: measure(name, fn), OUT / "bulk_ring.json", table)


def table_asked(table_of) -> bool:
    """With `--table FILE` on the command line: print table_of(FILE) and return True (the script has nothing more to do)."""
    if "--table" not in sys.argv:
        return False
    sys.stdout.write(table_of(sys.argv[sys.argv.index("--table") + 1]))
    return True


def collect_rows(result: dict, models, measure_one, path: Path, table_of) -> None:
    """Each model's rows (measure_one(name)) into result["rows"], written to path after each model (kept if a later one
    fails); then prints table_of(path)."""
    for name in models:
        result["rows"] += measure_one(name)
        path.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(table_of(str(path)))


def measure_models(result: dict, models, measure_one, path: Path, table_of, counted=lambda v: True) -> None:
    """Each model's rows and bad-id flags into result, written to path after each model (kept if a later one
    fails), then whether every check of the variants `counted` admits passed; prints table_of(path)."""
    for name in models:
        rows, bad = measure_one(name)
        result["rows"] += rows
        result["bad_id_flagged"][name] = bad
        path.write_text(json.dumps(result, indent=1) + "\n")
    result["all_checks_passed"] = all(c["passed"] for r in result["rows"] for k in ("checks", "checks_after_timing")
                                      for v, c in r[k].items() if counted(v)) and all(
        ok for bad in result["bad_id_flagged"].values() for ok in bad.values())
    path.write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(table_of(str(path)) + f"all checks passed: {result['all_checks_passed']}\n")


if __name__ == "__main__":
    main()
