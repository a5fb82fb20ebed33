import dataclasses

import numpy as np
import pytest

from moespeq.cli import main
from moespeq.spec import get_model
from moespeq.trace import demo_trace_path, read_trace
from moespeq.trace_stats import acceptance_by_position, agreement, entropy_bits, expert_counts, reuse_rate
from moespeq.traces.synth import SynthConfig, add_lookahead, demo_config, synthesize

SPEC = get_model("qwen1.5-moe-a2.7b")  # 60 experts, top-4: many sets, so agreement statistics are tight


def make(**knobs):
    return synthesize(SynthConfig(model=SPEC, seqs=2, tokens=150, prompt_len=8, k_max=6, **knobs))


def test_draft_agreement_and_acceptance_follow_the_knobs():
    trace = make(draft_fidelity=0.8, order_fidelity=0.5, acceptance=0.7, seed=3)
    agree = {k: v.mean() for k, v in agreement(trace).items()}
    assert agree["miss"] == pytest.approx(0.2, abs=0.03)
    assert agree["hard"] == pytest.approx(0.4, abs=0.04)
    assert agree["soft"] == pytest.approx(0.4, abs=0.04)
    assert acceptance_by_position(trace)[:3] == pytest.approx([0.7] * 3, abs=0.07)


def test_locality_sets_reuse_between_consecutive_tokens():
    low, high = make(locality=0.0, cross_layer=0.0, skew=0.0), make(locality=0.6, cross_layer=0.0, skew=0.0)
    chance = SPEC.top_k / SPEC.experts
    assert reuse_rate(low).mean() == pytest.approx(chance, abs=0.02)
    assert reuse_rate(high).mean() == pytest.approx(0.6 + 0.4 * chance, abs=0.04)


def test_skew_lowers_entropy():
    flat, skewed = make(skew=0.0, locality=0.0), make(skew=1.2, locality=0.0)
    max_bits = np.log2(SPEC.experts)
    assert entropy_bits(expert_counts(flat)).mean() > 0.97 * max_bits
    assert entropy_bits(expert_counts(skewed)).mean() < 0.9 * max_bits


def test_cross_layer_correlation_follows_a_fixed_mapping():
    trace = make(cross_layer=0.8, locality=0.0, skew=0.0)
    ids = trace.sequences[0].target_ids.astype(int)  # [N, L, K]
    # With a fixed permutation per layer, each expert of layer 1 mostly implies one expert of layer 2.
    pairs = np.zeros((SPEC.experts, SPEC.experts))
    np.add.at(pairs, (ids[:, 1, 0], ids[:, 2, 0]), 1)
    predictability = pairs.max(axis=1).sum() / pairs.sum()
    assert predictability > 0.6


def test_verify_routing_is_the_target_routing_on_the_greedy_path():
    seq = make(seed=5).sequences[0]
    acc = seq.accepted()
    assert np.array_equal(seq.verify_ids[:, 0], seq.target_ids)
    for n in range(seq.n_tokens - 3):
        if acc[n, 0] and acc[n, 1]:
            assert np.array_equal(seq.verify_ids[n, 2], seq.target_ids[n + 2])


def test_same_seed_same_trace_other_seed_other_trace():
    a, b, c = make(seed=1), make(seed=1), make(seed=2)
    assert all(np.array_equal(x.target_ids, y.target_ids) for x, y in zip(a.sequences, b.sequences, strict=True))
    assert not np.array_equal(a.sequences[0].target_ids, c.sequences[0].target_ids)


def test_bundled_demo_is_the_demo_config_output():
    shipped, regenerated = read_trace(demo_trace_path()), synthesize(demo_config())
    assert shipped.meta.routing_source == regenerated.meta.routing_source
    for s, r in zip(shipped.sequences, regenerated.sequences, strict=True):
        for f in dataclasses.fields(s):
            assert np.array_equal(getattr(s, f.name), getattr(r, f.name)), f.name


def test_add_lookahead_to_a_target_only_trace():
    full = make(seed=4)
    target_only = dataclasses.replace(full, meta=dataclasses.replace(
        full.meta, lookahead=False, k_max=0, routing_source="import:vllm-jsonl"))
    trace = add_lookahead(target_only, k_max=4, draft_fidelity=0.9, acceptance=0.8, seed=0)
    assert trace.meta.lookahead and trace.meta.routing_source.startswith("import:vllm-jsonl+synthetic-lookahead")
    seq = trace.sequences[0]
    assert seq.draft_ids.shape[1] == 4 and np.array_equal(seq.verify_ids[:, 0], seq.target_ids)
    assert acceptance_by_position(trace)[0] == pytest.approx(0.8, abs=0.08)


def test_synth_cli_writes_a_readable_trace(tmp_path, capsys):
    out = tmp_path / "s.parquet"
    assert main(["synth", "--model", "olmoe-1b-7b", "--seqs", "1", "--tokens", "20", "--k-max", "3", "--out", str(out)]) == 0
    trace = read_trace(out)
    assert trace.meta.routing_source.startswith("synthetic:") and trace.n_tokens == 20


def test_synth_cli_rejects_bad_knobs(tmp_path, capsys):
    assert main(["synth", "--model", "olmoe-1b-7b", "--acceptance", "1.5", "--out", str(tmp_path / "x.parquet")]) == 1
    assert "acceptance=1.5" in capsys.readouterr().err
