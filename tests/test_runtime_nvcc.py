"""Every .cu file compiles for sm_90 with nvcc, as CuPy will see it; registers and spills are printed."""

import re
import shutil
import subprocess

import pytest

from moespeq.runtime.kernel_source import KERNEL_DIR, kernel_source

SOURCES = sorted(p.stem for p in KERNEL_DIR.glob("*.cu"))
ENTRIES = {"expert_bf16": {"moe_bf16_t8"}, "int4_moe": {"moe_int4_t8", "moe_int4_t16"}, "stream_read": {"stream_read"}}


def test_every_kernel_file_is_listed():
    assert sorted(ENTRIES) == SOURCES


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed: CUDA sources not compiled here")
@pytest.mark.parametrize("name", SOURCES)
def test_compiles_for_sm90_without_spills(name, tmp_path):
    src = tmp_path / f"{name}.cu"
    src.write_text(kernel_source(name))  # header inlined, exactly the text NVRTC compiles
    result = subprocess.run(["nvcc", "-arch=sm_90", "-std=c++17", "-Xptxas", "-v", "-c", str(src), "-o",  # default -D values
                             str(tmp_path / f"{name}.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = re.findall(r"Compiling entry function '(\w+)'.*?(\d+) bytes spill stores.*?Used (\d+) registers",
                        result.stderr, flags=re.S)
    for function, spills, registers in report:
        print(f"{name}.cu {function}: {registers} registers, {spills} bytes spilled")
    assert {f for f, _, _ in report} >= ENTRIES[name]
    assert all(int(spills) == 0 for _, spills, _ in report), report
