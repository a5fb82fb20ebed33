"""Measured copy bandwidths of the GPU at hand: HBM, PCIe H2D/D2H (pinned and pageable), duplex, latency,
and copy/compute overlap (CuPy only). Used by `moespeq calibrate` and the kernel benchmark.

Bandwidths are GB/s (1e9 bytes per second). HBM counts bytes read plus bytes written, like the profiles.

Usage:
    hbm_copy_gbps(); h2d_gbps(64 * 2**20, pinned=True); overlap_efficiency(copy_fn, compute_fn, s_copy, s_comp)
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from typing import Any

import cupy
import numpy as np

from moespeq.runtime.timing import event_times_s, span_s

_H2D, _D2H, _D2D = (cupy.cuda.runtime.memcpyHostToDevice, cupy.cuda.runtime.memcpyDeviceToHost,
                    cupy.cuda.runtime.memcpyDeviceToDevice)


def pinned_buffer(nbytes: int) -> np.ndarray:
    mem = cupy.cuda.alloc_pinned_memory(nbytes)
    return np.frombuffer(mem, dtype=np.uint8, count=nbytes)


def pageable_buffer(nbytes: int) -> np.ndarray:
    buf = np.empty(nbytes, dtype=np.uint8)
    buf[::4096] = 1  # touch every page so the first copy does not pay for faulting them in
    return buf


def _iters(nbytes: int) -> int:
    return int(np.clip(2**30 // max(nbytes, 1), 5, 50))


def hbm_copy_gbps(nbytes: int = 2 * 2**30) -> float:
    """Device-to-device copy bandwidth, bytes read plus written."""
    src, dst = cupy.empty(nbytes, dtype=cupy.uint8), cupy.empty(nbytes, dtype=cupy.uint8)
    src.fill(1)
    times = event_times_s(lambda i: cupy.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, _D2D,
                                                                   cupy.cuda.get_current_stream().ptr), iters=10)
    return 2 * nbytes / statistics.median(times) / 1e9


def h2d_gbps(nbytes: int, pinned: bool = True, stream: Any = None) -> float:
    stream = stream or cupy.cuda.Stream(non_blocking=True)
    host = pinned_buffer(nbytes) if pinned else pageable_buffer(nbytes)
    dev = cupy.empty(nbytes, dtype=cupy.uint8)
    times = event_times_s(lambda i: cupy.cuda.runtime.memcpyAsync(dev.data.ptr, host.ctypes.data, nbytes, _H2D, stream.ptr),
                          iters=_iters(nbytes), warmup=2, stream=stream)
    return nbytes / statistics.median(times) / 1e9


def d2h_gbps(nbytes: int) -> float:
    stream = cupy.cuda.Stream(non_blocking=True)
    host, dev = pinned_buffer(nbytes), cupy.zeros(nbytes, dtype=cupy.uint8)
    times = event_times_s(lambda i: cupy.cuda.runtime.memcpyAsync(host.ctypes.data, dev.data.ptr, nbytes, _D2H, stream.ptr),
                          iters=_iters(nbytes), warmup=2, stream=stream)
    return nbytes / statistics.median(times) / 1e9


def h2d_during_d2h_gbps(nbytes: int = 256 * 2**20) -> float:
    """Pinned H2D rate while a long D2H copy runs on another stream (full duplex keeps it near H2D alone)."""
    up, down = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)
    big = 8 * nbytes
    host_in, dev_in = pinned_buffer(nbytes), cupy.empty(nbytes, dtype=cupy.uint8)
    host_out, dev_out = pinned_buffer(big), cupy.zeros(big, dtype=cupy.uint8)
    cupy.cuda.runtime.memcpyAsync(host_out.ctypes.data, dev_out.data.ptr, big, _D2H, down.ptr)  # ~8 H2D copies long
    times = event_times_s(lambda i: cupy.cuda.runtime.memcpyAsync(dev_in.data.ptr, host_in.ctypes.data, nbytes, _H2D, up.ptr),
                          iters=4, warmup=1, stream=up)
    down.synchronize()  # SYNC: measurement boundary
    return nbytes / statistics.median(times) / 1e9


def copy_latency_s() -> float:
    """Seconds of a 4-byte pinned H2D copy: the fixed cost of one copy."""
    stream = cupy.cuda.Stream(non_blocking=True)
    host, dev = pinned_buffer(4), cupy.empty(4, dtype=cupy.uint8)
    return statistics.median(event_times_s(
        lambda i: cupy.cuda.runtime.memcpyAsync(dev.data.ptr, host.ctypes.data, 4, _H2D, stream.ptr), iters=100, stream=stream))


def overlap_efficiency(copy_work: Callable[[], Any], compute_work: Callable[[], Any], copy_stream: Any,
                       compute_stream: Any, repeats: int = 3) -> dict[str, float]:
    """How much of the shorter of (copies, compute) hides under the other when both run at once.

    efficiency = (t_copy + t_compute - t_both) / min(t_copy, t_compute): 1 when the two overlap fully,
    0 when they serialise. Each work function only enqueues on its own stream.
    """
    runs = []
    for _ in range(repeats):
        t_copy = span_s(copy_work, [copy_stream])
        t_compute = span_s(compute_work, [compute_stream])
        t_both = span_s(lambda: (copy_work(), compute_work()), [compute_stream, copy_stream])
        runs.append((t_copy, t_compute, t_both))
    t_copy, t_compute, t_both = (statistics.median(col) for col in zip(*runs, strict=True))
    eff = (t_copy + t_compute - t_both) / min(t_copy, t_compute)
    return {"copy_s": t_copy, "compute_s": t_compute, "both_s": t_both, "efficiency": float(np.clip(eff, 0.0, 1.0))}


def bf16_matmul_tflops(n: int = 8192) -> tuple[float, str]:
    """Dense bf16 matrix throughput on random data, through the first library matmul that works here."""
    from moespeq.runtime.kernel_bench import bf16_matmuls, random_bf16

    impls = bf16_matmuls()
    if not impls:
        raise RuntimeError("no bf16 matmul available (neither cupy with ml_dtypes nor torch)")
    label, mm = next(iter(impls.items()))
    a, b = random_bf16((n, n)), random_bf16((n, n))
    t = statistics.median(event_times_s(lambda i: mm(a, b), iters=10, warmup=3))
    return 2 * n**3 / t / 1e12, label
