"""Run 18: does the order in which warps read the weights bound the INT4 kernel's DRAM rate at T = 1?

The kernel streams each row tile's packed weights as one warp's private run of 512-byte units (a 16-row tile
x 64-wide chunk), so ~1,600 warps read ~1,600 separate places at once; the plain read of run 16
(time_budget.py), which reaches ~3 TB/s on the same bytes, sweeps memory grid-stride, so all warps read
neighbouring units at once. This times one read of B bytes (phi-3.5-moe's T = 1 layer: 2 experts' codes and
scales, 81 MB; mixtral's: 180 MB) in 512-byte warp units, 4 units in flight per warp, where warp w's k-th unit
is ((k / C) * W + w) * C + k % C: C = 1 is the sweep, larger C gives each warp private runs of C units.
Rotates 4 buffers (>= 4x L2 apart), median of 40 calls per pattern, patterns interleaved.

Usage (device): python3 runtime/results/dram_patterns.py --out $OUT
       (anywhere): python3 runtime/results/dram_patterns.py --table runtime/results/dram_patterns_run18_h200.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

SOURCE = r"""
__device__ __forceinline__ uint4 ld_stream(const uint4* p) {
    uint4 v;
    asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w) : "l"(p));
    return v;
}
// warp w reads units ((k / C) * W + w) * C + k % C for k = 0, 1, ... while < U; 4 units in flight
extern "C" __global__ void read_units(const uint4* base, long long U, int C, unsigned* sink) {
    const int lane = threadIdx.x & 31;
    const long long W = (long long)gridDim.x * (blockDim.x >> 5);
    const long long w = blockIdx.x * (long long)(blockDim.x >> 5) + (threadIdx.x >> 5);
    unsigned f = 0;
    long long u = w * C;  // the next unit, stepped without division: +1 inside a run, to the next run after C
    int off = 0;
    while (u < U) {
        uint4 v[4];
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            v[j] = u < U ? ld_stream(base + u * 32 + lane) : make_uint4(0, 0, 0, 0);
            if (++off == C) { off = 0; u += (W - 1) * C + 1; } else { ++u; }
        }
#pragma unroll
        for (int j = 0; j < 4; ++j) f ^= v[j].x ^ v[j].y ^ v[j].z ^ v[j].w;
    }
    if (f == 0x9e3779b9u) sink[0] = f;
}
"""


def time_pattern(fn, bufs, units, c, grid, block, sink, calls):
    import cupy

    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    times = []
    for i in range(calls):
        start.record()
        fn((grid,), (block,), (bufs[i % len(bufs)], cupy.int64(units), cupy.int32(c), sink))
        stop.record()
        stop.synchronize()  # SYNC: measurement boundary
        times.append(cupy.cuda.get_elapsed_time(start, stop) * 1e3)
    return times


def table(path: Path) -> str:
    """Markdown: µs (GB/s) per layer's bytes and grid, one column per run length C."""
    runs = json.loads(path.read_text())["runs"]
    keys = list(dict.fromkeys((r["bytes"], r["grid"], r["block"]) for r in runs))
    lines = ["| bytes | grid x block | C = 1 (sweep) | 2 | 4 | 8 | 16 | 32 | one run per warp |",
             "|---|---|---|---|---|---|---|---|---|"]
    for b, g, k in keys:
        cells = [f"{r['us']:.1f} ({r['gbps']:.0f})" for r in runs if (r["bytes"], r["grid"], r["block"]) == (b, g, k)]
        lines.append(f"| {b} | {g} x {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, help="folder for the JSON (device run)")
    ap.add_argument("--table", type=Path, help="print a results JSON as a markdown table and exit")
    args = ap.parse_args()
    if args.table:
        sys.stdout.write(table(args.table))
        return 0
    if args.out is None:
        ap.error("give --out (device run) or --table")
    import cupy

    fn = cupy.RawModule(code=SOURCE, options=("--std=c++17",)).get_function("read_units")
    props = cupy.cuda.runtime.getDeviceProperties(0)
    sms = props["multiProcessorCount"]
    sink = cupy.zeros(1, cupy.uint32)
    result = {"gpu": props["name"].decode(), "cupy": cupy.__version__, "sms": sms,
              "command": " ".join(["python3"] + sys.argv), "runs": []}
    for label, nbytes in (("phi-3.5-moe T=1", 81_000_000), ("mixtral-8x7b T=1", 180_000_000)):
        units = nbytes // 512
        bufs = [cupy.ones(units * 128, cupy.uint32) for _ in range(4)]
        for grid, block in ((3 * sms, 128), (4 * sms, 128), (2 * sms, 256)):
            warps = grid * block // 32
            per_warp = -(-units // warps)
            chunks = [1, 2, 4, 8, 16, 32, per_warp]
            samples = {c: [] for c in chunks}
            for _ in range(4):  # interleaved rounds
                for c in chunks:
                    samples[c] += time_pattern(fn, bufs, units, c, grid, block, sink, 10)
            for c in chunks:
                t = sorted(samples[c])[len(samples[c]) // 2]
                row = {"bytes": label, "grid": grid, "block": block, "units_per_run": c, "us": round(t, 2),
                       "gbps": round(units * 512 / t / 1e3, 1)}
                result["runs"].append(row)
                sys.stdout.write(f"{row}\n")
        del bufs
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "dram_patterns_run18_h200.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
