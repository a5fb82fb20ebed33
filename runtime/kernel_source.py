"""The CUDA sources of runtime/kernels/ as the compilers see them (no CuPy needed, so CI can build them).

Usage:
    text = kernel_source("int4_moe")   # moe_common.cuh inlined
"""

from __future__ import annotations

from pathlib import Path

KERNEL_DIR = Path(__file__).parent / "kernels"
COMMON_HEADER = "moe_common.cuh"


def kernel_source(name: str) -> str:
    """The .cu text with moe_common.cuh inlined, so CuPy's compile cache (keyed on the text) sees every change."""
    text = (KERNEL_DIR / f"{name}.cu").read_text()
    return text.replace(f'#include "{COMMON_HEADER}"', (KERNEL_DIR / COMMON_HEADER).read_text())
