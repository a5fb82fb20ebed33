"""Run 22c: is the kernel benchmark's plain read (runtime/kernels/stream_read.cu, LayerBench.stream_call) as fast as
run 16's (time_budget.py's stream_read4 at a full grid, "stream4_wide")? The benchmark reports the plain read as each
cell's bandwidth ceiling, so a slower read would understate what the INT4 kernel could reach.

Both read the packed codes and scales of routing i's experts in use in weight copy i, 16-byte ld.global.nc loads, 4
in flight per thread; stream_read walks one flat index space (a division per load), stream4_wide a grid-stride
loop per array and expert. Side by side, alternating over ROUNDS rounds of 100 calls, the four benchmark models at
T = 1, 2, 4, 8; a device-to-device copy of the same bytes beside them (it also writes them).

Usage (repository root, after `pip install -e .`):
    python3 runtime/results/stream_ceiling.py          # $OUT/stream_ceiling.json, prints the table
    python3 runtime/results/stream_ceiling.py --table runtime/results/stream_ceiling_run22c_h200.json
"""

import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import bulk_ring  # noqa: E402 - the results scripts' harness
from dequant_views import build  # noqa: E402 - run 13's INT4-only layer bench
from time_budget import reference_calls  # noqa: E402 - run 16's plain reads

OUT = Path(os.environ.get("OUT", "/tmp/out"))
MODELS = ("phi-3.5-moe", "mixtral-8x7b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite")
TOKENS = (1, 2, 4, 8)
ROUNDS, ITERS = 5, 100
BLOCK = (256,)  # stream4_wide's block: as many of them as fit the SMs


def measure(name: str) -> list[dict]:
    import cupy

    from moespeq.runtime.timing import median_time_s

    lb, rows = build(name), []
    for t in TOKENS:
        refs = reference_calls(lb, t, (1,), BLOCK)  # its stream4 at the given grid is not timed here
        calls = {"stream_read": lb.stream_call(t), "stream4_wide": refs["stream4_wide"], "memcpy": refs["memcpy"]}
        times = {v: [] for v in calls}
        for _ in range(ROUNDS):
            for v, call in calls.items():
                times[v].append(median_time_s(call, iters=ITERS) * 1e6)
        med = {v: statistics.median(ts) for v, ts in times.items()}
        mb = lb.mean_distinct(t) * lb.geo.expert_bytes_int4 / 1e6
        rows.append({"model": name, "tokens": t, "mean_mb": mb, "us": times, "median_us": med,
                     "wide_grid": refs["wide_grid"]})
        sys.stdout.write(f"{name} T={t} {mb:.0f} MB: " + " ".join(f"{v} {us:.1f}" for v, us in med.items()) + "\n")
        sys.stdout.flush()
    del lb
    cupy.get_default_memory_pool().free_all_blocks()
    return rows


def table(path: str) -> str:
    d = json.loads(Path(path).read_text())
    out = ("| model | T | MB | stream_read µs | stream4_wide µs | stream_read / stream4_wide | memcpy µs |\n"
           "|---|---|---|---|---|---|---|\n")
    for r in d["rows"]:
        m = r["median_us"]
        out += (f"| {r['model']} | {r['tokens']} | {r['mean_mb']:.0f} | {m['stream_read']:.1f} | "
                f"{m['stream4_wide']:.1f} | {m['stream_read'] / m['stream4_wide']:.3f} | {m['memcpy']:.1f} |\n")
    return out


def main() -> None:
    if bulk_ring.table_asked(table):
        return
    import cupy

    OUT.mkdir(parents=True, exist_ok=True)
    result = {"device": cupy.cuda.runtime.getDeviceProperties(0)["name"].decode(), "rounds": ROUNDS, "iters": ITERS,
              "rows": []}
    bulk_ring.collect_rows(result, MODELS, measure, OUT / "stream_ceiling.json", table)


if __name__ == "__main__":
    main()
