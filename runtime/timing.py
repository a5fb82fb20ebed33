"""CUDA-event timing shared by the kernel benchmark, tuning and calibration (CuPy only).

Each call is bracketed by its own pair of events on the stream, after warm-up calls; the median of
many is reported. Callers rotate input sets (`fn(i)` gets the call index) so that repeated calls do not
find their data in L2. Python enqueues a kernel in tens of microseconds, as long as a small kernel runs,
so the stream is first held by a GPU-side wait long enough for the host to enqueue every timed call:
the calls then run back to back and the events measure the GPU, not the host.

Usage:
    t_s = median_time_s(lambda i: launch(inputs[i % len(inputs)]), iters=50)
"""

from __future__ import annotations

import functools
import statistics
import time
from collections.abc import Callable
from typing import Any

_HOLD_SOURCE = r"""
extern "C" __global__ void hold(unsigned long long ns) {  // one thread waits on the global timer
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        __nanosleep(1000);
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
}
"""
MAX_HOLD_S = 0.5


@functools.cache
def _hold_kernel() -> Any:
    import cupy

    return cupy.RawKernel(_HOLD_SOURCE, "hold")


def hold_stream(seconds: float, stream: Any) -> None:
    """Keep `stream` busy for `seconds` on the GPU (one thread), so that work enqueued now starts later."""
    import numpy as np

    grid, block, shared_mem = (1,), (1,), 0
    with stream:
        _hold_kernel()(grid, block, (np.uint64(int(min(seconds, MAX_HOLD_S) * 1e9)),), shared_mem=shared_mem)


def host_seconds_per_call(fn: Callable[[int], Any], calls: int = 3, first: int = 0) -> float:
    start = time.perf_counter()
    for i in range(calls):
        fn(first + i)
    return (time.perf_counter() - start) / calls


def event_times_s(fn: Callable[[int], Any], iters: int = 50, warmup: int = 5, stream: Any = None) -> list[float]:
    """Seconds of each of `iters` calls of fn(i), measured on `stream` (default: the current stream)."""
    import cupy

    stream = stream or cupy.cuda.get_current_stream()
    for i in range(warmup):
        fn(i)
    per_call_s = host_seconds_per_call(fn, first=warmup)
    hold_stream(2 * iters * per_call_s + 1e-3, stream)
    pairs = []
    for i in range(iters):
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record(stream)
        fn(warmup + i)
        end.record(stream)
        pairs.append((start, end))
    pairs[-1][1].synchronize()  # SYNC: read the timings once, after the last call
    return [cupy.cuda.get_elapsed_time(s, e) * 1e-3 for s, e in pairs]


def median_time_s(fn: Callable[[int], Any], iters: int = 50, warmup: int = 5, stream: Any = None) -> float:
    return statistics.median(event_times_s(fn, iters, warmup, stream))


def span_s(fn: Callable[[], Any], streams: list[Any]) -> float:
    """Seconds from one start event (on the first stream) until every stream has finished fn's work
    (fn must enqueue within 50 ms of host time)."""
    import cupy

    hold_stream(0.05, streams[0])  # enqueue everything before any of it starts
    start = cupy.cuda.Event()
    start.record(streams[0])
    for s in streams[1:]:
        s.wait_event(start)
    fn()
    ends = []
    for s in streams:
        e = cupy.cuda.Event()
        e.record(s)
        ends.append(e)
    for e in ends:
        e.synchronize()  # SYNC: measurement boundary
    return max(cupy.cuda.get_elapsed_time(start, e) for e in ends) * 1e-3
