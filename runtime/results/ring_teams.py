"""Run 20's measurements of the INT4 kernel's bulk-copy ring (int4_moe.cu's moe_int4_ring_t8, T <= 8) on the H200,
side by side in one call each, the four benchmark models at T = 1 and 2 (where the ring serves; at T >= 4 the tuner
keeps the register path).

Variants are KERNEL/SHAPE: SHAPE as bulk_ring.RING plus SHAPES ("wNbMcK": N consumer warps, M blocks per SM, stages
of K 64-wide chunks; as many stages as fit beside x, at most 16, at least 2, else the variant is left out), KERNEL
the ring source of this checkout with the text changes of KERNELS applied:
  main      the ring as committed (main, 77f8b48)
  small     static shared memory cut from 34,176 to ~18 KB: the k-split sum space for 4 consumer warps instead of 8
            and the routing for 64 slots (T * K) instead of 128 (valid here: 4 consumers, T * K <= 12), so that a
            third block per SM, or a deeper ring, fits
  nofence   timing only: the item outputs without their __threadfence (what the fences cost the consumers)
"register" is the register path at the tuner's fastest register candidate (tune_timings_h200.json of run 19),
"tuned" launch_moe_int4 at runtime/configs/NVIDIA_H200.json's parameters (run 19: the ring w4b2c16 at T = 1 for
phi, mixtral, qwen1.5). Every variant is first checked on three routings against the reference (rel err <= 1e-2,
every output written, counters re-armed, a rerun bit-identical), again after the timing on one routing (timing-only
kernels too, reported apart); a bad id is flagged by the small ring. Times alternate variant by variant over ROUNDS
rounds of ITERS calls on rotated weight copies and routings (each call another routing and another copy).

Run 20b (ring_teams_run20b_h200.json) is this script at commit 032a7a4, before the ring took the smaller routing table
(KERNELS' 'small' assumes main's kernel text). Run 20a (ring_teams_run20a_h200.json) is this script at commit 2443713, whose ring had two changes measured against
main's: two teams of 4 consumer warps taking an item's stages in turn at 8 consumers, and phase 1's bias as the
first mma's accumulator input; its variants are main/SHAPE (--baseline DIR: the device checkout's main kernels) and
k20/SHAPE.

Usage (repository root, after `pip install -e .`):
    python3 runtime/results/ring_teams.py             # $OUT/ring_teams.json, prints the table (run 20b)
    python3 runtime/results/ring_teams.py --table runtime/results/ring_teams_run20b_h200.json
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
SHAPES = {"w4b2c8": (4, 2, 8), "w4b3c8": (4, 3, 8), "w4b3c16": (4, 3, 16), "w4b4c8": (4, 4, 8), "w4b1c16": (4, 1, 16)}
KERNELS = {"main": (), "small": (("float red[2][MOE_MAX_WARPS][8][32];", "float red[2][4][8][32];"),
                                 ("#define MOE_MAX_SLOTS 128", "#define MOE_MAX_SLOTS 64")),
           "nofence": (("            __threadfence();  // h visible device-wide", "            // h visible device-wide"),
                       ("        dst[1] = tile4[1];\n        __threadfence();", "        dst[1] = tile4[1];"))}
TIMING_ONLY = ("nofence",)
VARIANTS = ("main/w4b2c16", "main/w4b2c8", "main/w4b3c8", "main/w4b1c16", "small/w4b2c16", "small/w4b3c16",
            "small/w4b3c8", "small/w4b4c8", "nofence/w4b2c16")


def compile_ring(changes):
    """The ring entry of this checkout's int4_moe text with each (old, new) of changes made (each found once)."""
    import cupy

    from moespeq.runtime.kernel_source import kernel_source
    from moespeq.runtime.moe_kernels import _OPTIONS

    text = kernel_source("int4_moe")
    for old, new in changes:
        assert text.count(old) == 1, old
        text = text.replace(old, new)
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
    bad = {v: bulk_ring.bad_id_flagged(lb, fns["small"], v.split("/")[1]) for v in VARIANTS
           if v.startswith("small/") and bulk_ring.ring_stages(fns["small"], v.split("/")[1], 2, lb.geo.hidden)}
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows, bad


def table(path: str) -> str:
    """Markdown: µs per variant (% against main/w4b2c16, run 19's ring), then the fastest ring that is not main's
    or timing only against the 3x thresholds of bench_kernels_h200.json (cupy.matmul / 3; run 20's gpu_check)."""
    d = json.loads(Path(path).read_text())
    bench = json.loads((Path(__file__).parent / "bench_kernels_h200.json").read_text())
    mm = {(b["model"], b["tokens"]): b["cupy.matmul_us"] for b in bench["rows"]}
    names = list(dict.fromkeys(v for r in d["rows"] for v in r["median_us"]))
    out = ("| model | T | " + " | ".join(names) + " | fastest new | 3x needs <= |\n" + "|---" * (len(names) + 4)
           + "|\n")
    for r in d["rows"]:
        med, base = r["median_us"], r["median_us"].get("main/w4b2c16")
        cells = [(f"{med[v]:.1f}" + (f" ({100 * (med[v] / base - 1):+.1f} %)" if base and v != "main/w4b2c16" else ""))
                 if v in med else "-" for v in names]
        new = {v: med[v] for v in med if "/" in v and v.split("/")[0] not in ("main", *TIMING_ONLY)}
        best = min(new, key=new.get) if new else None
        m = mm.get((r["model"], r["tokens"]))
        out += (f"| {r['model']} | {r['tokens']} | " + " | ".join(cells) + " | "
                + (f"{best} {new[best]:.1f}" if best else "-") + " | " + (f"{m / 3:.1f}" if m else "-") + " |\n")
    return out


def main() -> None:
    if "--table" in sys.argv:
        sys.stdout.write(table(sys.argv[sys.argv.index("--table") + 1]))
        return
    import cupy

    OUT.mkdir(parents=True, exist_ok=True)
    bulk_ring.RING.update(SHAPES)
    fns = {k: compile_ring(changes) for k, changes in KERNELS.items()}
    result = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rounds": ROUNDS, "iters": ITERS,
              "kernels": KERNELS, "timing_only": TIMING_ONLY, "registers": {k: fn.num_regs for k, fn in fns.items()},
              "static_shared_bytes": {k: fn.shared_size_bytes for k, fn in fns.items()},
              "rows": [], "bad_id_flagged": {}}
    sys.stdout.write(json.dumps({k: result[k] for k in ("registers", "static_shared_bytes")}) + "\n")
    bulk_ring.measure_models(result, MODELS, lambda name: measure(name, fns), OUT / "ring_teams.json", table,
                             counted=lambda v: v.split("/")[0] not in TIMING_ONLY)


if __name__ == "__main__":
    main()
