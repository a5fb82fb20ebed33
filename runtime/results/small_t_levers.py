"""Run 14's small-T experiment (runtime/results/small_t_levers_run14b_h200.json): the two levers the README listed as
untried for the tiled INT4 kernel at T <= 2, timed side by side with the committed kernel in one device call.

The variants are -D switches of the kernel of commit 891591b (the commit after it removed them again, since none
was kept): run this script there (`git checkout 891591b`), where every switch at 0 gives the committed kernel.

  bias      -DMOE_INT4_BIAS=1: phase 1 (gate, up) of the T <= 8 entry dequantizes to 136 + q (no bf16x2
            subtraction, 4 of 11 instructions per packed word) and adds -136 * (sum of the group's x) per group and
            token column before the scale; the sums are made once per block (8 loads per thread in flight, the
            first 8 during the routing) into the routing's first-slot table.
  bias_dyn  the same, the sums in dynamic shared memory (-DMOE_BIAS_DYNAMIC=1).
  ticket    -DMOE_TICKET_LATE=1: the block's first ticket stored to shared memory just before the routing's last
            barrier instead of right after its atomic (where warp 0 waits for the round trip before routing).
  route     -DMOE_ROUTE_WARP=1 with ticket: T * K <= 32 routed by warp 0 alone (one match per slot, one barrier
            instead of four, no first-slot table over E).
  both      bias and route.
Run 14a (small_t_levers_run14a_h200.json) timed an earlier state, not committed: bias with the sums in dynamic
shared memory made by a loop of one 16-byte load per thread and pass (x prefetched to L1 first), route with the
first ticket claimed by the last warp and no ticket variant.

Correctness in the same call, on runtime/kernel_bench.py's rotated layers at every model and T: three routings per
variant against the reference (moe_int4_reference on the GPU, rel err <= 1e-2), every output element written (NaN
poison), counters re-armed, a rerun bit-identical; ticket and route bit-identical to the committed kernel, both and
bias_dyn to bias. Edge cases once per model at T = 2: a token naming one expert twice, an id outside [0, E)
(flagged), and x of mean 1 (the largest -136 sum x) against the reference. Times alternate variant by variant over
ROUNDS rounds at the committed tuned launch parameters.

Usage (repository root of commit 891591b, after `pip install -e .`):
    python3 runtime/results/small_t_levers.py   # writes $OUT/small_t_levers.json, prints a table
"""

import json
import os
import statistics
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).parent))
from dequant_views import build, call_of, committed_config  # noqa: E402 - the run-13 experiment's layer and launch

from moespeq.runtime.kernel_source import kernel_source  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2, 4, 8, 16)
ROUNDS, ITERS = 5, 100
VARIANTS = {"committed": (), "bias": ("-DMOE_INT4_BIAS=1",), "bias_dyn": ("-DMOE_INT4_BIAS=1", "-DMOE_BIAS_DYNAMIC=1"),
            "ticket": ("-DMOE_TICKET_LATE=1",), "route": ("-DMOE_ROUTE_WARP=1", "-DMOE_TICKET_LATE=1"),
            "both": ("-DMOE_INT4_BIAS=1", "-DMOE_ROUTE_WARP=1", "-DMOE_TICKET_LATE=1")}
# bit-identical pairs: where the sums live, who routes and when the ticket is stored change no arithmetic
SAME_AS = {"bias_dyn": "bias", "ticket": "committed", "route": "committed", "both": "bias"}


def modules():
    import cupy

    from moespeq.runtime.moe_kernels import _OPTIONS  # the committed kernel's compile options

    return {v: cupy.RawModule(code=kernel_source("int4_moe"), options=(*_OPTIONS["int4_moe"], *opts))
            for v, opts in VARIANTS.items()}


def shared_bytes(variant: str, tokens: int, hidden: int) -> int:
    """Dynamic shared memory: bias_dyn's x group sums [T, D/128] fp32 (T <= 8 entry only)."""
    return 4 * tokens * hidden // 128 if "-DMOE_BIAS_DYNAMIC=1" in VARIANTS[variant] and tokens <= 8 else 0


def rel_err(got, ref) -> float:
    from moespeq.runtime.bf16 import from_bf16

    g, r = from_bf16(got).astype("float64"), from_bf16(ref).astype("float64")
    return float(((g - r) ** 2).sum() ** 0.5 / (r**2).sum() ** 0.5)  # SYNC: correctness check before timing


def launch_once(fn, lb, tokens, cfg, shared, x, ids, w, layer):
    """One launch on explicit inputs into a NaN-poisoned output; (output, written, counters re-armed, error flags)."""
    import cupy

    from moespeq.runtime.kernel_bench import Routing

    ws = lb.workspace
    one = SimpleNamespace(routing=lambda _t: [Routing(ids, w, [], None)], xs={tokens: [x]}, int4_layers=[layer],
                          geo=lb.geo, workspace=ws)  # the part of LayerBench that call_of reads, with these inputs
    out = cupy.full((tokens, lb.geo.hidden), 0xFFFF, dtype=cupy.uint16)
    call_of(one, fn, tokens, cfg, out, shared)(0)
    flags = int(ws.counters[3].get())  # SYNC: correctness check before timing (counters[3]: error flags)
    ws.counters[3] = 0
    rearmed = not bool(ws.counters[:3].any()) and not bool(ws.counters[4:].any())
    return out, not bool((out == 0xFFFF).any()), rearmed, flags


def check(fns, lb, tokens, cfg, x, ids, w, layer, ref):
    """Per variant: rel err vs ref, written, re-armed, rerun identical, error flags; pairs of SAME_AS identical."""
    outs, rows = {}, {}
    for v, fn in fns.items():
        shared = shared_bytes(v, tokens, lb.geo.hidden)
        y, written, rearmed, flags = launch_once(fn, lb, tokens, cfg, shared, x, ids, w, layer)
        y2, _, _, _ = launch_once(fn, lb, tokens, cfg, shared, x, ids, w, layer)
        outs[v] = y
        rows[v] = {"rel_err": rel_err(y, ref) if ref is not None else None, "written": written, "rearmed": rearmed,
                   "rerun_identical": bool((y2 == y).all()), "error_flags": flags}
    for v, base in SAME_AS.items():
        rows[v]["identical_to_" + base] = bool((outs[v] == outs[base]).all())
    return rows, outs


def passed(rows) -> bool:
    return all(r["written"] and r["rearmed"] and r["rerun_identical"] and (r["rel_err"] is None or r["rel_err"] <= 1e-2)
               and all(ok for k, ok in r.items() if k.startswith("identical_to_")) for r in rows.values())


def correctness(fns, lb, tokens, cfg):
    from moespeq.runtime.reference import moe_int4_reference

    sets, xs, checks = lb.routing(tokens), lb.xs[tokens], []
    for i in range(3):  # three routings, inputs and weight copies
        r, x, layer = sets[i], xs[i], lb.int4_layers[i % len(lb.int4_layers)]
        rows, _ = check(fns, lb, tokens, cfg, x, r.ids, r.w, layer, moe_int4_reference(x, r.ids, r.w, layer))
        checks.append(rows)
    return checks


def edge_cases(fns, lb, cfg):
    """T = 2: a duplicate id in token 0, an id outside [0, E) in token 1, then x of mean 1 against the reference."""
    import cupy

    from moespeq.runtime.bf16 import to_bf16
    from moespeq.runtime.reference import moe_int4_reference

    sets, layer, k, e = lb.routing(2), lb.int4_layers[0], lb.geo.top_k, lb.geo.experts
    ids = sets[0].ids.copy()
    ids[0, min(1, k - 1)] = ids[0, 0]
    ids[1, 0] = e + 3
    x = lb.xs[2][0]
    odd, outs = check(fns, lb, 2, cfg, x, ids, sets[0].w, layer, None)
    odd["committed_flags_bad_id"] = odd["committed"]["error_flags"] == 1
    x1 = to_bf16(1.0 + 0.1 * cupy.random.standard_normal((2, lb.geo.hidden), dtype=cupy.float32))
    r = sets[1]
    mean1, _ = check(fns, lb, 2, cfg, x1, r.ids, r.w, layer, moe_int4_reference(x1, r.ids, r.w, layer))
    return {"duplicate_and_bad_id": odd, "x_mean_1": mean1}


def main() -> None:
    import cupy

    from moespeq.runtime.timing import median_time_s

    OUT.mkdir(parents=True, exist_ok=True)
    mods = modules()
    result = {"variants": {v: list(o) for v, o in VARIANTS.items()}, "rounds": ROUNDS, "iters": ITERS,
              "registers": {v: {f: m.get_function(f).num_regs for f in ("moe_int4_t8", "moe_int4_t16")}
                            for v, m in mods.items()},
              "device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rows": [], "edge_cases": {}}
    all_ok = True
    for name in MODELS:
        lb = build(name)
        result["edge_cases"][name] = edge = edge_cases({v: m.get_function("moe_int4_t8") for v, m in mods.items()},
                                                       lb, committed_config(lb.geo, 2))
        ok_edge = (passed({v: r for v, r in edge["duplicate_and_bad_id"].items() if isinstance(r, dict)})
                   and edge["duplicate_and_bad_id"]["committed_flags_bad_id"] and passed(edge["x_mean_1"]))
        all_ok &= ok_edge
        sys.stdout.write(f"{name:18s} edge cases {'ok' if ok_edge else 'FAILED'}: x mean 1 rel err " + " ".join(
            f"{v} {r['rel_err']:.2e}" for v, r in edge["x_mean_1"].items()) + "\n")
        for t in TOKENS:
            cfg = committed_config(lb.geo, t)
            fns = {v: m.get_function("moe_int4_t8" if t <= 8 else "moe_int4_t16") for v, m in mods.items()}
            checks = correctness(fns, lb, t, cfg)
            ok = all(passed(rows) for rows in checks)
            all_ok &= ok
            outs = {v: cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16) for v in fns}
            calls = {v: call_of(lb, fn, t, cfg, outs[v], shared_bytes(v, t, lb.geo.hidden)) for v, fn in fns.items()}
            times = {v: [] for v in fns}
            for _ in range(ROUNDS):  # alternate, so that drift in clocks or temperature hits every variant alike
                for v in fns:
                    times[v].append(median_time_s(calls[v], iters=ITERS) * 1e6)
            med = {v: statistics.median(ts) for v, ts in times.items()}
            result["rows"].append({"model": name, "tokens": t, "config": cfg.to_dict(), "checks": checks,
                                   "checks_passed": ok, "us": times, "median_us": med})
            worst = {v: max(rows[v]["rel_err"] for rows in checks) for v in fns}
            sys.stdout.write(f"{name:18s} T={t:2d}: " + "  ".join(
                f"{v} {med[v]:6.2f} ({min(times[v]):.2f}-{max(times[v]):.2f}, {100 * (med[v] / med['committed'] - 1):+.1f} %,"
                f" err {worst[v]:.1e})" for v in fns) + ("" if ok else "  CHECK FAILED") + "\n")
        del lb
        cupy.get_default_memory_pool().free_all_blocks()
    result["all_checks_passed"] = all_ok
    (OUT / "small_t_levers.json").write_text(json.dumps(result, indent=1) + "\n")
    sys.stdout.write(f"all checks passed: {all_ok}\n")


if __name__ == "__main__":
    main()
