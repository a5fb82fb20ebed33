"""`moespeq bench` and `moespeq calibrate` on a machine without a GPU, the committed tuned parameters, and the
kernel benchmark's goal report on saved results."""

import copy
import json
from pathlib import Path

import pytest

from moespeq.cli import main
from moespeq.runtime import launch_config as lc
from moespeq.runtime.backend import gpu_available
from moespeq.runtime.bench_kernels import (
    BANDWIDTH_GOAL,
    BENCH_MODELS,
    bandwidth_reach,
    goals_report,
    print_report,
)
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


# ---- the kernel benchmark's goal report ---------------------------------------------------------------------------

RUN21_BENCH = Path(__file__).parents[1] / "runtime/results/bench_kernels_run21_h200.json"  # without a plain read


@pytest.fixture
def run21():
    return json.loads(RUN21_BENCH.read_text())


def with_plain_read(result, fracs):
    """The result with a plain read in every row: stream_bw_frac from `fracs` in row order."""
    new = copy.deepcopy(result)
    for r, frac in zip(new["rows"], fracs, strict=True):
        r.update(stream_bw_frac=frac, stream_gbps=frac * new["hbm_copy_gbps"],
                 stream_us=r["int4_us"] * r["int4_bw_frac"] / frac)  # the same bytes as int4
    new["goal_checks"] = goals_report(new)
    return new


def test_goal_report_of_a_result_without_the_plain_read_keeps_its_verdicts(run21):
    checks = goals_report(run21)
    assert [{k: v for k, v in c.items() if k != "ceiling"} for c in checks] == run21["goal_checks"]
    assert [c["ceiling"] for c in checks if c["goal"] == BANDWIDTH_GOAL] == [None] * len(run21["rows"])
    n = sum(not c["met"] for c in checks if c["goal"] == BANDWIDTH_GOAL)
    assert bandwidth_reach(checks) == (
        f"{n} cells miss the bandwidth goal: in 0 a plain read of the same bytes stays under 75 % itself "
        f"(out of reach in one launch), in 0 it reaches it, {n} without a plain read")


def test_bandwidth_checks_carry_the_plain_read_as_ceiling_and_the_goal_is_unchanged(run21):
    fracs = [0.80] + [0.50] * (len(run21["rows"]) - 1)  # the plain read reaches 75 % in the first cell only
    result = with_plain_read(run21, fracs)
    bandwidth = [c for c in result["goal_checks"] if c["goal"] == BANDWIDTH_GOAL]
    assert [c["ceiling"] for c in bandwidth] == fracs and not bandwidth[0]["met"]
    assert [c["met"] for c in result["goal_checks"]] == [c["met"] for c in run21["goal_checks"]]
    missed = sum(not c["met"] for c in bandwidth)
    assert bandwidth_reach(result["goal_checks"]) == (
        f"{missed} cells miss the bandwidth goal: in {missed - 1} a plain read of the same bytes stays under 75 % itself "
        "(out of reach in one launch), in 1 it reaches it")


def test_no_bandwidth_summary_when_every_cell_meets_the_goal(run21):
    checks = [{**c, "met": True} if c["goal"] == BANDWIDTH_GOAL else c for c in goals_report(run21)]
    assert bandwidth_reach(checks) is None


@pytest.mark.parametrize("plain_read", [False, True], ids=["saved", "with_plain_read"])
def test_report_prints_old_and_new_results(run21, plain_read, capsys):
    result = with_plain_read(run21, [0.70] * len(run21["rows"])) if plain_read else run21
    print_report(result)
    out = capsys.readouterr().out
    assert "plain read %HBM" in out and "cells miss the bandwidth goal" in out
    assert ("(plain read 0.7)" in out) == plain_read and ("nan" in out) != plain_read
