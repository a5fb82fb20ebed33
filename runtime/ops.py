"""The runtime's MoE layer operations: CUDA kernels on CuPy arrays, the NumPy references on NumPy arrays.

The rest of the runtime calls MoE math only through here, so the same decode loop runs on a CPU.

Usage:
    y = moe_int4(x, topk_ids, topk_w, experts)                     # draft layer
    y = moe_bf16(x, topk_ids, topk_w, store.slot_arena(), layer)   # verify layer
"""

from __future__ import annotations

from typing import Any

from moespeq.runtime.backend import is_device_array
from moespeq.runtime.int4_pack import Int4Experts
from moespeq.runtime.launch_config import LaunchConfig, launch_config
from moespeq.runtime.layout import ExpertGeometry, SlotArena
from moespeq.runtime.reference import moe_bf16_reference, moe_int4_reference


def _prepare(kernel: str, x: Any, geometry: ExpertGeometry, workspace: Any, out: Any, config: LaunchConfig | None):
    from moespeq.runtime import moe_kernels

    workspace = workspace or moe_kernels.MoeWorkspace(geometry)
    out = _empty_like(x) if out is None else out
    config = config or launch_config(kernel, moe_kernels.device_info().name, geometry, x.shape[0])
    return moe_kernels, workspace, out, config


def _empty_like(x: Any) -> Any:
    import cupy

    return cupy.empty_like(x)


def moe_int4(x: Any, topk_ids: Any, topk_w: Any, experts: Int4Experts, workspace: Any = None, out: Any = None,
             config: LaunchConfig | None = None) -> Any:
    """y [T, D] bf16 bits of one INT4 MoE layer; x [T, D] bf16 bits, topk_ids [T, K] int32, topk_w [T, K] float32."""
    if not is_device_array(x):
        return moe_int4_reference(x, topk_ids, topk_w, experts)
    geometry = ExpertGeometry(experts.hidden, experts.moe_ffn, experts.experts, topk_ids.shape[1])
    kernels, workspace, out, config = _prepare("moe_int4", x, geometry, workspace, out, config)
    return kernels.launch_moe_int4(x, topk_ids, topk_w, experts, workspace, out, config)


def moe_bf16(x: Any, topk_ids: Any, topk_w: Any, cache: SlotArena, layer: int, workspace: Any = None,
             out: Any = None, config: LaunchConfig | None = None) -> Any:
    """y [T, D] bf16 bits of one bf16 MoE layer whose experts sit in the cache arena (slot table)."""
    if not is_device_array(x):
        return moe_bf16_reference(x, topk_ids, topk_w, cache.arena, cache.slot_table, layer)
    kernels, workspace, out, config = _prepare("moe_bf16", x, cache.geometry, workspace, out, config)
    return kernels.launch_moe_bf16(x, topk_ids, topk_w, cache, layer, workspace, out, config)
