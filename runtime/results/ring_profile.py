"""Run 22f: Nsight Compute on the INT4 kernel as tuned in run 22 (the output-warp ring at T = 1, 2) and on the
benchmark's plain read of the same bytes, one launch each, phi-3.5-moe at T = 1 and mixtral-8x7b at T = 1 and 2:
where the ring's time goes now that no consumer waits on another or on a fence. Sections and metrics as run 16's
(time_budget.NCU_ARGS: clocks as found, L2 flushed before each kernel, so a little slower than the benchmark).

Usage (repository root, after `pip install -e .`, ncu on the PATH):
    python3 runtime/results/ring_profile.py            # $OUT/ncu_ring_run22f.txt
"""

import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from dequant_views import build, committed_config  # noqa: E402 - run 13's INT4-only layer bench
from time_budget import NCU_ARGS  # noqa: E402 - run 16's sections and stall metrics

OUT = Path(os.environ.get("OUT", "/tmp/out"))
CELLS = (("phi-3.5-moe", 1), ("mixtral-8x7b", 1), ("mixtral-8x7b", 2))


def launches() -> None:
    """One launch of the tuned INT4 layer, then one plain read, per cell (what ncu profiles)."""
    import cupy

    from moespeq.runtime.moe_kernels import launch_moe_int4

    for name, t in CELLS:
        lb = build(name)
        r, cfg = lb.routing(t)[0], committed_config(lb.geo, t)
        out = cupy.empty((t, lb.geo.hidden), dtype=cupy.uint16)
        sys.stdout.write(f"{name} T={t}: {cfg}\n")
        launch_moe_int4(lb.xs[t][0], r.ids, r.w, lb.int4_layers[0], lb.workspace, out, cfg)
        lb.stream_call(t)(0)
        cupy.cuda.get_current_stream().synchronize()  # SYNC: one profiled launch per kernel and cell
        del lb
        cupy.get_default_memory_pool().free_all_blocks()


def main() -> None:
    if "--launches" in sys.argv:
        launches()
        return
    OUT.mkdir(parents=True, exist_ok=True)
    cmd = [*NCU_ARGS, sys.executable, __file__, "--launches"]
    run = subprocess.run(cmd, capture_output=True, text=True)
    (OUT / "ncu_ring_run22f.txt").write_text(" ".join(cmd) + "\n" + run.stdout + run.stderr)
    sys.stdout.write(f"ncu exit {run.returncode}\n")


if __name__ == "__main__":
    main()
