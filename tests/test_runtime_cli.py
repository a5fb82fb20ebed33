"""`moespeq bench` and `moespeq calibrate` on a machine without a GPU, and the committed tuned parameters."""

import json

import pytest

from moespeq.cli import main
from moespeq.runtime import launch_config as lc
from moespeq.runtime.backend import gpu_available
from moespeq.runtime.bench_kernels import BENCH_MODELS
from moespeq.runtime.gpu_check import TUNE_TOKENS
from moespeq.runtime.layout import ExpertGeometry
from moespeq.spec import get_model


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.skipif(gpu_available(), reason="this machine has a GPU: the commands would run")
@pytest.mark.parametrize("argv", [("bench", "--kernels"), ("calibrate", "--model", "mixtral-8x7b")])
def test_gpu_commands_fail_in_one_line_without_a_gpu(capsys, argv):
    code, err = run_cli(capsys, *argv)
    assert code == 1 and err.count("\n") == 0 and "CUDA GPU" in err and "NumPy backend" in err


@pytest.mark.parametrize("argv, message", [
    (("bench",), "say what to benchmark: --kernels"),
    (("calibrate", "--model", "gpt-2"), "unknown model 'gpt-2'"),
    (("calibrate", "--tokens", "1,x"), "--tokens '1,x'"),
])
def test_bad_arguments_are_one_line_errors(capsys, argv, message):
    code, err = run_cli(capsys, *argv)
    assert code == 1 and message in err and err.count("\n") == 0


def test_committed_h200_parameters_cover_the_benchmark_shapes():
    path = lc.config_path("NVIDIA H200")
    data = json.loads(path.read_text())
    for name in BENCH_MODELS:
        geo = ExpertGeometry.from_spec(get_model(name))
        for kernel in lc.KERNELS:
            assert sorted(map(int, data["kernels"][kernel][lc.shape_key(geo)])) == list(TUNE_TOKENS)
            for tokens in TUNE_TOKENS:
                cfg = lc.launch_config(kernel, "NVIDIA H200", geo, tokens)
                assert cfg.warps % cfg.k_splits == 0 and cfg.warps * 32 <= 256
