"""One run on a GPU machine: the gpu tests, launch-parameter tuning, the kernel benchmark and a calibration,
everything written under one output folder, a short table printed last.

Usage (repository root, CuPy and a GPU present):
    python runtime/gpu_check.py --out OUT_DIR
writes OUT_DIR/gpu_tests.log, tuned_configs.json (also runtime/configs/<device>.json), tune_timings.json (every
candidate's time), bench_kernels.json, hw_calibrated.json, errors.log (tracebacks of any step that failed; the other steps still run).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TUNE_TOKENS = (1, 2, 4, 8, 16)


def step(name, fn, summary, errors):
    start = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        summary[name] = fn()
    except Exception:  # noqa: BLE001 - one failed step is recorded and the others still run
        errors.append(f"== {name}\n{traceback.format_exc()}")
        summary[name] = "FAILED (see errors.log)"
        print(errors[-1], flush=True)
    print(f"== {name}: {time.perf_counter() - start:.0f} s", flush=True)


def run_tests(out: Path, timeout_s: float) -> str:
    """pytest -m gpu in a child process, so that a hung kernel is killed with it rather than hanging this run."""
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfE", "-p", "no:cacheprovider",
                                 "tests/test_gpu_kernels.py", "tests/test_gpu_store.py"],
                                cwd=ROOT, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        (out / "gpu_tests.log").write_text(f"{exc.stdout or ''}{exc.stderr or ''}")
        raise RuntimeError(f"gpu tests still running after {timeout_s:.0f} s (a hung kernel?); later steps skipped") from None
    (out / "gpu_tests.log").write_text(result.stdout + result.stderr)
    lines = [ln for ln in result.stdout.splitlines() if ln.strip()]
    return lines[-1] if lines else f"pytest exit {result.returncode}, no output"


def tune_all(out: Path, models: list[str]) -> str:
    """Tune every benchmark model's kernels; every candidate's time goes to tune_timings.json."""
    import cupy

    from moespeq.runtime.kernel_bench import LayerBench
    from moespeq.runtime.launch_config import shape_key, write_configs
    from moespeq.runtime.moe_kernels import device_info
    from moespeq.runtime.tune import fastest, time_candidates
    from moespeq.spec import get_model

    command = ("python runtime/gpu_check.py (tune step: runtime.tune over the benchmark models, "
               f"T={','.join(map(str, TUNE_TOKENS))})")
    timings: dict[str, dict] = {}
    for name in models:
        lb = LayerBench.build(get_model(name))
        key = shape_key(lb.geo)
        best = {}
        for kernel in ("moe_int4", "moe_bf16"):
            timed = time_candidates(lb, kernel, TUNE_TOKENS)
            best[kernel] = {key: {t: cfg for t, (cfg, _) in fastest(timed).items()}}
            timings.setdefault(name, {})[kernel] = {t: [{**cfg.to_dict(), "us": s * 1e6} for cfg, s in rows]
                                                    for t, rows in timed.items()}
        path = write_configs(device_info().name, command, best)
        del lb
        cupy.get_default_memory_pool().free_all_blocks()
    shutil.copy(path, out / "tuned_configs.json")
    (out / "tune_timings.json").write_text(json.dumps({"command": command, "timings": timings}, indent=1) + "\n")
    return str(path.relative_to(ROOT))


def bench(out: Path, models: list[str]) -> dict:
    from moespeq.runtime.bench_kernels import BENCH_TOKENS, print_report, run_benchmark

    command = "python runtime/gpu_check.py --out $OUT (step bench: moespeq.runtime.bench_kernels.run_benchmark)"
    result = run_benchmark(models, BENCH_TOKENS, command)
    (out / "bench_kernels.json").write_text(json.dumps(result, indent=1) + "\n")
    print_report(result)
    return result


def calibrate_step(out: Path) -> str:
    from moespeq.hardware import load_hardware, save_hardware
    from moespeq.runtime.calibrate import CalibrateConfig, calibrate

    profile = calibrate(CalibrateConfig(model="phi-3.5-moe", tune=False),
                        command="moespeq calibrate --model phi-3.5-moe --no-tune --out hw_calibrated.json")
    save_hardware(profile, out / "hw_calibrated.json")
    load_hardware(out / "hw_calibrated.json")  # what `moespeq simulate --hardware` does
    return (f"H2D 64MiB {profile.h2d_gbps(2**26):.1f} GB/s, pageable {profile.h2d_gbps(2**26, pinned=False):.1f}, "
            f"D2H {profile.d2h_pinned.at(2**26):.1f}, duplex {profile.h2d_during_d2h_gbps:.1f}, HBM {profile.hbm_gbps:.0f}, "
            f"bf16 {profile.bf16_tflops:.0f} TFLOP/s, overlap {profile.copy_compute_overlap:.3f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--skip", default="", help="comma-separated steps to skip: tests,tune,bench,calibrate")
    parser.add_argument("--tests-timeout-s", type=float, default=300.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s",
                        handlers=[logging.FileHandler(args.out / "gpu_check.log"), logging.StreamHandler()])
    from moespeq.runtime.bench_kernels import BENCH_MODELS, environment

    print(json.dumps(environment()), flush=True)
    skip, summary, errors = set(args.skip.split(",")), {}, []
    models = list(BENCH_MODELS)
    if "tests" not in skip:
        step("gpu tests", lambda: run_tests(args.out, args.tests_timeout_s), summary, errors)
        if "still running" in str(summary["gpu tests"]) or any("still running" in e for e in errors):
            skip |= {"tune", "bench", "calibrate"}
    if "tune" not in skip:
        step("tune", lambda: tune_all(args.out, models), summary, errors)
    if "bench" not in skip:
        step("bench", lambda: bench(args.out, models), summary, errors)
    if "calibrate" not in skip:
        step("calibrate", lambda: calibrate_step(args.out), summary, errors)
    (args.out / "errors.log").write_text("\n".join(errors) or "no errors\n")
    print("\n== summary")
    for name, value in summary.items():
        if name == "bench" and isinstance(value, dict):
            from moespeq.runtime.bench_kernels import print_report

            print_report(value)
        else:
            print(f"{name}: {value}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
