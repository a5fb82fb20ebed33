"""Run 12's side-by-side timings of the INT4 decode kernel (T <= 2) against the tiled kernel, on
runtime/kernel_bench.py's rotated layers, in one device call (runtime/results/decode_variants_run12*_h200.json).

Variants: the tiled kernel at its run-11 tuned parameters (runtime/configs/NVIDIA_H200.json as committed by
617ee1b; T = 2 uses the T = 1 entry, the nearest), timed before and after the rest; the decode kernel of the
commit that holds this script with a ring of 4 ("ring4", as runtime/moe_kernels.py builds it) or 3 slots per
warp, and two timing-only diagnostics made by editing the source text (wrong results): without the fence
before a range's arrival ("ring4_nofence") and without phase 2 ("ring4_p1only"). Each variant runs every decode
candidate of runtime/tune.py. The correct variants are first checked against the reference (rel err <= 1e-2,
bit-identical on a second launch) at T = 1 and 2 on every benchmark model. Runs 12a and 12b ran this script on
the kernel's earlier states (runtime/results/README.md describes them).

Usage (repository root, on the GPU, after `pip install -e .`):
    python3 runtime/results/decode_variants.py --out $OUT/decode_variants.json
"""

import argparse
import json
import sys
import time
from pathlib import Path

import cupy
import numpy as np

from moespeq.runtime import moe_kernels as mk
from moespeq.runtime.bench_kernels import BENCH_MODELS
from moespeq.runtime.bf16 import from_bf16
from moespeq.runtime.kernel_bench import INT4_BYTES_CAP, LayerBench, _copies, random_int4_experts
from moespeq.runtime.kernel_source import kernel_source
from moespeq.runtime.launch_config import launch_config
from moespeq.runtime.layout import ExpertGeometry
from moespeq.runtime.reference import moe_int4_reference
from moespeq.runtime.timing import median_time_s
from moespeq.runtime.tune import candidates
from moespeq.spec import get_model

ITERS = 50
_FENCE = "    __threadfence();\n    __syncwarp();\n    int last = 0;\n    if (lane == 0) last = atomicAdd(&s."
_PHASE2 = "        else decode_down<S>(R, s, p, wts, ring, t - s.R1);\n"
# label: (ring slots per warp, source edits (old, new, count), results correct)
VARIANTS = {"ring4": (4, (), True), "ring3": (3, (), True),
            "ring4_nofence": (4, ((_FENCE, _FENCE.replace("    __threadfence();\n", ""), 2),), False),
            "ring4_p1only": (4, ((_PHASE2, "", 1),), False)}


def variant_source(edits) -> str:
    text = kernel_source("int4_moe")
    for old, new, count in edits:
        assert text.count(old) == count, (old, text.count(old))
        text = text.replace(old, new)
    return text


def build(name: str) -> LayerBench:
    """INT4 layers only (the bf16 arena is not needed here)."""
    cupy.random.seed(0)
    geo = ExpertGeometry.from_spec(get_model(name))
    n = _copies(geo.top_k * geo.expert_bytes_int4, mk.device_info().l2_bytes, geo.experts * geo.expert_bytes_int4,
                INT4_BYTES_CAP)
    return LayerBench(get_model(name), geo, [random_int4_experts(geo) for _ in range(n)], None, 1, mk.MoeWorkspace(geo))


def decode_call(lb: LayerBench, tokens: int, cfg, fn, stages: int, x=None, ids=None, w=None, out=None):
    """launch_moe_int4's decode branch with another build of the kernel (rotated inputs unless given)."""
    geo, ws = lb.geo, lb.workspace
    smem = mk.decode_shared_bytes(geo.hidden, cfg.warps, stages)
    if smem + fn.shared_size_bytes > 48 * 1024:
        fn.max_dynamic_shared_size_bytes = max(fn.max_dynamic_shared_size_bytes, smem)
    grid = (mk.device_info().sm_count * min(cfg.blocks_per_sm, mk.occupancy(fn, cfg.warps, smem)),)
    ranges = grid[0] * cfg.warps * cfg.ranges_per_warp
    sets, xs = lb.routing(tokens), lb.xs[tokens]
    dst = out if out is not None else cupy.empty((tokens, geo.hidden), dtype=cupy.uint16)

    def call(i):
        r, e = sets[i % 16], lb.int4_layers[i % len(lb.int4_layers)]
        args = (xs[i % 16] if x is None else x, r.ids if ids is None else ids, r.w if w is None else w,
                e.gate.codes, e.gate.scales, e.up.codes, e.up.scales, e.down.codes, e.down.scales, dst, ws.hbuf,
                ws.partial, ws.counters, np.int32(tokens), np.int32(geo.top_k), np.int32(geo.experts),
                np.int32(geo.hidden), np.int32(geo.moe_ffn), np.int32(geo.max_used_experts), np.int32(ranges))
        fn(grid, (32 * cfg.warps,), args, shared_mem=smem)
    return call


def check(lb: LayerBench, tokens: int, cfg, fn, stages: int) -> float:
    """rel err against the reference on the first rotated layer (reported, and flagged when off or not
    bit-identical on a second launch; the timings still run)."""
    r, x = lb.routing(tokens)[0], lb.xs[tokens][0]
    ys = [cupy.full((tokens, lb.geo.hidden), 0x7FC0, dtype=cupy.uint16) for _ in range(2)]
    for y in ys:
        decode_call(lb, tokens, cfg, fn, stages, x, r.ids, r.w, y)(0)
    ref = from_bf16(moe_int4_reference(x, r.ids, r.w, lb.int4_layers[0])).astype(cupy.float64)
    err = float(cupy.linalg.norm(from_bf16(ys[0]) - ref) / cupy.linalg.norm(ref))  # SYNC: check before timing
    same = bool((ys[0] == ys[1]).all())
    if not err <= 1e-2 or not same:
        sys.stdout.write(f"CHECK FAILED {lb.spec.name} T={tokens} {cfg}: rel err {err:.3g}, bit-identical {same}\n")
    return err


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    fns = {}
    for label, (stages, edits, _) in VARIANTS.items():
        options = mk._OPTIONS["int4_moe"] + (f"-DMOE_DECODE_STAGES={stages}",)
        fns[label] = cupy.RawModule(code=variant_source(edits), options=options).get_function("moe_int4_decode")
        sys.stdout.write(f"{label}: {fns[label].num_regs} registers, {fns[label].local_size_bytes} bytes local\n")
    rows, t0 = [], time.time()
    for name in BENCH_MODELS:
        lb = build(name)
        geo = lb.geo
        for t in (1, 2):
            distinct = lb.mean_distinct(t)
            nbytes = distinct * geo.expert_bytes_int4
            tiled = launch_config("moe_int4", mk.device_info().name, geo.hidden, geo.moe_ffn, t)
            res = [("tiled", tiled, median_time_s(lb.int4_call(t, tiled), iters=ITERS), None)]
            decode_cfgs = [c for c in candidates("moe_int4", t, geo.hidden, geo.moe_ffn, lb.workspace.max_splits)
                           if c.path == "decode"]
            for label, fn in fns.items():
                stages, _, correct = VARIANTS[label]
                err = check(lb, t, decode_cfgs[0], fn, stages) if correct else None
                res += [(label, c, median_time_s(decode_call(lb, t, c, fn, stages), iters=ITERS), err)
                        for c in decode_cfgs]
            res.append(("tiled_again", tiled, median_time_s(lb.int4_call(t, tiled), iters=ITERS), None))
            for kind, cfg, s, err in res:
                rows.append({"model": name, "tokens": t, "kind": kind, "config": cfg.to_dict(), "us": s * 1e6,
                             "gbps": nbytes / s / 1e9, "distinct": distinct, "rel_err": err})
            best = {k: min((r for r in res if r[0] == k), key=lambda r: r[2]) for k in ("tiled", "tiled_again", *fns)}
            line = "  ".join(f"{k} {v[2] * 1e6:6.1f}" for k, v in best.items())
            bc = best["ring4"][1]
            sys.stdout.write(f"{name:18s} T={t}: {line} | ring4 w{bc.warps} b{bc.blocks_per_sm} r{bc.ranges_per_warp} "
                             f"{nbytes / best['ring4'][2] / 1e9:.0f} GB/s\n")
        del lb
        cupy.get_default_memory_pool().free_all_blocks()
    args.out.write_text(json.dumps({"command": " ".join(sys.argv), "registers": {k: f.num_regs for k, f in fns.items()},
                                    "rows": rows}, indent=1) + "\n")
    sys.stdout.write(f"timing done in {time.time() - t0:.0f} s\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
