"""`moespeq calibrate`: measure the GPU at hand and write a HardwareProfile that `moespeq simulate
--hardware hw.json` reads (CuPy only).

Measured: pinned and pageable H2D and pinned D2H bandwidth against transfer size, pinned H2D while a D2H
copy runs, the fixed cost of a copy, HBM copy bandwidth, bf16 matmul throughput, kernel launch cost,
copy/compute overlap, and the MoE kernels' times for one model's shapes. The kernels' launch parameters
are tuned first (written to runtime/configs/<device>.json) unless --no-tune.

kernel_tables keys (the simulator reads these; times are medians of one launch with its weights not in L2):
  "moe_int4_layer_s": {MODEL: TABLE}   one fused INT4 draft MoE layer
  "moe_bf16_layer_s": {MODEL: TABLE}   one bf16 verify MoE layer, its experts already in the cache
      TABLE = {"hidden": D, "moe_ffn": F, "experts": E, "top_k": K, "tokens": [T, ...],
               "distinct_experts": [n, ...], "time_s": [[seconds or null per n] per T]}
      null where no routing of T tokens uses n distinct experts (n < K or n > min(E, T*K)); interpolate
      in n (bytes grow with n) and in T.
  "expert_h2d_s": {MODEL: seconds of one bf16 expert copy from pinned memory on the copy stream}
  "launch_configs": {MODEL: {"moe_int4" | "moe_bf16": {T: {warps, blocks_per_sm, down_splits, k_splits}}}}

Usage:
    moespeq calibrate --model phi-3.5-moe --out hw.json
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

from moespeq.hardware import BandwidthTable, HardwareProfile
from moespeq.spec import get_model

log = logging.getLogger(__name__)

KIB, MIB, GIB = 2**10, 2**20, 2**30


@dataclass(frozen=True)
class CalibrateConfig:
    """What to measure: one model's kernel shapes, token counts, copy sizes."""

    model: str = "phi-3.5-moe"
    tokens: tuple[int, ...] = (1, 2, 4, 8, 12, 16)
    sizes_bytes: tuple[int, ...] = (64 * KIB, 256 * KIB, MIB, 4 * MIB, 16 * MIB, 64 * MIB, 256 * MIB, GIB)
    pageable_sizes_bytes: tuple[int, ...] = (MIB, 16 * MIB, 64 * MIB, 256 * MIB)
    tune: bool = True
    name: str = ""

    def __post_init__(self) -> None:
        get_model(self.model)  # a UserError listing the presets
        if not self.tokens or min(self.tokens) < 1:
            raise ValueError(f"CalibrateConfig.tokens={self.tokens}: give positive token counts")
        if list(self.sizes_bytes) != sorted(self.sizes_bytes) or list(self.pageable_sizes_bytes) != sorted(self.pageable_sizes_bytes):
            raise ValueError("CalibrateConfig sizes must be increasing")


def distinct_counts(top_k: int, max_distinct: int) -> list[int]:
    """K, the powers of two between, and the largest possible count."""
    return sorted({top_k, max_distinct, *(2**i for i in range(12) if top_k < 2**i < max_distinct)})


def kernel_tables(lb: Any, tokens: tuple[int, ...]) -> dict[str, dict[str, Any]]:
    """Median launch time of both MoE kernels against tokens and distinct experts."""
    from moespeq.runtime.launch_config import launch_config
    from moespeq.runtime.moe_kernels import device_info
    from moespeq.runtime.timing import median_time_s

    geo, dev = lb.geo, device_info().name
    counts = distinct_counts(geo.top_k, geo.max_used_experts)
    tables = {}
    for key, kernel, call in (("moe_int4_layer_s", "moe_int4", lb.int4_call), ("moe_bf16_layer_s", "moe_bf16", lb.bf16_call)):
        rows = []
        for t in tokens:
            cfg = launch_config(kernel, dev, geo, t)
            rows.append([median_time_s(call(t, cfg, n), iters=20) if n <= min(geo.experts, t * geo.top_k) else None
                         for n in counts])
        tables[key] = {"hidden": geo.hidden, "moe_ffn": geo.moe_ffn, "experts": geo.experts, "top_k": geo.top_k,
                       "tokens": list(tokens), "distinct_experts": counts, "time_s": rows}
    return tables


def launch_overhead_s(call: Any, launches: int = 200) -> float:
    """Host seconds to enqueue one MoE kernel launch (the launcher's checks included)."""
    import cupy

    call(0)
    start = time.perf_counter()
    for i in range(launches):
        call(i)
    elapsed = time.perf_counter() - start
    cupy.cuda.get_current_stream().synchronize()  # SYNC: measurement boundary
    return elapsed / launches


def calibrate(cfg: CalibrateConfig, command: str) -> HardwareProfile:
    import cupy

    from moespeq.runtime import copy_bench as cb
    from moespeq.runtime.bench_kernels import bench_copies, environment
    from moespeq.runtime.kernel_bench import LayerBench
    from moespeq.runtime.launch_config import launch_config, shape_key, write_configs
    from moespeq.runtime.tune import tune

    env = environment()
    spec = get_model(cfg.model)
    log.info("copies: pinned/pageable H2D, D2H, duplex, latency")
    h2d = [(s, cb.h2d_gbps(s)) for s in cfg.sizes_bytes]
    pageable = [(s, cb.h2d_gbps(s, pinned=False)) for s in cfg.pageable_sizes_bytes]
    d2h = [(s, cb.d2h_gbps(s)) for s in cfg.sizes_bytes]
    duplex, latency = cb.h2d_during_d2h_gbps(), cb.copy_latency_s()
    hbm = cb.hbm_copy_gbps()
    tflops, matmul_label = cb.bf16_matmul_tflops()
    log.info("kernels for %s", spec.name)
    lb = LayerBench.build(spec)
    geo = lb.geo
    if cfg.tune:
        best = {k: {shape_key(geo): {t: c for t, (c, _) in tune(lb, k, cfg.tokens).items()}}
                for k in ("moe_int4", "moe_bf16")}
        path = write_configs(env["gpu"], command, best)
        log.info("tuned launch parameters written to %s", path)
    tables = kernel_tables(lb, cfg.tokens)
    int4_cfg = launch_config("moe_int4", env["gpu"], geo, 1)
    one_layer = lb.int4_call(1, int4_cfg)
    int4_s = tables["moe_int4_layer_s"]["time_s"][0][0]
    copies = bench_copies(lb, max(b for _, b in h2d), tokens=1, int4_s_per_call=int4_s)
    configs = {k: {t: launch_config(k, env["gpu"], geo, t).to_dict() for t in cfg.tokens}
               for k in ("moe_int4", "moe_bf16")}
    return HardwareProfile(
        name=cfg.name or f"calibrated-{env['gpu'].replace(' ', '-').lower()}",
        gpu=f"{env['gpu']} ({env['sm_count']} SMs), driver {env['driver']}",
        source=(f"measured by `{command}` on {env['date']} with CuPy {env['cupy']}; bf16 throughput through "
                f"{matmul_label}; copy/compute overlap with {spec.name} INT4 layers"),
        gpu_memory_bytes=int(cupy.cuda.runtime.memGetInfo()[1]),
        h2d_pinned=BandwidthTable.from_pairs(h2d), h2d_pageable=BandwidthTable.from_pairs(pageable),
        d2h_pinned=BandwidthTable.from_pairs(d2h), h2d_during_d2h_gbps=duplex, copy_latency_s=latency,
        copy_engines=int(cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)["asyncEngineCount"]),
        hbm_gbps=hbm, bf16_tflops=tflops, copy_compute_overlap=copies["overlap"]["efficiency"],
        launch_overhead_s=launch_overhead_s(one_layer),
        kernel_tables={key: {spec.name: table} for key, table in tables.items()}
        | {"expert_h2d_s": {spec.name: geo.expert_bytes_bf16 / (copies["h2d_gbps"] * 1e9)},
           "launch_configs": {spec.name: configs}},
    )
