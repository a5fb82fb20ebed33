"""Device-resident synthetic MoE layers at a real model's shapes, and timed calls of the kernels on them.

Shared by the kernel benchmark, launch-parameter tuning and `moespeq calibrate` (CuPy only). Several copies
of the layer's weights are rotated call by call, and each call gets a different routing, so that repeated
calls do not find their weights in L2 (the copies together hold at least 4x the L2 per call's bytes).

Usage:
    lb = LayerBench.build(get_model("phi-3.5-moe"), tokens=(1, 4, 8))
    t_s = median_time_s(lb.int4_call(4, config))
    ceiling_s = median_time_s(lb.stream_call(4))   # a plain read of the same bytes
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import cupy
import numpy as np

from moespeq.runtime.bf16 import to_bf16
from moespeq.runtime.int4_pack import Int4Experts, PackedMatrix
from moespeq.runtime.launch_config import LaunchConfig
from moespeq.runtime.layout import ExpertGeometry, SlotArena
from moespeq.runtime.moe_kernels import (
    MoeWorkspace,
    device_info,
    launch_moe_bf16,
    launch_moe_int4,
    launch_stream_read,
)
from moespeq.spec import ModelSpec

log = logging.getLogger(__name__)

ROUTINGS = 16  # routing sets cycled per token count
WEIGHT_STD = 0.02
INT4_BYTES_CAP = 8 * 2**30
BF16_BYTES_CAP = 40 * 2**30


def random_bf16(shape: tuple[int, ...], std: float = 1.0) -> Any:
    return to_bf16(cupy.random.standard_normal(shape, dtype=cupy.float32) * np.float32(std))


def random_uint32(shape: tuple[int, ...]) -> Any:
    halves = cupy.random.randint(0, 1 << 16, size=(*shape, 2), dtype=cupy.int32).astype(cupy.uint32)
    return halves[..., 0] | (halves[..., 1] << 16)


def random_int4_experts(geo: ExpertGeometry) -> Int4Experts:
    """Uniform random codes and bf16 scales (weights of std ~ WEIGHT_STD), packed, on the device."""
    def matrix(out_dim: int, in_dim: int) -> PackedMatrix:
        codes = random_uint32((geo.experts, out_dim // 16, in_dim // 64, 32, 4))
        s = to_bf16(cupy.random.uniform(0.5, 1.5, (geo.experts, out_dim // 16, in_dim // 128, 8, 2), dtype=cupy.float32)
                    * np.float32(WEIGHT_STD / 4.6)).astype(cupy.uint32)
        return PackedMatrix(codes, s[..., 0] | (s[..., 1] << 16))
    d, f = geo.hidden, geo.moe_ffn
    return Int4Experts(matrix(f, d), matrix(f, d), matrix(d, f))


def routing_with_distinct(tokens: int, geo: ExpertGeometry, distinct: int | None, rng: np.random.Generator):
    """ids [T, K] (distinct per token) and normalised weights; `distinct` experts in all (None: random top-k)."""
    k = geo.top_k
    if distinct is None:
        ids = np.stack([rng.choice(geo.experts, k, replace=False) for _ in range(tokens)])
    else:
        assert k <= distinct <= min(geo.experts, tokens * k), (distinct, tokens, k)
        chosen = rng.choice(geo.experts, distinct, replace=False)
        ids = chosen[(np.arange(tokens)[:, None] * k + np.arange(k)[None, :]) % distinct]
    w = rng.random((tokens, k)).astype(np.float32) + 0.1
    return ids.astype(np.int32), (w / w.sum(axis=1, keepdims=True)).astype(np.float32)


@dataclass
class Routing:
    ids: Any  # [T, K] int32 on the device
    w: Any  # [T, K] float32 on the device
    groups: list[tuple[int, Any]]  # (expert, token indices on the device), for the per-expert matmul baseline
    used: Any  # [U] int32 on the device: the distinct experts, ascending


@dataclass
class LayerBench:
    """Rotated weight copies of one model's MoE layer, with routings per token count."""

    spec: ModelSpec
    geo: ExpertGeometry
    int4_layers: list[Int4Experts]
    cache: SlotArena  # bf16 experts of `bf16_layers` layers; slot = layer * E + expert
    bf16_layers: int
    workspace: MoeWorkspace
    routings: dict[tuple[int, int | None], list[Routing]] = field(default_factory=dict)
    xs: dict[int, list[Any]] = field(default_factory=dict)

    @classmethod
    def build(cls, spec: ModelSpec, seed: int = 0) -> LayerBench:
        cupy.random.seed(seed)
        geo = ExpertGeometry.from_spec(spec)
        l2 = device_info().l2_bytes
        per_call_int4 = geo.top_k * geo.expert_bytes_int4
        per_call_bf16 = geo.top_k * geo.expert_bytes_bf16
        n_int4 = _copies(per_call_int4, l2, geo.experts * geo.expert_bytes_int4, INT4_BYTES_CAP)
        n_bf16 = _copies(per_call_bf16, l2, geo.experts * geo.expert_bytes_bf16, BF16_BYTES_CAP)
        log.info("%s: %d INT4 and %d bf16 copies of the layer rotated", spec.name, n_int4, n_bf16)
        int4_layers = [random_int4_experts(geo) for _ in range(n_int4)]
        arena = cupy.empty((n_bf16 * geo.experts, geo.expert_elems), dtype=cupy.uint16)
        for slot in range(arena.shape[0]):
            arena[slot] = random_bf16((geo.expert_elems,), WEIGHT_STD)
        table = cupy.arange(n_bf16 * geo.experts, dtype=cupy.int32).reshape(n_bf16, geo.experts)
        return cls(spec, geo, int4_layers, SlotArena(arena, table, geo), n_bf16, MoeWorkspace(geo))

    # ---- inputs -------------------------------------------------------------------------------------------
    def routing(self, tokens: int, distinct: int | None = None) -> list[Routing]:
        key = (tokens, distinct)
        if key not in self.routings:
            rng = np.random.default_rng(1000 * tokens + (distinct or 0))
            sets = []
            for _ in range(ROUTINGS):
                ids, w = routing_with_distinct(tokens, self.geo, distinct, rng)
                used = np.unique(ids)
                groups = [(int(e), cupy.asarray(np.nonzero((ids == e).any(axis=1))[0])) for e in used]
                sets.append(Routing(cupy.asarray(ids), cupy.asarray(w), groups, cupy.asarray(used)))
            self.routings[key] = sets
        if tokens not in self.xs:
            self.xs[tokens] = [random_bf16((tokens, self.geo.hidden)) for _ in range(ROUTINGS)]
        return self.routings[key]

    def mean_distinct(self, tokens: int, distinct: int | None = None) -> float:
        return float(np.mean([len(r.groups) for r in self.routing(tokens, distinct)]))

    # ---- calls --------------------------------------------------------------------------------------------
    def int4_call(self, tokens: int, config: LaunchConfig, distinct: int | None = None) -> Callable[[int], Any]:
        sets, xs = self.routing(tokens, distinct), self.xs[tokens]
        out = cupy.empty((tokens, self.geo.hidden), dtype=cupy.uint16)

        def call(i: int) -> Any:
            r = sets[i % ROUTINGS]
            return launch_moe_int4(xs[i % ROUTINGS], r.ids, r.w, self.int4_layers[i % len(self.int4_layers)],
                                   self.workspace, out, config)
        return call

    def stream_call(self, tokens: int, distinct: int | None = None) -> Callable[[int], Any]:
        """A plain read of the bytes int4_call(tokens) reads: routing i's experts in use in weight copy i."""
        sets, sink = self.routing(tokens, distinct), cupy.zeros(1, dtype=cupy.uint32)

        def call(i: int) -> Any:
            return launch_stream_read(self.int4_layers[i % len(self.int4_layers)], sets[i % ROUTINGS].used, sink)
        return call

    def bf16_call(self, tokens: int, config: LaunchConfig, distinct: int | None = None) -> Callable[[int], Any]:
        sets, xs = self.routing(tokens, distinct), self.xs[tokens]
        out = cupy.empty((tokens, self.geo.hidden), dtype=cupy.uint16)

        def call(i: int) -> Any:
            r = sets[i % ROUTINGS]
            return launch_moe_bf16(xs[i % ROUTINGS], r.ids, r.w, self.cache, i % self.bf16_layers, self.workspace,
                                   out, config)
        return call

    def matmul_call(self, tokens: int, matmul: Callable[[Any, Any], Any]) -> Callable[[int], Any]:
        """The baseline: per expert in use, gather its tokens and run the three bf16 GEMMs (library matmul).

        Only the GEMMs and the gather are timed (the down GEMM takes the gate output as its [n, F] input),
        so this is a lower bound on any implementation built from library calls.
        """
        sets, xs = self.routing(tokens), self.xs[tokens]
        d, f = self.geo.hidden, self.geo.moe_ffn

        def call(i: int) -> Any:
            r, layer = sets[i % ROUTINGS], i % self.bf16_layers
            for e, tok in r.groups:
                w = self.cache.arena[layer * self.geo.experts + e]
                xe = cupy.take(xs[i % ROUTINGS], tok, axis=0)  # [n, D]
                g = matmul(xe, w[: f * d].reshape(f, d))  # [n, F]
                matmul(xe, w[f * d: 2 * f * d].reshape(f, d))
                matmul(g, w[2 * f * d:].reshape(d, f))  # [n, D]
        return call


def _copies(per_call_bytes: int, l2_bytes: int, layer_bytes: int, cap_bytes: int) -> int:
    wanted = max(2, math.ceil(4 * l2_bytes / per_call_bytes))
    return max(1, min(wanted, 16, cap_bytes // layer_bytes))


def bf16_matmuls() -> dict[str, Callable[[Any, Any], Any]]:
    """x [n, K] @ w[N, K]^T on bf16 bit arrays, by each library that works here: "cupy.matmul" (bf16 through
    ml_dtypes) and "torch.matmul" (the same device buffers through DLPack, cuBLAS underneath)."""
    impls: dict[str, Callable[[Any, Any], Any]] = {}
    try:
        import ml_dtypes

        bf16 = np.dtype(ml_dtypes.bfloat16)

        def cupy_mm(x: Any, w: Any) -> Any:
            return cupy.matmul(x.view(bf16), w.view(bf16).T).view(cupy.uint16)

        impls["cupy.matmul"] = _probe(cupy_mm)
    except Exception as exc:  # noqa: BLE001 - a failed probe only removes this baseline, and is logged
        log.warning("cupy.matmul on bf16 is not available here: %s", exc)
    try:
        import torch

        def torch_mm(x: Any, w: Any) -> Any:
            tx = torch.from_dlpack(x).view(torch.bfloat16)
            tw = torch.from_dlpack(w).view(torch.bfloat16)
            return cupy.from_dlpack((tx @ tw.T).view(torch.uint16))

        impls["torch.matmul"] = _probe(torch_mm)
    except Exception as exc:  # noqa: BLE001 - as above
        log.warning("torch.matmul on the same buffers is not available here: %s", exc)
    return impls


def _probe(mm: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """Check one matmul against a float32 product before it is timed."""
    from moespeq.runtime.bf16 import from_bf16

    x, w = random_bf16((4, 256)), random_bf16((128, 256))
    got = from_bf16(mm(x, w))
    want = from_bf16(x) @ from_bf16(w).T
    err = float(cupy.linalg.norm(got - want) / cupy.linalg.norm(want))  # SYNC: setup check, before any timing
    if not err < 1e-2:
        raise RuntimeError(f"bf16 matmul probe off by {err:.3g}")
    return mm
