"""Run 11's kernel-variant timings (runtime/results/kernel_variants_run11_h200.json): the INT4 kernels of the
commit that holds this script (tiled with the offset mma, the streaming kernel's candidates) against run 10's
kernel and two -D variants, on runtime/kernel_bench.py's rotated layers, in one device call. A record of how
those numbers were made: the commit after it removed the variants that lost, and this script with them.

Usage (repository root, on the GPU; run 10's kernel saved beside it first):
    git show c63fdb9:runtime/kernels/int4_moe.cu > .dev/head_int4_moe.cu
    git show c63fdb9:runtime/kernels/moe_common.cuh > .dev/head_moe_common.cuh
    python3 runtime/results/kernel_variants_run11.py        # writes $OUT/exp.json
"""
import json
import os
import sys
import time
from pathlib import Path

import cupy
import numpy as np

from moespeq.runtime import moe_kernels as mk
from moespeq.runtime.kernel_bench import INT4_BYTES_CAP, LayerBench, _copies, random_int4_experts
from moespeq.runtime.kernel_source import kernel_source
from moespeq.runtime.launch_config import launch_config
from moespeq.runtime.layout import ExpertGeometry
from moespeq.runtime.timing import median_time_s
from moespeq.runtime.tune import candidates
from moespeq.spec import get_model

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ["phi-3.5-moe", "qwen1.5-moe-a2.7b", "deepseek-v2-lite", "mixtral-8x7b"]
TOKENS = [1, 4, 8, 16]
ITERS = 50
OPTS = ("--std=c++17", "-DMOE_INT4_DEPTH1=2", "-DMOE_INT4_DEPTH2=2")

head_src = Path(".dev/head_int4_moe.cu").read_text().replace('#include "moe_common.cuh"', Path(".dev/head_moe_common.cuh").read_text())
mods = {"head": cupy.RawModule(code=head_src, options=OPTS),
        "sub": cupy.RawModule(code=kernel_source("int4_moe"), options=OPTS + ("-DMOE_INT4_OFFSET_MMA=0",)),
        "c2": cupy.RawModule(code=kernel_source("int4_moe"), options=OPTS + ("-DMOE_INT4_CHAINS=2",))}
fns = {k: {1: m.get_function("moe_int4_t8"), 2: m.get_function("moe_int4_t16")} for k, m in mods.items()}
for k, f in fns.items():
    sys.stdout.write(f"{k} {[(fn.num_regs, fn.local_size_bytes) for fn in f.values()]}\n")
for name in ("moe_int4_t8", "moe_int4_t16", "moe_int4_stream"):
    fn = mk.get_kernel("int4_moe", name)
    sys.stdout.write(f"new {name} {fn.num_regs} {fn.local_size_bytes}\n")


def raw_call(lb, tokens, cfg, fn):
    sets, xs = lb.routing(tokens), lb.xs[tokens]
    out = cupy.empty((tokens, lb.geo.hidden), dtype=cupy.uint16)
    geo, ws = lb.geo, lb.workspace
    grid = (mk.device_info().sm_count * min(cfg.blocks_per_sm, mk.occupancy(fn, cfg.warps)),)
    def call(i):
        r, e = sets[i % 16], lb.int4_layers[i % len(lb.int4_layers)]
        args = (xs[i % 16], r.ids, r.w, e.gate.codes, e.gate.scales, e.up.codes, e.up.scales, e.down.codes, e.down.scales,
                out, ws.hbuf, ws.partial, ws.counters, np.int32(tokens), np.int32(geo.top_k), np.int32(geo.experts),
                np.int32(geo.hidden), np.int32(geo.moe_ffn), np.int32(cfg.down_splits), np.int32(cfg.k_splits),
                np.int32(geo.max_used_experts))
        fn(grid, (32 * cfg.warps,), args)
    return call


def build(spec):
    cupy.random.seed(0)
    geo = ExpertGeometry.from_spec(spec)
    n = _copies(geo.top_k * geo.expert_bytes_int4, mk.device_info().l2_bytes, geo.experts * geo.expert_bytes_int4, INT4_BYTES_CAP)
    return LayerBench(spec, geo, [random_int4_experts(geo) for _ in range(n)], None, 1, mk.MoeWorkspace(geo))


rows = []
t0 = time.time()
for name in MODELS:
    lb = build(get_model(name))
    geo = lb.geo
    for t in TOKENS:
        nt = 1 if t <= 8 else 2
        distinct = lb.mean_distinct(t)
        nbytes = distinct * geo.expert_bytes_int4
        old_cfg = launch_config("moe_int4", mk.device_info().name, geo.hidden, geo.moe_ffn, t)
        res = [("head", old_cfg, median_time_s(raw_call(lb, t, old_cfg, fns["head"][nt]), iters=ITERS))]
        for cfg in candidates("moe_int4", t, geo.moe_ffn, lb.workspace.max_splits):
            res.append(("stream" if cfg.stages else "tiled", cfg, median_time_s(lb.int4_call(t, cfg), iters=20)))
        top = sorted((r for r in res if r[0] == "tiled"), key=lambda r: r[2])[:3]
        for cfg in [r[1] for r in top]:
            res.append(("tiled50", cfg, median_time_s(lb.int4_call(t, cfg), iters=ITERS)))
            for k in ("sub", "c2") if t <= 8 else ("sub",):
                res.append((k, cfg, median_time_s(raw_call(lb, t, cfg, fns[k][nt]), iters=ITERS)))
        res.append(("head_again", old_cfg, median_time_s(raw_call(lb, t, old_cfg, fns["head"][nt]), iters=ITERS)))
        for kind, cfg, s in res:
            rows.append({"model": name, "tokens": t, "kind": kind, "config": cfg.to_dict(), "us": s * 1e6,
                         "gbps": nbytes / s / 1e9, "distinct": distinct})
        kinds = [k for k in ("head", "head_again", "tiled50", "sub", "c2", "stream") if any(r[0] == k for r in res)]
        best = {k: min((r for r in res if r[0] == k), key=lambda r: r[2]) for k in kinds}
        line = "  ".join(f"{k} {best[k][2]*1e6:6.1f}" for k in kinds)
        bs = best.get("stream")
        extra = f" | stream cfg w{bs[1].warps} b{bs[1].blocks_per_sm} s{bs[1].stages}" if bs else ""
        bt = best["tiled50"][1]
        sys.stdout.write(f"{name:18s} T={t:2d}: {line} | tiled cfg w{bt.warps} b{bt.blocks_per_sm} j{bt.down_splits} "
                         f"k{bt.k_splits}{extra}\n")
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
(OUT / "exp.json").write_text(json.dumps(rows, indent=1))
sys.stdout.write(f"timing done in {time.time() - t0:.0f} s\n")
