import dataclasses
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from moespeq.cli import main
from moespeq.errors import UserError
from moespeq.trace import META_KEY, expected_shapes, read_trace, write_trace
from moespeq.traces.synth import SynthConfig, synthesize


@pytest.fixture
def trace(tiny_spec):
    return synthesize(SynthConfig(model=tiny_spec, seqs=2, tokens=12, prompt_len=4, k_max=3, seed=1))


def assert_same(a, b):
    assert a.meta == b.meta
    for sa, sb in zip(a.sequences, b.sequences, strict=True):
        for f in dataclasses.fields(sa):
            x, y = getattr(sa, f.name), getattr(sb, f.name)
            assert x.dtype == y.dtype and x.shape == y.shape and np.array_equal(x, y), f.name


def test_write_read_round_trip(tmp_path, trace):
    write_trace(trace, tmp_path / "t.parquet")
    assert_same(read_trace(tmp_path / "t.parquet"), trace)


def test_shapes_follow_the_contract(trace, tiny_spec):
    seq = trace.sequences[0]
    assert seq.draft_ids.shape == (12, 3, tiny_spec.moe_layers, tiny_spec.top_k)
    assert seq.verify_ids.shape == (12, 4, tiny_spec.moe_layers, tiny_spec.top_k)
    assert np.array_equal(seq.verify_ids[:, 0], seq.target_ids)
    assert expected_shapes(trace.meta, 4, 12)["verify_ids"] == (12, 4, 2, 2)


def test_accepted_matches_tokens_by_hand(trace):
    seq = trace.sequences[0]
    acc = seq.accepted()
    for n in range(seq.n_tokens):
        run = True
        for j in range(3):
            run = run and n + 1 + j < seq.n_tokens and seq.draft_tokens[n, j] == seq.tokens[n + 1 + j]
            assert acc[n, j] == run


def rewrite_meta(src, dst, change):
    table = pq.read_table(src)
    meta = json.loads(table.schema.metadata[META_KEY])
    change(meta)
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), dst)


def test_unknown_version_is_named(tmp_path, trace):
    write_trace(trace, tmp_path / "t.parquet")
    rewrite_meta(tmp_path / "t.parquet", tmp_path / "v9.parquet", lambda m: m.update(version=9))
    with pytest.raises(UserError, match="version 9 is not supported"):
        read_trace(tmp_path / "v9.parquet")


def test_arrays_that_disagree_with_the_model(tmp_path, trace):
    write_trace(trace, tmp_path / "t.parquet")
    rewrite_meta(tmp_path / "t.parquet", tmp_path / "e.parquet", lambda m: m["model"].update(experts=2, top_k=1))
    with pytest.raises(UserError, match="expected"):
        read_trace(tmp_path / "e.parquet")
    rewrite_meta(tmp_path / "t.parquet", tmp_path / "k.parquet", lambda m: m.update(k_max=5))
    with pytest.raises(UserError, match="k_max=5"):
        read_trace(tmp_path / "k.parquet")


def test_invalid_expert_ids_are_rejected(tmp_path, trace):
    trace.sequences[0].target_ids[3, 1, 0] = 7
    with pytest.raises(UserError, match="expert 7"):
        write_trace(trace, tmp_path / "t.parquet")
    trace.sequences[0].target_ids[3, 1] = [1, 1]
    with pytest.raises(UserError, match="repeats an expert"):
        write_trace(trace, tmp_path / "t.parquet")
    assert not (tmp_path / "t.parquet").exists()


def test_not_a_trace(tmp_path):
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(UserError, match="not a moespeq trace"):
        read_trace(tmp_path / "junk.parquet")
    pq.write_table(pa.table({"a": [1]}), tmp_path / "plain.parquet")
    with pytest.raises(UserError, match="no 'moespeq' metadata"):
        read_trace(tmp_path / "plain.parquet")
    with pytest.raises(UserError, match="no such trace"):
        read_trace(tmp_path / "missing.parquet")


def test_cli_reports_bad_traces_in_one_line(tmp_path, capsys):
    (tmp_path / "junk.parquet").write_bytes(b"\x00" * 64)
    assert main(["inspect", str(tmp_path / "junk.parquet")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.parquet" in err and "Traceback" not in err


def test_inspect_and_export(tmp_path, trace, capsys):
    write_trace(trace, tmp_path / "t.parquet")
    assert main(["inspect", str(tmp_path / "t.parquet"), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["tokens"] == 24 and summary["k_max"] == 3 and len(summary["layers"]) == 2
    assert abs(sum(summary["agreement"].values()) - 1) < 1e-9
    assert main(["export", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "t.jsonl")]) == 0
    records = [json.loads(line) for line in (tmp_path / "t.jsonl").read_text().splitlines()]
    kinds = {}
    for r in records:
        kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
    L, P, N, J = 2, 4, 12, 3  # noqa: N806
    assert kinds == {"prompt": 2 * P * L, "target": 2 * N * L, "draft": 2 * N * J * L, "verify": 2 * N * (J + 1) * L,
                     "token": 2 * N}
    first_draft = next(r for r in records if r["kind"] == "draft")
    assert first_draft["j"] == 1 and set(first_draft) == {"seq", "kind", "pos", "j", "layer", "experts", "weights"}
    assert first_draft["experts"] == trace.sequences[0].draft_ids[0, 0, 0].tolist()
    token = next(r for r in records if r["kind"] == "token")
    assert token["draft_tokens"] == trace.sequences[0].draft_tokens[0].tolist()
