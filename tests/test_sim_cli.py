"""The simulate / systems / roofline / search verbs through moespeq.cli.main: output shapes and one-line errors."""

import dataclasses
import json

import pandas as pd
import pytest

from moespeq.cli import main
from moespeq.policy.config import PolicyConfig, load_policy, save_policy
from moespeq.spec import get_model
from moespeq.trace import write_trace
from moespeq.traces.synth import SynthConfig, synthesize

METRICS = {"tpot_ms", "ttft_ms", "tokens_per_s", "accepted_per_cycle", "mean_k", "hit_rate", "prefetch_precision",
           "prefetch_recall", "prefetch_timely", "pcie_gb", "pcie_util", "stall_ms_per_token", "draft_ms_per_token",
           "verify_ms_per_token", "memory"}


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("sim") / "small.parquet"
    write_trace(synthesize(SynthConfig(model=get_model("phi-3.5-moe"), seqs=1, tokens=32, prompt_len=8, k_max=3,
                                       seed=2)), path)
    return str(path)


def _json(capsys, argv):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_simulate_json_shape(capsys, trace_file):
    out = _json(capsys, ["simulate", "--trace", trace_file, "--systems", "lru-sm,speq", "--json"])
    assert set(out) == {"trace", "hardware", "budget", "systems"}
    assert out["hardware"] == "a100-40g-pcie4" and out["budget"] == 36 * 2**30
    assert list(out["systems"]) == ["lru-sm", "speq"]
    for metrics in out["systems"].values():
        assert set(metrics) >= METRICS
        assert metrics["routing_source"].startswith("synthetic:")
        assert metrics["memory"]["budget_bytes"] == 36 * 2**30


def test_simulate_writes_a_perfetto_timeline_and_per_token_parquet(capsys, tmp_path, trace_file):
    timeline, per_token = tmp_path / "t.json", tmp_path / "t.parquet"
    assert main(["simulate", "--trace", trace_file, "--systems", "lru-sc,speq", "--timeline", str(timeline),
                 "--per-token", str(per_token)]) == 0
    assert "speq" in capsys.readouterr().out
    events = json.loads(timeline.read_text())["traceEvents"]
    names = {e["args"]["name"] for e in events if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {"GPU compute stream", "H2D copy engine", "D2H copy engine", "host decisions"}
    spans = [e for e in events if e["ph"] == "X"]
    assert spans and all(e["dur"] > 0 and {"pid", "tid", "ts", "name"} <= set(e) for e in spans)
    assert {"draft", "verify", "h2d_copy", "expert_compute", "d2h_copy"} <= {e["name"] for e in spans}
    rows = pd.read_parquet(per_token)
    assert set(rows["system"]) == {"lru-sc", "speq"}
    assert (rows.groupby("system").size() == 31).all()  # 32 tokens: the prefill makes the first
    assert {"token", "cycle", "k", "accepted", "t_emit_s", "latency_ms"} <= set(rows.columns)


def test_systems_lists_every_system_with_its_cache(capsys):
    out = _json(capsys, ["systems", "--json"])
    assert list(out["systems"]) == ["hf-offload", "ondemand", "lru-sc", "lru-sm", "gate-prefetch", "eam-prefetch",
                                    "speq", "speq-static", "oracle"]
    assert out["systems"]["lru-sc"]["memory"]["cache_slots_total"] == out["systems"]["speq"]["memory"]["cache_slots_total"]
    assert main(["systems"]) == 0 and "speq-static" in capsys.readouterr().out


def test_roofline_points(capsys, trace_file):
    out = _json(capsys, ["roofline", "--trace", trace_file, "--json"])
    assert [p["k"] for p in out["points"]] == [0, 1, 2, 3]
    for p in out["points"]:
        assert p["theta_tok_s"] <= min(p["compute_roof_tok_s"], p["io_roof_tok_s"]) + 1e-9


@pytest.mark.parametrize("jobs", [1, 2])
def test_search_policy_reproduces_its_tpot_in_simulate(capsys, tmp_path, trace_file, jobs):
    policy = tmp_path / "p.json"
    assert main(["search", "--trace", trace_file, "--evals", "16", "--jobs", str(jobs), "--out", str(policy)]) == 0
    capsys.readouterr()
    found = load_policy(policy, model="phi-3.5-moe")
    assert policy.with_suffix(".pareto.csv").exists()
    out = _json(capsys, ["simulate", "--trace", trace_file, "--systems", "speq", "--policy-file", str(policy), "--json"])
    assert out["systems"]["speq"]["tpot_ms"] == found.provenance["tpot_ms"]


def _error(capsys, argv):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    return err


def test_bad_input_is_one_line_and_exit_1(capsys, tmp_path, trace_file):
    assert "unknown system 'fast'" in _error(capsys, ["simulate", "--trace", trace_file, "--systems", "lru-sm,fast"])
    assert "unknown hardware 'h100'" in _error(capsys, ["simulate", "--trace", trace_file, "--hardware", "h100"])
    assert "unknown model 'phi-4'" in _error(capsys, ["systems", "--model", "phi-4"])
    assert "20.00 GiB is too small for lru-sc" in _error(capsys, ["simulate", "--trace", trace_file, "--budget", "20GiB"])
    assert "too small for speq" in _error(capsys, ["simulate", "--trace", trace_file, "--budget", "23GiB",
                                                   "--systems", "lru-sm,speq"])
    assert "no such trace file" in _error(capsys, ["simulate", "--trace", str(tmp_path / "missing.parquet")])
    other = tmp_path / "other.json"
    save_policy(PolicyConfig(model="mixtral-8x7b"), other)
    assert "made for model 'mixtral-8x7b'" in _error(capsys, ["simulate", "--trace", trace_file, "--policy-file", str(other)])
    lru = tmp_path / "lru.json"
    save_policy(PolicyConfig(model="phi-3.5-moe", system="lru-sm"), lru)
    assert "not among --systems" in _error(capsys, ["simulate", "--trace", trace_file, "--systems", "speq",
                                                    "--policy-file", str(lru)])


def test_a_trace_that_disagrees_with_its_model_is_rejected(capsys, tmp_path):
    from test_sim_golden import TINY, tiny_trace

    fake = tiny_trace(prompt=[[0, 1]], target=[[0, 2], [1, 2]])
    fake.meta = dataclasses.replace(fake.meta, model=dataclasses.replace(TINY, name="phi-3.5-moe"))
    path = tmp_path / "fake.parquet"
    write_trace(fake, path)
    err = _error(capsys, ["simulate", "--trace", str(path), "--systems", "lru-sm"])
    assert "geometry disagrees" in err and "layers=2 (preset 32)" in err


def test_the_cli_does_not_import_simpy_until_a_simulation_runs():
    import subprocess
    import sys

    code = "import sys; from moespeq.cli import build_parser; build_parser(); print('simpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
