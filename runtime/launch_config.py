"""Tuned launch parameters of the MoE kernels: data in runtime/configs/<device>.json, not code.

A file holds, per kernel ("moe_int4", "moe_bf16") and shape key "D=<hidden>,F=<moe_ffn>,E=<experts>,K=<top_k>",
the best parameters found at measured token counts:

    {"device": "NVIDIA H200", "source": "<command that measured it>",
     "kernels": {"moe_int4": {"D=4096,F=6400,E=16,K=2": {"1": {"warps": 4, "blocks_per_sm": 2, "down_splits": 1,
                                                             "k_splits": 1}}}}}

The key holds E and K as well as the expert shape because a launch's work depends on them: its items are
counted per distinct expert in use (how many T tokens' top-K choices among E name), its prologue walks all E
experts, and the workspace's strides follow min(E, 16 K). Two models with one expert shape (qwen1.5-moe-a2.7b
and deepseek-v2-lite) tune to different parameters.

Lookup takes the nearest measured token count of the exact key; without the file or the key it falls back to
DEFAULT_CONFIG with a warning, once per (kernel, device, key). Entries of an older file keyed "D=..,F=.." only
are ignored with a warning (they would give one model another's parameters) and dropped when the file is
next written. `moespeq calibrate` and runtime/gpu_check.py write these files.

Usage:
    cfg = launch_config("moe_int4", "NVIDIA H200", ExpertGeometry(4096, 6400, 16, 2), tokens=4)
"""

from __future__ import annotations

import functools
import json
import logging
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from moespeq.runtime.layout import MAX_WARPS, ExpertGeometry

log = logging.getLogger(__name__)

CONFIG_DIR = Path(__file__).parent / "configs"
KERNELS = ("moe_int4", "moe_bf16")
_KEY = re.compile(r"D=\d+,F=\d+,E=\d+,K=\d+")


RING_CHUNKS = (8, 16, 32)  # stage sizes of the INT4 kernel's bulk-copy ring (int4_moe.cu, moe_int4_ring_t8)
RING_MAX_DEPTH = 16  # its stages at most (int4_moe.cu's RING_MAX_STAGES)


@dataclass(frozen=True)
class LaunchConfig:
    """warps per block; blocks per SM of the persistent grid; splits of F in the down projection; warps
    sharing one 16-row tile's reduction (a block covers warps / k_splits row tiles at a time);
    ring_chunks > 0: the INT4 kernel at T <= 8 streams through its bulk-copy ring, stages of that many 64-wide
    chunks per matrix, `warps` consumer warps plus a producer and an output warp per block (k_splits must be 1),
    at most ring_depth stages (0: as many as fit the shared memory; deeper is not always faster, run 22b)."""

    warps: int = 4
    blocks_per_sm: int = 2
    down_splits: int = 1
    k_splits: int = 1
    ring_chunks: int = 0
    ring_depth: int = 0

    def __post_init__(self) -> None:
        if not 1 <= self.warps <= MAX_WARPS:
            raise ValueError(f"LaunchConfig.warps={self.warps}: use 1..{MAX_WARPS}")
        if self.blocks_per_sm < 1:
            raise ValueError(f"LaunchConfig.blocks_per_sm={self.blocks_per_sm}: must be at least 1")
        if not 1 <= self.down_splits <= 64:
            raise ValueError(f"LaunchConfig.down_splits={self.down_splits}: use 1..64")
        if self.k_splits < 1 or self.warps % self.k_splits:
            raise ValueError(f"LaunchConfig.k_splits={self.k_splits}: must divide warps={self.warps}")
        if self.ring_chunks and (self.ring_chunks not in RING_CHUNKS or self.k_splits != 1):
            raise ValueError(f"LaunchConfig.ring_chunks={self.ring_chunks}: use 0 or one of {RING_CHUNKS}, "
                             f"with k_splits=1")
        if self.ring_depth and (not self.ring_chunks or not 2 <= self.ring_depth <= RING_MAX_DEPTH):
            raise ValueError(f"LaunchConfig.ring_depth={self.ring_depth}: use 0, or 2..{RING_MAX_DEPTH} with ring_chunks")

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


DEFAULT_CONFIG = LaunchConfig()


def shape_key(geometry: ExpertGeometry) -> str:
    """'D=2048,F=1408,E=60,K=4': everything of a layer that its launches' work depends on (module docstring)."""
    return f"D={geometry.hidden},F={geometry.moe_ffn},E={geometry.experts},K={geometry.top_k}"


def config_path(device_name: str) -> Path:
    """runtime/configs/NVIDIA_H200.json for device 'NVIDIA H200'."""
    return CONFIG_DIR / (re.sub(r"[^A-Za-z0-9.-]+", "_", device_name).strip("_") + ".json")


@functools.cache
def _warn_once(message: str) -> None:
    log.warning(message)


def _read(path: Path) -> dict[str, Any] | None:
    """The file's contents without entries of the old D,F-only key (warned about), or None without a file."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    if set(data) - {"device", "source", "kernels"} or set(data.get("kernels", {})) - set(KERNELS):
        raise ValueError(f"{path}: unknown keys; expected device, source, kernels[{', '.join(KERNELS)}]")
    for kernel, shapes in data.get("kernels", {}).items():
        stale = sorted(key for key in shapes if not _KEY.fullmatch(key))
        if stale:
            _warn_once(f"{path}: ignoring {kernel} launch parameters keyed {', '.join(stale)} (keys are now "
                       f"D=..,F=..,E=..,K=..); run `moespeq calibrate` to tune them")
            data["kernels"][kernel] = {key: table for key, table in shapes.items() if key not in stale}
    return data


@functools.cache
def _load(path: Path) -> dict[str, Any] | None:
    data = _read(path)
    if data is not None:
        log.info("kernel launch parameters from %s", path)
    return data


def launch_config(kernel: str, device_name: str, geometry: ExpertGeometry, tokens: int) -> LaunchConfig:
    """The tuned parameters for this layer's key at the nearest measured token count, else the default."""
    if kernel not in KERNELS:
        raise ValueError(f"kernel {kernel!r}: use one of {', '.join(KERNELS)}")
    path = config_path(device_name)
    key = shape_key(geometry)
    table = (_load(path) or {}).get("kernels", {}).get(kernel, {}).get(key)
    if not table:
        _warn_once(f"no tuned {kernel} launch parameters for {key} on {device_name} "
                   f"in {path}; using {DEFAULT_CONFIG} (run `moespeq calibrate` to tune)")
        return DEFAULT_CONFIG
    nearest = min(table, key=lambda t: (abs(int(t) - tokens), int(t)))
    return LaunchConfig(**table[nearest])


def write_configs(device_name: str, source: str, best: dict[str, dict[str, dict[str, LaunchConfig]]],
                  path: Path | None = None) -> Path:
    """Merge best[kernel][shape_key][tokens] into the device's file (or `path`), dropping old-key entries."""
    path = path or config_path(device_name)
    data = _read(path) or {"device": device_name, "source": source, "kernels": {}}
    data["source"] = source
    for kernel, shapes in best.items():
        for key, by_tokens in shapes.items():
            data["kernels"].setdefault(kernel, {}).setdefault(key, {}).update(
                {str(t): cfg.to_dict() for t, cfg in by_tokens.items()})
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    _load.cache_clear()
    return path
