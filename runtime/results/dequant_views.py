"""Run 13's dequantization experiment (runtime/results/dequant_views_run13_h200.json): the INT4 kernel with its
packed-word "views" made without bit shifts, timed side by side with the committed kernel in one device call.

Each packed 32-bit word becomes 4 bf16x2 fragment registers, each (view & 0x000F000F | 0x4300) - 136, where view s
holds the nibbles of register s at bits 0-3 and 16-19. A bf16 has 7 mantissa bits, so a view can expose one 4-bit
field per 16-bit half and every register needs a view of its own: the word itself and three more, whatever the
nibble order (README, "Run 13"). The committed kernel makes those three with SHF (w >> 4, 8, 12); the variants
make them on other units, with the packing unchanged:
  prmt   one SHF (t = w >> 4) and two byte permutes (PRMT: bytes 1 and 3 of w and of t moved down);
  mulhi  no SHF: w >> 4s as the high word of w * 2^(32-4s) (IMAD.HI on the FMA pipe; the multipliers sit in
         constant memory so that ptxas cannot turn them back into shifts).
Every variant's output is compared bit for bit with the committed kernel's on the same inputs; the times alternate
variant by variant over ROUNDS rounds on runtime/kernel_bench.py's rotated layers, at the committed tuned
launch parameters.

Usage (repository root):
    python3 runtime/results/dequant_views.py          # on the GPU: writes $OUT/dequant_views.json, prints a table
    python3 runtime/results/dequant_views.py --sass   # nvcc and cuobjdump only: $OUT/dequant_views_sass.json
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

from moespeq.runtime.kernel_source import kernel_source
from moespeq.runtime.launch_config import CONFIG_DIR, LaunchConfig
from moespeq.runtime.layout import ExpertGeometry
from moespeq.spec import get_model

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2, 4, 8)
ROUNDS, ITERS = 5, 100

COMMITTED = "#pragma unroll\n        for (int s = 0; s < 4; ++s) a[s] = bf16x2_fma(and_or(w >> (4 * s), 0x000f000fu, MAGIC), ONE, MINUS_136);\n"
VIEWS = {
    "prmt": """        const unsigned t = w >> 4;  // odd nibbles to the bottom of each byte: the one shift
        const unsigned v[4] = {w, t, prmt(w, 0x3311u), prmt(t, 0x3311u)};  // bytes 1 and 3 down: >> 8 per half
#pragma unroll
        for (int s = 0; s < 4; ++s) a[s] = bf16x2_fma(and_or(v[s], 0x000f000fu, MAGIC), ONE, MINUS_136);
""",
    "mulhi": """        const unsigned v[4] = {w, __umulhi(w, c_pow2[0]), __umulhi(w, c_pow2[1]), __umulhi(w, c_pow2[2])};
#pragma unroll
        for (int s = 0; s < 4; ++s) a[s] = bf16x2_fma(and_or(v[s], 0x000f000fu, MAGIC), ONE, MINUS_136);
""",
}
HELPERS = """
__device__ __forceinline__ unsigned prmt(unsigned a, unsigned sel) {
    unsigned d;
    asm("prmt.b32 %0, %1, %1, %2;" : "=r"(d) : "r"(a), "r"(sel));
    return d;
}
__constant__ unsigned c_pow2[3] = {1u << 28, 1u << 24, 1u << 20};

struct Int4Weights {"""


def source(variant: str) -> str:
    text = kernel_source("int4_moe")
    if variant == "committed":
        return text
    assert COMMITTED in text, "the committed dequantization changed: update this script"
    return text.replace(COMMITTED, VIEWS[variant]).replace("struct Int4Weights {", HELPERS, 1)


VARIANTS = ("committed", *VIEWS)


def sass_counts() -> dict[str, dict[str, int]]:
    """Per variant, the T <= 8 entry's SASS instructions by opcode (nvcc -arch=sm_90 at the .cu's default depths,
    which are moe_kernels.INT4_DEPTH)."""
    counts = {}
    with tempfile.TemporaryDirectory() as tmp:
        for v in VARIANTS:
            src, cubin = Path(tmp) / f"{v}.cu", Path(tmp) / f"{v}.cubin"
            src.write_text(source(v))
            subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-cubin", str(src), "-o", str(cubin)], check=True)
            sass = subprocess.run(["cuobjdump", "-sass", "-fun", "moe_int4_t8", str(cubin)], check=True,
                                  capture_output=True, text=True).stdout
            ops = [m.group(1) for m in re.finditer(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9.]*)", sass)]
            base = Counter(op.split(".")[0] for op in ops)
            counts[v] = {"total": len(ops), **{k: base[k] for k in ("SHF", "PRMT", "IMAD", "LOP3", "HFMA2", "HMMA")},
                         "IMAD.HI": sum(op.startswith("IMAD.HI") for op in ops)}
    return counts


def kernels():
    import cupy

    from moespeq.runtime.moe_kernels import _OPTIONS  # the committed kernel's exact compile options

    return {v: cupy.RawModule(code=source(v), options=_OPTIONS["int4_moe"]).get_function("moe_int4_t8")
            for v in VARIANTS}


def build(name: str):
    """Only the INT4 side of runtime/kernel_bench.py's LayerBench (the bf16 arena is not needed here)."""
    import cupy

    from moespeq.runtime import moe_kernels as mk
    from moespeq.runtime.kernel_bench import INT4_BYTES_CAP, LayerBench, _copies, random_int4_experts

    cupy.random.seed(0)
    geo = ExpertGeometry.from_spec(get_model(name))
    n = _copies(geo.top_k * geo.expert_bytes_int4, mk.device_info().l2_bytes, geo.experts * geo.expert_bytes_int4,
                INT4_BYTES_CAP)
    return LayerBench(get_model(name), geo, [random_int4_experts(geo) for _ in range(n)], None, 1, mk.MoeWorkspace(geo))


def committed_config(geo: ExpertGeometry, tokens: int) -> LaunchConfig:
    """The committed tuned parameters (old D,F key or the new key), nearest token count."""
    data = json.loads((CONFIG_DIR / "NVIDIA_H200.json").read_text())["kernels"]["moe_int4"]
    table = data.get(f"D={geo.hidden},F={geo.moe_ffn}") or data[
        f"D={geo.hidden},F={geo.moe_ffn},E={geo.experts},K={geo.top_k}"]
    return LaunchConfig(**table[min(table, key=lambda t: (abs(int(t) - tokens), int(t)))])


def call_of(lb, fn, tokens: int, cfg: LaunchConfig, out, shared_mem: int = 0):
    """launch_moe_int4's launch with another compiled kernel (and `shared_mem` bytes of dynamic shared memory)."""
    import numpy as np

    from moespeq.runtime import moe_kernels as mk

    sets, xs, geo, ws = lb.routing(tokens), lb.xs[tokens], lb.geo, lb.workspace
    grid = (mk.device_info().sm_count * min(cfg.blocks_per_sm, mk.occupancy(fn, cfg.warps)),)

    def call(i: int) -> None:
        r, e = sets[i % len(sets)], lb.int4_layers[i % len(lb.int4_layers)]
        fn(grid, (32 * cfg.warps,), (xs[i % len(xs)], r.ids, r.w, e.gate.codes, e.gate.scales, e.up.codes, e.up.scales,
                                     e.down.codes, e.down.scales, out, ws.hbuf, ws.partial, ws.counters,
                                     np.int32(tokens), np.int32(geo.top_k), np.int32(geo.experts), np.int32(geo.hidden),
                                     np.int32(geo.moe_ffn), np.int32(cfg.down_splits), np.int32(cfg.k_splits),
                                     np.int32(geo.max_used_experts)), shared_mem=shared_mem)
    return call


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    if "--sass" in sys.argv:
        (OUT / "dequant_views_sass.json").write_text(json.dumps(sass_counts(), indent=1) + "\n")
        return
    import cupy

    from moespeq.runtime.timing import median_time_s

    fns = kernels()
    result = {"registers": {v: fn.num_regs for v, fn in fns.items()}, "rounds": ROUNDS, "iters": ITERS, "rows": []}
    for name in MODELS:
        lb = build(name)
        for t in TOKENS:
            cfg = committed_config(lb.geo, t)
            outs = {v: cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16) for v in fns}
            calls = {v: call_of(lb, fn, t, cfg, outs[v]) for v, fn in fns.items()}
            identical = {}
            for i in range(3):  # three routings and weight copies: every variant bit-identical to the committed kernel
                for v in fns:
                    outs[v].fill(0xFFFF)  # NaN poison: an unwritten element fails the check
                    calls[v](i)
                written = not bool((outs["committed"] == 0xFFFF).any())  # SYNC: correctness check before timing
                identical = {v: identical.get(v, True) and written and bool(cupy.array_equal(outs[v], outs["committed"]))
                             for v in fns}
            times = {v: [] for v in fns}
            for _ in range(ROUNDS):  # alternate, so that drift in clocks or temperature hits every variant alike
                for v in fns:
                    times[v].append(median_time_s(calls[v], iters=ITERS) * 1e6)
            row = {"model": name, "tokens": t, "config": cfg.to_dict(), "identical": identical, "us": times,
                   "median_us": {v: statistics.median(ts) for v, ts in times.items()}}
            result["rows"].append(row)
            med = row["median_us"]
            sys.stdout.write(f"{name:18s} T={t}: " + "  ".join(
                f"{v} {med[v]:6.2f} ({min(times[v]):.2f}-{max(times[v]):.2f}, {100 * (med[v] / med['committed'] - 1):+.1f} %)"
                f"{'' if identical[v] else ' NOT IDENTICAL'}" for v in fns) + "\n")
        del lb
        cupy.get_default_memory_pool().free_all_blocks()
    (OUT / "dequant_views.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
