"""Array backend: CuPy when a CUDA GPU is present, NumPy otherwise.

Every kernel has a NumPy reference with the same signature (runtime/ops.py dispatches on the array type),
so the runtime runs and is tested on a CPU with small shapes and runs for real on a GPU.

Usage:
    be = get_backend("auto"); x = be.xp.zeros((4, 8), dtype=be.xp.float32)
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from moespeq.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "numpy", "cupy")


@functools.cache
def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception as exc:  # noqa: BLE001 - no cupy, no driver, no device: all mean "no GPU here"
        log.debug("no CUDA GPU: %s", exc)
        return False


@dataclass(frozen=True)
class Backend:
    """The array module in use: `xp` is numpy or cupy."""

    name: str
    xp: ModuleType

    @property
    def is_gpu(self) -> bool:
        return self.name == "cupy"


def get_backend(name: str = "auto") -> Backend:
    """'numpy', 'cupy' (a UserError without a GPU) or 'auto' (cupy when a GPU is present)."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}: use one of {', '.join(BACKENDS)}")
    if name == "numpy" or (name == "auto" and not gpu_available()):
        return Backend("numpy", np)
    if not gpu_available():
        raise UserError("backend 'cupy' needs CuPy and a CUDA GPU, and none was found; use the NumPy backend "
                        "('numpy') here, or pip install \"moespeq[cuda13]\" on a machine with an NVIDIA GPU")
    import cupy

    return Backend("cupy", cupy)


def require_gpu(purpose: str) -> Backend:
    """The CuPy backend, or a UserError saying that `purpose` measures a GPU and none is here."""
    if not gpu_available():
        raise UserError(f"{purpose} measures a CUDA GPU through CuPy, and none was found here "
                        "(the NumPy backend has no kernels or copies to time)")
    return get_backend("cupy")


def array_module(*arrays: Any) -> ModuleType:
    """cupy if any argument is a CuPy array, else numpy (cupy is never imported for NumPy inputs)."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy

            return cupy
    return np


def is_device_array(a: Any) -> bool:
    return array_module(a) is not np


def to_numpy(a: Any) -> np.ndarray:
    """A host copy of a NumPy or CuPy array."""
    if is_device_array(a):
        return a.get()  # SYNC: the caller asked for host data (tests, results, reports), never in a step loop
    return np.asarray(a)
