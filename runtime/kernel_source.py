"""The CUDA sources of runtime/kernels/ as the compilers see them (no CuPy needed, so CI can build them).

Usage:
    text = kernel_source("int4_moe")   # its headers (moe_common.cuh, int4_decode.cuh) inlined
"""

from __future__ import annotations

import re
from pathlib import Path

KERNEL_DIR = Path(__file__).parent / "kernels"
_INCLUDE = re.compile(r'^#include "([\w.]+)"$', flags=re.M)


def kernel_source(name: str) -> str:
    """The .cu text with the headers of runtime/kernels/ it includes inlined (one level), so that CuPy's
    compile cache (keyed on the text) sees every change."""
    text = (KERNEL_DIR / f"{name}.cu").read_text()
    return _INCLUDE.sub(lambda m: (KERNEL_DIR / m.group(1)).read_text(), text)
