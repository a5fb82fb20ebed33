"""CUDA launchers of the MoE layer kernels (runtime/kernels/*.cu through one cupy.RawModule per file).

  launch_moe_int4  fused INT4 draft layer: gate/up dequantized in registers, SiLU, down, weighted sum (T <= 8 with
                   config.ring_chunks: through the bulk-copy ring in shared memory)
  launch_moe_bf16  bf16 verify layer: experts from the cache arena through the device slot table
  launch_stream_read  a plain read of launch_moe_int4's bytes (the experts in use, packed): its bandwidth ceiling

Routing ids and weights stay on the device: nothing here reads them on the host. Import only with CuPy;
runtime/ops.py is the entry point that falls back to the NumPy references.

Usage:
    ws = MoeWorkspace(geometry, cupy); y = launch_moe_int4(x, ids, w, experts, ws, out, config)
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from typing import Any

import cupy
import numpy as np

from moespeq.runtime.int4_pack import Int4Experts
from moespeq.runtime.kernel_source import kernel_source
from moespeq.runtime.launch_config import RING_MAX_DEPTH, LaunchConfig
from moespeq.runtime.layout import MAX_SLOTS, ExpertGeometry, SlotArena

log = logging.getLogger(__name__)

_CTR_ERROR, _CTR_ROWS = 3, 4  # counters[] layout of moe_common.cuh
ERROR_FLAGS = {1: "an expert id outside [0, E)", 2: "an expert without a cache slot"}


RING_FUNCTION = "moe_int4_ring_t8"
RING_MAX_TOKENS, RING_MAX_SLOTS, RING_MAX_GROUPS = 8, 64, 64  # int4_moe.cu's limits of the ring (stages: RING_MAX_DEPTH)
RING_HELPER_WARPS = 2  # a ring block's warps besides its consumers: the producer and the output warp
INT4_DEPTH = (2, 2)  # register stages per warp in int4_moe.cu, phase 1 and 2 (-D MOE_INT4_DEPTH1/2)
_OPTIONS = {"int4_moe": ("--std=c++17", f"-DMOE_INT4_DEPTH1={INT4_DEPTH[0]}", f"-DMOE_INT4_DEPTH2={INT4_DEPTH[1]}"),
            "expert_bf16": ("--std=c++17",), "stream_read": ("--std=c++17",)}
STREAM_WARPS = 8  # STREAM_THREADS / 32 of stream_read.cu (its launch bounds)


@functools.cache
def _module(name: str) -> cupy.RawModule:
    log.info("compiling %s.cu for the current device with %s", name, " ".join(_OPTIONS[name]))
    return cupy.RawModule(code=kernel_source(name), options=_OPTIONS[name])


@functools.cache
def get_kernel(name: str, function: str) -> cupy.RawKernel:
    return _module(name).get_function(function)


@dataclass(frozen=True)
class DeviceInfo:
    name: str
    sm_count: int
    regs_per_sm: int
    smem_per_sm_bytes: int
    max_threads_per_sm: int
    l2_bytes: int
    smem_per_block_optin_bytes: int


@functools.cache
def device_info() -> DeviceInfo:
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return DeviceInfo(name, props["multiProcessorCount"], props["regsPerMultiprocessor"],
                      props["sharedMemPerMultiprocessor"], props["maxThreadsPerMultiProcessor"], props["l2CacheSize"],
                      props["sharedMemPerBlockOptin"])


@functools.cache
def occupancy(kernel: cupy.RawKernel, warps: int) -> int:
    """Blocks of `warps` warps that fit on one SM (registers, shared memory, threads)."""
    assert 32 * warps <= kernel.max_threads_per_block, (warps, kernel.max_threads_per_block)  # once per kernel and size
    dev = device_info()
    regs_per_warp = -(-kernel.num_regs * 32 // 256) * 256  # allocated in units of 256 per warp
    by_regs = dev.regs_per_sm // (regs_per_warp * warps)
    by_smem = dev.smem_per_sm_bytes // (kernel.shared_size_bytes + 1024)  # 1 KiB reserved per block
    by_threads = dev.max_threads_per_sm // (32 * warps)
    return max(1, min(by_regs, by_smem, by_threads))


class MoeWorkspace:
    """Scratch of the MoE kernels for one geometry and one stream; the kernels re-arm its counters.

    hbuf [U, 16, F] bf16 bits: SiLU(gate) * up per expert in use and token;
    partial [D/16, U, max_splits, 256] fp32: down-projection partials;
    counters [4 + D/16 + U] int32: ticket, exits, error flags, per row tile, per expert phase 1 done.
    """

    def __init__(self, geometry: ExpertGeometry, max_splits: int = 16):
        u, d, f = geometry.max_used_experts, geometry.hidden, geometry.moe_ffn
        self.geometry = geometry
        self.max_splits = max_splits
        self.hbuf = cupy.zeros((u, 16, f), dtype=cupy.uint16)
        self.partial = cupy.zeros(d // 16 * u * max_splits * 256, dtype=cupy.float32)
        self.counters = cupy.zeros(_CTR_ROWS + d // 16 + u, dtype=cupy.int32)

    def errors(self) -> list[str]:
        """What the kernels flagged since the last clear (a device read)."""
        flags = int(self.counters[_CTR_ERROR].get())  # SYNC: error check for tests and diagnostics only
        return [text for bit, text in ERROR_FLAGS.items() if flags & bit]

    def clear_errors(self) -> None:
        self.counters[_CTR_ERROR] = 0


def _check_routing(x: Any, topk_ids: Any, topk_w: Any, geometry: ExpertGeometry, out: Any) -> int:
    tokens = x.shape[0]
    geometry.check_tokens(tokens)
    assert x.dtype == cupy.uint16 and x.shape == (tokens, geometry.hidden) and x.flags.c_contiguous, (x.dtype, x.shape)
    assert topk_ids.dtype == cupy.int32 and topk_ids.shape == (tokens, geometry.top_k) and topk_ids.flags.c_contiguous
    assert topk_w.dtype == cupy.float32 and topk_w.shape == (tokens, geometry.top_k) and topk_w.flags.c_contiguous
    assert out.dtype == cupy.uint16 and out.shape == x.shape and out.flags.c_contiguous
    return tokens


def ring_stages(config: LaunchConfig, tokens: int, geo: ExpertGeometry) -> int:
    """Stages of the bulk-copy ring that fit beside x in the shared memory of config.blocks_per_sm blocks (at most
    config.ring_depth, or RING_MAX_DEPTH), or 0 where config is not a ring configuration or fewer than 2 fit (the
    register path then)."""
    if (not config.ring_chunks or tokens > RING_MAX_TOKENS or tokens * geo.top_k > RING_MAX_SLOTS
            or geo.hidden // 128 > RING_MAX_GROUPS):
        return 0
    dev, static = device_info(), get_kernel("int4_moe", RING_FUNCTION).shared_size_bytes
    budget = min(dev.smem_per_block_optin_bytes, dev.smem_per_sm_bytes // config.blocks_per_sm - 1024) - static
    stages = (budget - ring_fixed_bytes(tokens, geo.hidden, config.warps)) // ring_stage_bytes(config.ring_chunks, tokens)
    stages = min(config.ring_depth or RING_MAX_DEPTH, stages)
    return stages if stages >= 2 else 0


def ring_stage_bytes(chunks: int, tokens: int) -> int:
    """RingGeometry's stage: codes of 2 * chunks chunks and their scales, then T rows of 2 * chunks chunks of h."""
    return 1056 * chunks + tokens * (256 * chunks + 64)


def ring_fixed_bytes(tokens: int, hidden: int, consumers: int) -> int:
    """RingGeometry's dynamic shared memory besides the stages: x rows (64 B longer than the row), then an item's
    sums by parity, 1 KiB per consumer warp."""
    return tokens * (2 * hidden + 64) + 2 * consumers * 1024


def _launch_geometry(kernel: cupy.RawKernel, config: LaunchConfig, workspace: MoeWorkspace) -> tuple[tuple, tuple, int]:
    assert config.down_splits <= workspace.max_splits, (config.down_splits, workspace.max_splits)
    blocks_per_sm = min(config.blocks_per_sm, occupancy(kernel, config.warps))
    grid = (device_info().sm_count * blocks_per_sm,)  # persistent: blocks claim work items from a ticket
    block = (32 * config.warps,)
    shared_mem = 0  # all static: routing table and reduction scratch, ~40 KiB
    return grid, block, shared_mem


def launch_moe_int4(x: Any, topk_ids: Any, topk_w: Any, experts: Int4Experts, workspace: MoeWorkspace, out: Any,
                    config: LaunchConfig) -> Any:
    """Fused INT4 MoE layer on the current stream.

    x [T, D] uint16 (bf16), topk_ids [T, K] int32, topk_w [T, K] float32 -> out [T, D] uint16 (bf16);
    experts: packed gate/up [E, F, D] and down [E, D, F] on the device.
    """
    geo = workspace.geometry
    tokens = _check_routing(x, topk_ids, topk_w, geo, out)
    assert (experts.experts, experts.moe_ffn, experts.hidden) == (geo.experts, geo.moe_ffn, geo.hidden)
    for m in (experts.gate, experts.up, experts.down):
        assert m.codes.dtype == cupy.uint32 and m.codes.flags.c_contiguous
        assert m.scales.dtype == cupy.uint32 and m.scales.flags.c_contiguous
    args = (x, topk_ids, topk_w, experts.gate.codes, experts.gate.scales, experts.up.codes, experts.up.scales,
            experts.down.codes, experts.down.scales, out, workspace.hbuf, workspace.partial, workspace.counters,
            np.int32(tokens), np.int32(geo.top_k), np.int32(geo.experts), np.int32(geo.hidden),
            np.int32(geo.moe_ffn), np.int32(config.down_splits), np.int32(config.k_splits), np.int32(geo.max_used_experts))
    stages = ring_stages(config, tokens, geo)
    if stages:
        assert config.down_splits <= workspace.max_splits, (config.down_splits, workspace.max_splits)
        kernel = _ring_kernel()
        grid = (device_info().sm_count * config.blocks_per_sm,)  # persistent, as the register path's
        shared_mem = stages * ring_stage_bytes(config.ring_chunks, tokens) + ring_fixed_bytes(tokens, geo.hidden,
                                                                                             config.warps)
        kernel(grid, (32 * (config.warps + RING_HELPER_WARPS),), (*args, np.int32(stages), np.int32(config.ring_chunks)),
               shared_mem=shared_mem)
        return out
    if config.ring_chunks:  # no room for the ring at this T (the nearest tuned T's choice): the register path
        config = LaunchConfig(config.warps, config.blocks_per_sm, config.down_splits, 1)
    kernel = get_kernel("int4_moe", "moe_int4_t8" if tokens <= 8 else "moe_int4_t16")
    grid, block, shared_mem = _launch_geometry(kernel, config, workspace)
    kernel(grid, block, args, shared_mem=shared_mem)
    return out


@functools.cache
def _ring_kernel() -> cupy.RawKernel:
    kernel = get_kernel("int4_moe", RING_FUNCTION)
    kernel.max_dynamic_shared_size_bytes = device_info().smem_per_block_optin_bytes - kernel.shared_size_bytes
    return kernel


def launch_moe_bf16(x: Any, topk_ids: Any, topk_w: Any, cache: SlotArena, layer: int, workspace: MoeWorkspace,
                    out: Any, config: LaunchConfig) -> Any:
    """bf16 verify MoE layer on the current stream, experts found through cache.slot_table[layer].

    x [T, D] uint16 (bf16), topk_ids [T, K] int32, topk_w [T, K] float32 -> out [T, D] uint16 (bf16).
    """
    geo = workspace.geometry
    tokens = _check_routing(x, topk_ids, topk_w, geo, out)
    assert cache.geometry == geo
    assert cache.arena.dtype == cupy.uint16 and cache.arena.flags.c_contiguous
    assert cache.slot_table.dtype == cupy.int32 and cache.slot_table.flags.c_contiguous
    assert 0 <= layer < cache.slot_table.shape[0], (layer, cache.slot_table.shape)
    kernel = get_kernel("expert_bf16", "moe_bf16_t8" if tokens <= 8 else "moe_bf16_t16")
    grid, block, shared_mem = _launch_geometry(kernel, config, workspace)
    args = (x, topk_ids, topk_w, cache.arena, cache.slot_table, np.int32(layer), np.int32(cache.arena.shape[0]),
            out, workspace.hbuf, workspace.partial, workspace.counters, np.int32(tokens), np.int32(geo.top_k),
            np.int32(geo.experts), np.int32(geo.hidden), np.int32(geo.moe_ffn), np.int32(config.down_splits),
            np.int32(config.k_splits), np.int32(geo.max_used_experts))
    kernel(grid, block, args, shared_mem=shared_mem)
    return out


def launch_stream_read(experts: Int4Experts, used: Any, sink: Any) -> Any:
    """Read the packed codes and scales of the experts in use once, on the current stream (nothing is computed).

    experts: packed gate/up [E, F, D] and down [E, D, F] on the device; used [U] int32: distinct expert ids in
    [0, E), U <= 128; sink [1] uint32: XORed with the XOR of every 32-bit word read.
    """
    mats = (experts.gate, experts.up, experts.down)
    code_units = experts.gate.codes.nbytes // (16 * experts.experts)  # the same for all three: F x D codes each
    scale_units = experts.gate.scales.nbytes // (16 * experts.experts)
    for a, units in [(m.codes, code_units) for m in mats] + [(m.scales, scale_units) for m in mats]:
        assert a.dtype == cupy.uint32 and a.flags.c_contiguous and a.nbytes == 16 * units * experts.experts, a.shape
    assert used.dtype == cupy.int32 and used.ndim == 1 and used.flags.c_contiguous, (used.dtype, used.shape)
    assert 1 <= used.size <= MAX_SLOTS and 3 * used.size * (code_units + scale_units) < 2**31, used.size  # 32-bit units
    assert sink.dtype == cupy.uint32 and sink.shape == (1,), (sink.dtype, sink.shape)
    kernel = get_kernel("stream_read", "stream_read")
    grid = (device_info().sm_count * occupancy(kernel, STREAM_WARPS),)  # every block that fits: the grid is no limit
    block = (32 * STREAM_WARPS,)
    shared_mem = 0  # static: the segment table
    args = (*(a for m in mats for a in (m.codes, m.scales)), np.int32(code_units), np.int32(scale_units), used,
            np.int32(used.size), sink)
    kernel(grid, block, args, shared_mem=shared_mem)
    return sink
