"""Hardware profiles: what the simulator and the governor need to know about one GPU and its PCIe link.

A profile holds bandwidth-vs-size tables for host-to-device and device-to-host copies (pinned and
pageable), per-copy latency, the copy engines, HBM bandwidth and matrix throughput, and optional measured
kernel-time tables that `moespeq calibrate` writes. Each preset says where its numbers come from.

Usage:
    hw = get_hardware("h200-pcie5"); hw.h2d_time_s(157_286_400)
    hw = load_hardware("hw.json")   # written by `moespeq calibrate` or `save_hardware`
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from moespeq.errors import UserError

MIB = 2**20
GIB = 2**30


@dataclass(frozen=True)
class BandwidthTable:
    """Effective copy bandwidth (GB/s, 1e9 bytes per second, latency included) at measured transfer sizes."""

    size_bytes: tuple[int, ...]
    gbps: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.size_bytes) != len(self.gbps) or not self.size_bytes:
            raise ValueError("BandwidthTable needs as many sizes as bandwidths, at least one")
        if list(self.size_bytes) != sorted(self.size_bytes) or min(self.size_bytes) <= 0:
            raise ValueError("BandwidthTable.size_bytes must be positive and increasing")
        if min(self.gbps) <= 0:
            raise ValueError("BandwidthTable.gbps must be positive")

    def at(self, size_bytes: float) -> float:
        """Bandwidth at a size, interpolated in log(size); clamped to the measured range."""
        if len(self.size_bytes) == 1:
            return self.gbps[0]
        return float(np.interp(np.log(max(size_bytes, 1.0)), np.log(self.size_bytes), self.gbps))

    @classmethod
    def from_pairs(cls, pairs: list[tuple[float, float]]) -> BandwidthTable:
        return cls(tuple(int(s) for s, _ in pairs), tuple(float(b) for _, b in pairs))


@dataclass(frozen=True)
class HardwareProfile:
    """One GPU, its memory and its PCIe link; every number is in the unit its name says."""

    name: str
    gpu: str
    source: str
    gpu_memory_bytes: int
    h2d_pinned: BandwidthTable
    h2d_pageable: BandwidthTable
    d2h_pinned: BandwidthTable
    h2d_during_d2h_gbps: float  # pinned H2D rate while a D2H copy runs (half-duplex links slow down)
    copy_latency_s: float  # fixed cost of one copy, below the smallest table size
    copy_engines: int  # independent DMA engines (H2D and D2H can run at once when >= 2)
    hbm_gbps: float  # device copy bandwidth counting bytes read plus written
    bf16_tflops: float  # dense bf16 matrix throughput
    copy_compute_overlap: float = 1.0  # fraction of a copy hidden under a concurrent kernel
    launch_overhead_s: float = 5e-6  # host cost of one kernel launch
    kernel_tables: dict[str, Any] = field(default_factory=dict)  # measured times, keyed by what was timed

    def __post_init__(self) -> None:
        for name in ("h2d_during_d2h_gbps", "hbm_gbps", "bf16_tflops", "gpu_memory_bytes"):
            if getattr(self, name) <= 0:
                raise ValueError(f"HardwareProfile.{name}={getattr(self, name)} must be positive")
        if self.copy_engines < 1:
            raise ValueError(f"HardwareProfile.copy_engines={self.copy_engines} must be at least 1")
        if not 0.0 <= self.copy_compute_overlap <= 1.0:
            raise ValueError(f"HardwareProfile.copy_compute_overlap={self.copy_compute_overlap} must be in [0, 1]")

    def h2d_gbps(self, size_bytes: float, pinned: bool = True) -> float:
        return (self.h2d_pinned if pinned else self.h2d_pageable).at(size_bytes)

    def h2d_time_s(self, size_bytes: float, pinned: bool = True, during_d2h: bool = False) -> float:
        """Seconds for one host-to-device copy of `size_bytes`."""
        gbps = self.h2d_gbps(size_bytes, pinned)
        if during_d2h:
            gbps = min(gbps, self.h2d_during_d2h_gbps)
        return self.copy_latency_s * (size_bytes < self.h2d_pinned.size_bytes[0]) + size_bytes / (gbps * 1e9)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "hardware profile") -> HardwareProfile:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        missing = sorted(f.name for f in dataclasses.fields(cls)
                         if f.name not in data and f.default is dataclasses.MISSING
                         and f.default_factory is dataclasses.MISSING)
        if unknown or missing:
            raise UserError(f"{where}: unknown keys {unknown} / missing keys {missing}; write it with `moespeq calibrate` or `moespeq hardware --json`")
        values = dict(data)
        try:
            for key in ("h2d_pinned", "h2d_pageable", "d2h_pinned"):
                values[key] = BandwidthTable(tuple(int(s) for s in data[key]["size_bytes"]),
                                             tuple(float(b) for b in data[key]["gbps"]))
            return cls(**values)
        except (TypeError, KeyError, ValueError) as exc:
            raise UserError(f"{where}: invalid hardware profile ({exc})") from None


def _table(*pairs: tuple[float, float]) -> BandwidthTable:
    return BandwidthTable.from_pairs(list(pairs))


HARDWARE_PRESETS: dict[str, HardwareProfile] = {
    "h200-pcie5": HardwareProfile(
        name="h200-pcie5", gpu="NVIDIA H200 (141 GB HBM3e), PCIe Gen5 x16",
        source=("measured on the lent H200, 2026-11: pinned H2D 38.6 GB/s at 1 MiB, 53.4 at 16 MiB, 55.0 from 64 MiB; "
                "pageable 8.4-12.9 GB/s (low end assigned to small copies); a copy on its own stream fully overlapped "
                "a matmul stream; device copy 4.3 TB/s; bf16 GEMM 790 TFLOP/s. D2H and H2D-during-D2H not measured: "
                "assumed equal to H2D (PCIe is full duplex); rerun `moespeq calibrate` to replace them"),
        gpu_memory_bytes=141 * 10**9,
        h2d_pinned=_table((MIB, 38.6), (16 * MIB, 53.4), (64 * MIB, 55.0), (GIB, 55.0)),
        h2d_pageable=_table((MIB, 8.4), (64 * MIB, 12.9), (GIB, 12.9)),
        d2h_pinned=_table((MIB, 38.6), (16 * MIB, 53.4), (64 * MIB, 55.0), (GIB, 55.0)),
        h2d_during_d2h_gbps=55.0, copy_latency_s=8e-6, copy_engines=2, hbm_gbps=4300.0, bf16_tflops=790.0,
    ),
    "a100-40g-pcie4": HardwareProfile(
        name="a100-40g-pcie4", gpu="NVIDIA A100-PCIE-40GB, PCIe 4.0 x16 (the paper's machine)",
        source=("public measurements of A100 PCIe 4.0 x16: pinned H2D about 25 GB/s for large copies (lower for 1 MiB), "
                "about 11 GB/s while a D2H copy runs; HBM2 1.56 TB/s and 312 TFLOP/s dense bf16 from NVIDIA's datasheet; "
                "pageable from the usual 40-50 % of pinned"),
        gpu_memory_bytes=40 * 10**9,
        h2d_pinned=_table((MIB, 18.0), (16 * MIB, 24.0), (64 * MIB, 25.0), (GIB, 25.0)),
        h2d_pageable=_table((MIB, 7.0), (64 * MIB, 11.0), (GIB, 11.0)),
        d2h_pinned=_table((MIB, 18.0), (16 * MIB, 24.0), (64 * MIB, 25.0), (GIB, 25.0)),
        h2d_during_d2h_gbps=11.0, copy_latency_s=10e-6, copy_engines=2, hbm_gbps=1555.0, bf16_tflops=312.0,
    ),
    "rtx4090-pcie4": HardwareProfile(
        name="rtx4090-pcie4", gpu="NVIDIA GeForce RTX 4090 (24 GB GDDR6X), PCIe 4.0 x16",
        source=("datasheet: PCIe 4.0 x16 (32 GB/s raw; about 25 GB/s effective assumed, as on other PCIe 4.0 cards), "
                "1008 GB/s GDDR6X, 165 TFLOP/s dense bf16 with fp32 accumulate; GeForce cards have one usable "
                "copy direction at a time in practice, so H2D during D2H is taken as half"),
        gpu_memory_bytes=24 * 10**9,
        h2d_pinned=_table((MIB, 18.0), (16 * MIB, 24.0), (64 * MIB, 25.0), (GIB, 25.0)),
        h2d_pageable=_table((MIB, 7.0), (64 * MIB, 11.0), (GIB, 11.0)),
        d2h_pinned=_table((MIB, 18.0), (16 * MIB, 24.0), (64 * MIB, 25.0), (GIB, 25.0)),
        h2d_during_d2h_gbps=12.5, copy_latency_s=10e-6, copy_engines=1, hbm_gbps=1008.0, bf16_tflops=165.0,
    ),
}


def get_hardware(name_or_path: str) -> HardwareProfile:
    """A preset by exact name, or a profile JSON file."""
    if name_or_path in HARDWARE_PRESETS:
        return HARDWARE_PRESETS[name_or_path]
    if Path(name_or_path).suffix == ".json" or Path(name_or_path).exists():
        return load_hardware(name_or_path)
    raise UserError(f"unknown hardware {name_or_path!r}: use one of {', '.join(HARDWARE_PRESETS)} or a profile .json")


def load_hardware(path: str | Path) -> HardwareProfile:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such hardware profile; write one with `moespeq calibrate --out {path}`") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a JSON hardware profile ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a hardware profile is a JSON object")
    return HardwareProfile.from_dict(data, where=str(path))


def save_hardware(profile: HardwareProfile, path: str | Path) -> None:
    Path(path).write_text(json.dumps(profile.to_dict(), indent=2) + "\n")
