"""Run 15's experiment (runtime/results/l2_lookahead_run15_h200.json): L2 lookahead for the phase-1 (gate/up) weight
stream of the tiled INT4 kernel, and run 14's late first-ticket store, timed side by side with the committed kernel
in one device call.

The variants are -D switches of int4_moe.cu / moe_common.cuh of commit bff3743 (the commit after it removed them
again, since none was kept): run this script there (`git checkout bff3743`), where every switch at 0 compiles to the
committed kernel's SASS (nvcc 13.0, diffed). A lookahead asks the copy engine (cp.async.bulk.prefetch.L2, fire and forget, no
registers) to bring a later phase-1 item's gate and up codes and scales (the block's row tiles) into L2, so that
HBM has more bytes in flight than the warps' 2-deep register stages hold and the item's loads hit L2:
  next         -DMOE_P1_LOOKAHEAD=1: the block's own next ticket (claimed at the item's start, as now), prefetched by
               warp 0 once its first loads of the current item are in flight (its wait for the ticket overlaps
               them); one bulk request per array (lanes 0-3).
  next_spread  the same, each code array in 16 pieces (lanes 0-15 gate, 16-31 up).
  next_p1only  next without the committed phase-2 prefetch of the down weights (-DMOE_L2_PREFETCH=0).
  grid1        -DMOE_P1_LOOKAHEAD=2: no wait: at each phase-1 item's start the last warp prefetches ticket +
               gridDim.x, about the item the grid takes one round later (any block may take it: L2 is shared).
  grid2        ticket + 2 gridDim.x (-DMOE_P1_DIST=2): two rounds ahead.
  grid1_spread grid1 with each code array in 16 pieces.
  ticket       -DMOE_TICKET_LATE=1 (run 14): the first ticket stored to shared memory before the routing's last
               barrier instead of right after its atomic.

Correctness in the same call, on runtime/kernel_bench.py's rotated layers at every model and T: three routings per
variant against the reference (moe_int4_reference on the GPU, rel err <= 1e-2), every output element written (NaN
poison), counters re-armed, a rerun bit-identical, and every variant bit-identical to the committed kernel
(prefetches and ticket order change no arithmetic); at T = 2 a token naming one expert twice and an id outside
[0, E) (flagged). Times alternate variant by variant over ROUNDS rounds at the committed tuned launch parameters.

Usage (repository root of commit bff3743, after `pip install -e .`):
    python3 runtime/results/l2_lookahead.py   # writes $OUT/l2_lookahead.json, prints a table
    ncu --clock-control none --kernel-name regex:moe_int4 --metrics ... python3 runtime/results/l2_lookahead.py --ncu
        # one launch per variant in PROFILED on phi-3.5-moe and mixtral-8x7b at T = 1 and 16, in the printed order
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from dequant_views import build, call_of, committed_config  # noqa: E402 - run 13's layer and launch
from small_t_levers import launch_once, passed, rel_err  # noqa: E402 - run 14's checks

from moespeq.runtime.kernel_source import kernel_source  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2, 4, 8, 16)
ROUNDS, ITERS = 5, 100
VARIANTS = {"committed": (), "next": ("-DMOE_P1_LOOKAHEAD=1",),
            "next_spread": ("-DMOE_P1_LOOKAHEAD=1", "-DMOE_P1_SPREAD=1"),
            "next_p1only": ("-DMOE_P1_LOOKAHEAD=1", "-DMOE_L2_PREFETCH=0"),
            "grid1": ("-DMOE_P1_LOOKAHEAD=2",), "grid2": ("-DMOE_P1_LOOKAHEAD=2", "-DMOE_P1_DIST=2"),
            "grid1_spread": ("-DMOE_P1_LOOKAHEAD=2", "-DMOE_P1_SPREAD=1"), "ticket": ("-DMOE_TICKET_LATE=1",)}


def modules():
    import cupy

    from moespeq.runtime.moe_kernels import _OPTIONS  # the committed kernel's compile options

    return {v: cupy.RawModule(code=kernel_source("int4_moe"), options=(*_OPTIONS["int4_moe"], *opts))
            for v, opts in VARIANTS.items()}


def check(fns, lb, tokens, cfg, x, ids, w, layer, ref) -> dict:
    """Per variant: rel err vs ref (None: no ref), written, re-armed, rerun identical, error flags, identical to
    the committed kernel."""
    outs, rows = {}, {}
    for v, fn in fns.items():
        y, written, rearmed, flags = launch_once(fn, lb, tokens, cfg, 0, x, ids, w, layer)
        y2, _, _, _ = launch_once(fn, lb, tokens, cfg, 0, x, ids, w, layer)
        outs[v] = y
        rows[v] = {"rel_err": rel_err(y, ref) if ref is not None else None, "written": written, "rearmed": rearmed,
                   "rerun_identical": bool((y2 == y).all()), "error_flags": flags,
                   "identical_to_committed": bool((y == outs["committed"]).all())}
    return rows


def correctness(fns, lb, tokens, cfg) -> list[dict]:
    from moespeq.runtime.reference import moe_int4_reference

    sets, xs, checks = lb.routing(tokens), lb.xs[tokens], []
    for i in range(3):  # three routings, inputs and weight copies
        r, x, layer = sets[i], xs[i], lb.int4_layers[i % len(lb.int4_layers)]
        checks.append(check(fns, lb, tokens, cfg, x, r.ids, r.w, layer, moe_int4_reference(x, r.ids, r.w, layer)))
    return checks


def odd_ids(fns, lb) -> tuple[dict, bool]:
    """T = 2: token 0 names one expert twice, token 1 an id outside [0, E); every variant flags it alike."""
    sets, k, e = lb.routing(2), lb.geo.top_k, lb.geo.experts
    ids = sets[0].ids.copy()
    ids[0, min(1, k - 1)] = ids[0, 0]
    ids[1, 0] = e + 3
    rows = check(fns, lb, 2, committed_config(lb.geo, 2), lb.xs[2][0], ids, sets[0].w, lb.int4_layers[0], None)
    return rows, passed(rows) and all(r["error_flags"] == 1 for r in rows.values())


def timed(fns, lb, t, cfg) -> dict[str, list[float]]:
    import cupy

    from moespeq.runtime.timing import median_time_s

    outs = {v: cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16) for v in fns}
    calls = {v: call_of(lb, fn, t, cfg, outs[v]) for v, fn in fns.items()}
    times: dict[str, list[float]] = {v: [] for v in fns}
    for _ in range(ROUNDS):  # alternate, so that drift in clocks or temperature hits every variant alike
        for v in fns:
            times[v].append(median_time_s(calls[v], iters=ITERS) * 1e6)
    return times


PROFILED = ("committed", "next", "grid1")


def profile_launches() -> None:
    """One launch of each PROFILED variant per model and T (for Nsight Compute, which flushes L2 between kernels)."""
    import cupy

    from moespeq.runtime.moe_kernels import _OPTIONS

    mods = {v: cupy.RawModule(code=kernel_source("int4_moe"), options=(*_OPTIONS["int4_moe"], *VARIANTS[v]))
            for v in PROFILED}
    for name in ("phi-3.5-moe", "mixtral-8x7b"):
        lb = build(name)
        for t in (1, 16):
            cfg, out = committed_config(lb.geo, t), cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16)
            for v, m in mods.items():
                call_of(lb, m.get_function("moe_int4_t8" if t <= 8 else "moe_int4_t16"), t, cfg, out)(0)
                cupy.cuda.runtime.deviceSynchronize()  # SYNC: one profiled launch at a time
                sys.stdout.write(f"launch: {name} T={t} {v}\n")
        del lb
        cupy.get_default_memory_pool().free_all_blocks()


def main() -> None:
    import cupy

    if "--ncu" in sys.argv:
        profile_launches()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    mods = modules()
    result = {"variants": {v: list(o) for v, o in VARIANTS.items()}, "rounds": ROUNDS, "iters": ITERS,
              "registers": {v: {f: m.get_function(f).num_regs for f in ("moe_int4_t8", "moe_int4_t16")}
                            for v, m in mods.items()},
              "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rows": [], "odd_ids": {}}
    all_ok = True
    for name in MODELS:
        lb = build(name)
        result["odd_ids"][name], ok_odd = odd_ids({v: m.get_function("moe_int4_t8") for v, m in mods.items()}, lb)
        all_ok &= ok_odd
        sys.stdout.write(f"{name:18s} duplicate and bad ids {'ok' if ok_odd else 'FAILED'}\n")
        for t in TOKENS:
            cfg = committed_config(lb.geo, t)
            fns = {v: m.get_function("moe_int4_t8" if t <= 8 else "moe_int4_t16") for v, m in mods.items()}
            checks = correctness(fns, lb, t, cfg)
            ok = all(passed(rows) for rows in checks)
            all_ok &= ok
            times = timed(fns, lb, t, cfg)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            result["rows"].append({"model": name, "tokens": t, "config": cfg.to_dict(), "checks": checks,
                                   "checks_passed": ok, "us": times, "median_us": med})
            worst = max(rows[v]["rel_err"] for rows in checks for v in fns)
            sys.stdout.write(f"{name:18s} T={t:2d} (err {worst:.1e}{'' if ok else ', CHECK FAILED'}): " + "  ".join(
                f"{v} {med[v]:.1f} ({min(times[v]):.1f}-{max(times[v]):.1f}) {100 * (med[v] / med['committed'] - 1):+.1f}%"
                for v in fns) + "\n")
        del lb
        cupy.get_default_memory_pool().free_all_blocks()
    result["all_checks_passed"] = all_ok
    (OUT / "l2_lookahead.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(f"all checks passed: {all_ok}\n")


if __name__ == "__main__":
    main()
