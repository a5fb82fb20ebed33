"""Run 22's measurements of the INT4 kernel's bulk-copy ring (int4_moe.cu's moe_int4_ring_t8, T <= 8) on the H200,
side by side in one call each, the four benchmark models at T = 1 and 2 (where the ring serves).

Variants are KERNEL/SHAPE, SHAPE as bulk_ring.RING ("wNbMcK": N consumer warps, M blocks per SM, stages of K 64-wide
chunks; "dD": at most D stages; as many as fit, at most 16, at least 2, else the variant is left out), KERNEL one of
KERNELS: a ring source (a file the call ships beside the checkout, or this checkout's), -D options, the warps per
block besides the consumers, and the item sums' bytes per consumer warp in dynamic shared memory (0: static):
  base   the ring of runs 20-21 (commit f0cc656's int4_moe.cu): each item's output (the sum over the consumer warps,
         h and its count, or the phase-2 partial and reduction) done by one consumer warp in turn, after a barrier
         of all consumers; one helper warp (the producer)
  ow     commit 6482b3a's ring with -DRING_EARLY_DOWN=0: an output warp per block takes each item's sums from shared
         memory and does its output, so the consumers neither meet at a barrier nor wait on the fences
  owed   commit 6482b3a's ring: ow, and the producer copies a phase-2 item's down weights before its expert's phase 1
         is complete (h follows once it is), so the last expert's down projection streams under phase 1's tail
  dyn    commit 8ebe68e's ring: owed with the item sums in dynamic shared memory, 2 KB per consumer warp instead of
         16 KB static for 8, so that 4 consumers get 8 KB more for stages
  red4   commit 6adb465's ring: dyn with 4 items' sums waiting for the output warp instead of 2 (4 KB per consumer)
  diag1, diag2  timing only (wrong results): red4 with RING_DIAG=1 (the consumers skip the groups: the stream, the
         syncs and the outputs alone) and RING_DIAG=2 (each slot filled on its first use only: no weight traffic
         after, the consumers alone on stale bytes), as run 19c's switches
  ring   this checkout's ring (run 22f: at 2 or 4 splits of F in the down projection, so that phase-2 items are
         smaller and the blocks' last items end closer together)
Run 22a (output_warp_run22a_h200.json) compared base, ow and owed (this script at commit 6482b3a, BASE the f0cc656
file); run 22b (output_warp_run22b_h200.json) owed against dyn (at 8ebe68e); run 22d (output_warp_run22d_h200.json)
dyn, red4 and the diagnostics, this script as it is, at commit 6adb465, the only one whose ring has RING_RED_SLOTS
and RING_DIAG (red4 lost, and the next commit took both out): to run it again, `git checkout 6adb465`; run 22f
(output_warp_run22f_h200.json) the ring at 1, 2 and 4 splits (SHAPES' fifth field; before it, every shape had 1).
"register" is the register path at the fastest register candidate of tune_timings_h200.json, "tuned" launch_moe_int4
at runtime/configs/NVIDIA_H200.json (runs 22a-d: run 20's files; 22f: run 22's; this checkout's ring where they name
one). Every variant is first checked on three routings against the
reference (rel err <= 1e-2, every output written, counters re-armed, a rerun bit-identical), again after the timing
on one routing; a bad id is flagged by the newest kernel. Times alternate variant by variant over ROUNDS rounds of
ITERS calls on rotated weight copies and routings.

OVERLAP (phi-3.5-moe and mixtral-8x7b, T = 1): the benchmark's copy/compute overlap (bench_kernels.bench_copies: 8
expert copies through the store on the copy stream against as many INT4 layers as take as long on the compute
stream) for the register path and ring variants, in alternating rounds: run 21 saw phi's fall to 92.1 % when the
tuner took 16-chunk stages.

Usage (repository root, after `pip install -e .`; the other kernels' files under .k22base/):
    python3 runtime/results/output_warp.py             # $OUT/output_warp.json, prints the tables
    python3 runtime/results/output_warp.py --table runtime/results/output_warp_run22b_h200.json
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bulk_ring  # noqa: E402 - run 19's ring harness
import ring_teams  # noqa: E402 - run 20's checks and register calls
from dequant_views import build, committed_config  # noqa: E402

OUT = Path(os.environ.get("OUT", "/tmp/out"))
SHIPPED = Path(".k22base")
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2)
# (consumer warps, blocks per SM, chunks per stage, most stages or 0, splits of F in the down projection)
SHAPES = {"w4b2c16": (4, 2, 16, 0, 1), "w4b2c16d3": (4, 2, 16, 3, 1), "w4b2c16d3j2": (4, 2, 16, 3, 2),
          "w4b2c16d3j4": (4, 2, 16, 3, 4), "w4b2c16j2": (4, 2, 16, 0, 2), "w4b3c16j2": (4, 3, 16, 0, 2)}
# name: (source file under SHIPPED, or None for this checkout's), -D options, helper warps, sum bytes per consumer
KERNELS = {"ring": (None, (), 2, 2048)}
TIMING_ONLY = ()
REFERENCE = "ring/w4b2c16d3"  # the table's percentages are against this variant
VARIANTS = tuple(f"{k}/{s}" for k in KERNELS for s in SHAPES)
OVERLAP_MODELS, OVERLAP_VARIANTS, OVERLAP_ROUNDS = (), (), 3


def compile_kernels() -> dict:
    import cupy

    from moespeq.runtime.kernel_source import COMMON_HEADER, KERNEL_DIR, kernel_source
    from moespeq.runtime.moe_kernels import _OPTIONS

    fns = {}
    for k, (file, opts, _, _) in KERNELS.items():
        text = kernel_source("int4_moe") if file is None else (SHIPPED / file).read_text().replace(
            f'#include "{COMMON_HEADER}"', (KERNEL_DIR / COMMON_HEADER).read_text())
        fn = cupy.RawModule(code=text, options=(*_OPTIONS["int4_moe"], *opts)).get_function("moe_int4_ring_t8")
        fn.max_dynamic_shared_size_bytes = bulk_ring.SMEM_PER_BLOCK - fn.shared_size_bytes
        fns[k] = fn
    return fns


def dynamic_bytes(v: str, stages: int, tokens: int, hidden: int) -> int:
    kernel, shape = v.split("/")
    warps, _, chunks, _, _ = SHAPES[shape]
    return bulk_ring.ring_bytes(chunks, stages, tokens, hidden) + KERNELS[kernel][3] * warps


def fits(fns, v: str, tokens: int, hidden: int) -> int:
    """The most stages of variant v that fit the shared memory of its blocks (0: fewer than 2)."""
    kernel, shape = v.split("/")
    _, blocks, _, depth, _ = SHAPES[shape]
    budget = min(bulk_ring.SMEM_PER_BLOCK, bulk_ring.SMEM_PER_SM // blocks - bulk_ring.SMEM_RESERVED) - fns[
        kernel].shared_size_bytes
    stages = max(s for s in range((depth or bulk_ring.MAX_STAGES) + 1)
                 if s == 0 or dynamic_bytes(v, s, tokens, hidden) <= budget)
    return stages if stages >= 2 else 0


def ring_call(lb, fns, tokens: int, v: str, out, sets=None, xs=None):
    """One launch of variant v per call i on routing, x and weight copy i (rotated), like lb.int4_call."""
    kernel, shape = v.split("/")
    warps, blocks, chunks, _, splits = SHAPES[shape]
    stages = fits(fns, v, tokens, lb.geo.hidden)
    return bulk_ring.ring_launches(lb, fns[kernel], tokens, out, blocks, warps + KERNELS[kernel][2], chunks, stages,
                                   dynamic_bytes(v, stages, tokens, lb.geo.hidden), splits, sets=sets, xs=xs)


def ring_launch(lb, fns, tokens: int, v: str):
    """launch(i, y): routing / x / weight copy i into y through variant v."""
    def launch(i, y):
        ring_call(lb, fns, tokens, v, y)(i)
    return launch


def measure(name: str, fns: dict) -> tuple[list[dict], dict]:
    import cupy

    lb, rows = build(name), []
    for t in TOKENS:
        refs = bulk_ring.references(lb, t)
        out = cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16)
        launches, calls = {}, {}
        configs = {"register": ring_teams.register_config(name, t), "tuned": committed_config(lb.geo, t)}
        for v, cfg in configs.items():
            launches[v], calls[v] = ring_teams.register_call(lb, t, cfg, out)
        for v in VARIANTS:
            if fits(fns, v, t, lb.geo.hidden):
                launches[v] = ring_launch(lb, fns, t, v)
                calls[v] = ring_call(lb, fns, t, v, out)
        checks = {v: ring_teams.check_launch(lb, launch, t, v, refs) for v, launch in launches.items()}
        times = bulk_ring.alternate(calls)
        after = {v: ring_teams.check_launch(lb, launch, t, v, refs, routings=1) for v, launch in launches.items()}
        med = {v: statistics.median(ts) for v, ts in times.items()}
        rows.append({"model": name, "tokens": t, "configs": {v: c.to_dict() for v, c in configs.items()},
                     "ring_stages": {v: fits(fns, v, t, lb.geo.hidden) for v in calls if "/" in v},
                     "checks": checks, "checks_after_timing": after, "us": times, "median_us": med})
        sys.stdout.write(f"{name} T={t}: " + " ".join(
            f"{v} {us:.1f}{'' if checks[v]['passed'] and after[v]['passed'] else ' FAILED'}" for v, us in med.items())
            + "\n")
        sys.stdout.flush()
    newest = list(KERNELS)[-1]
    bad = {v: bulk_ring.bad_id_flagged(lb, None, v, lambda lb, t, v, y, sets, xs: ring_call(lb, fns, t, v, y, sets, xs))
           for v in VARIANTS if v.startswith(f"{newest}/") and fits(fns, v, 2, lb.geo.hidden)}
    if name in OVERLAP_MODELS:
        rows[0]["overlap"] = overlap(lb, fns)
        sys.stdout.write(f"{name} T=1 overlap: " + " ".join(
            f"{v} {100 * statistics.median(e):.1f}" for v, e in rows[0]["overlap"]["efficiency"].items()) + "\n")
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows, bad


def overlap(lb, fns) -> dict:
    """bench_kernels.bench_copies' overlap measurement for each layer call, OVERLAP_ROUNDS alternating rounds."""
    import cupy

    from moespeq.runtime.backend import get_backend
    from moespeq.runtime.copy_bench import overlap_efficiency
    from moespeq.runtime.expert_store import ExpertStore
    from moespeq.runtime.timing import median_time_s

    geo, n_copies = lb.geo, 8
    compute = cupy.cuda.Stream(non_blocking=True)
    store = ExpertStore(geo, layers=1, slots=2, backend=get_backend("cupy"), compute_stream=compute)
    step = [0]

    def copies() -> None:
        for _ in range(n_copies):
            j = step[0]
            step[0] += 1
            store.prefetch(0, j % geo.experts, j % 2)

    out = cupy.empty((1, geo.hidden), dtype=cupy.uint16)
    calls = {"register": ring_teams.register_call(lb, 1, ring_teams.register_config(lb.spec.name, 1), out)[1]}
    calls.update({v: ring_call(lb, fns, 1, v, out) for v in OVERLAP_VARIANTS if fits(fns, v, 1, geo.hidden)})
    copy_s = median_time_s(lambda i: copies(), iters=5, stream=store.copy_stream) / n_copies
    result = {"efficiency": {v: [] for v in calls}, "runs": {v: [] for v in calls}, "layers_per_run": {}}
    for _ in range(OVERLAP_ROUNDS):
        for v, call in calls.items():
            layers_per_run = max(1, round(n_copies * copy_s / median_time_s(call, iters=50)))
            result["layers_per_run"][v] = layers_per_run

            def layers(call=call, n=layers_per_run) -> None:
                with compute:
                    for i in range(n):
                        call(i)

            o = overlap_efficiency(copies, layers, store.copy_stream, compute)
            result["efficiency"][v].append(o["efficiency"])
            result["runs"][v].append(o)
    return result


def table(path: str) -> str:
    """Markdown: µs per variant (% against the file's reference variant), the fastest variant of the newest kernel
    against the 3x thresholds of bench_kernels_h200.json (cupy.matmul / 3, run 20); then the overlaps."""
    d = json.loads(Path(path).read_text())
    bench = json.loads((Path(__file__).parent / "bench_kernels_h200.json").read_text())
    mm = {(b["model"], b["tokens"]): b["cupy.matmul_us"] for b in bench["rows"]}
    names = list(dict.fromkeys(v for r in d["rows"] for v in r["median_us"]))
    # run 22a's file has no reference field: its reference was run 20-21's tuned ring, base/w4b3c16 (T = 2: w4b3c8)
    ref, alt = d.get("reference", "base/w4b3c16"), "base/w4b3c8"
    newest = d.get("newest", ("ow", "owed"))
    timing_only = d.get("timing_only", ())
    out = ("| model | T | " + " | ".join(names) + " | fastest new | 3x needs <= |\n" + "|---" * (len(names) + 4)
           + "|\n")
    for r in d["rows"]:
        med = r["median_us"]
        base = med.get(ref) or med.get(alt)
        cells = [(f"{med[v]:.1f}" + (f" ({100 * (med[v] / base - 1):+.1f} %)" if v not in (ref, alt) else ""))
                 if v in med else "-" for v in names]
        new = {v: med[v] for v in med if v.split("/")[0] in newest and v.split("/")[0] not in timing_only}
        best = min(new, key=new.get) if new else None
        m = mm.get((r["model"], r["tokens"]))
        out += (f"| {r['model']} | {r['tokens']} | " + " | ".join(cells) + " | "
                + (f"{best} {new[best]:.1f}" if best else "-") + " | " + (f"{m / 3:.1f}" if m else "-") + " |\n")
    over = [r for r in d["rows"] if "overlap" in r]
    if over:
        kinds = list(over[0]["overlap"]["efficiency"])
        out += ("\n| model (T = 1) | " + " | ".join(f"{k} overlap %" for k in kinds) + " |\n"
                + "|---" * (len(kinds) + 1) + "|\n")
        for r in over:
            eff = r["overlap"]["efficiency"]
            out += f"| {r['model']} | " + " | ".join(
                f"{100 * statistics.median(eff[k]):.1f} ({', '.join(f'{100 * e:.1f}' for e in eff[k])})" for k in kinds
            ) + " |\n"
    return out


def main() -> None:
    if bulk_ring.table_asked(table):
        return
    import cupy

    OUT.mkdir(parents=True, exist_ok=True)
    fns = compile_kernels()
    result = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rounds": bulk_ring.ROUNDS,
              "iters": bulk_ring.ITERS, "kernels": KERNELS, "reference": REFERENCE, "newest": [list(KERNELS)[-1]],
              "timing_only": TIMING_ONLY,
              "registers": {k: fn.num_regs for k, fn in fns.items()},
              "static_shared_bytes": {k: fn.shared_size_bytes for k, fn in fns.items()}, "rows": [],
              "bad_id_flagged": {}}
    sys.stdout.write(json.dumps({k: result[k] for k in ("registers", "static_shared_bytes")}) + "\n")
    bulk_ring.measure_models(result, MODELS, lambda name: measure(name, fns), OUT / "output_warp.json", table,
                             counted=lambda v: v.split("/")[0] not in TIMING_ONLY)


if __name__ == "__main__":
    main()
