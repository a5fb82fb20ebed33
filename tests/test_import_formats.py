"""Importers on small hand-made files (tests/data), well-formed and malformed, through `moespeq import`."""

import json
from pathlib import Path

import numpy as np
import pytest

from moespeq.cli import main
from moespeq.trace import expected_shapes, read_trace

DATA = Path(__file__).parent / "data"
MIXTRAL = str(DATA / "import_mixtral")  # 2 MoE layers, 4 experts, top-2
DEEPSEEK = str(DATA / "import_deepseek")  # 3 layers, the first dense: MoE layers are decoder layers 1 and 2


def _import(fmt, path, model, out, capsys):
    assert main(["import", "--format", fmt, str(path), "--model", model, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"import:{fmt}" in printed
    return read_trace(out) if fmt != "eam-npy" else json.loads(Path(out).read_text()), printed


def _check_target_only(trace):
    meta = trace.meta
    assert meta.lookahead is False and meta.k_max == 0 and meta.draft_quant is None
    assert meta.routing_source == f"import:{meta.extra['import']['format']}"
    for seq in trace.sequences:
        shapes = expected_shapes(meta, seq.n_prompt, seq.n_tokens)
        for name, shape in shapes.items():
            assert getattr(seq, name).shape == shape, name
        assert seq.draft_ids.size == seq.verify_ids.size == seq.draft_tokens.size == 0


def test_vllm_logger_with_meta_header_phases_and_duplicated_prefill(tmp_path, capsys):
    trace, printed = _import("vllm-jsonl", DATA / "vllm_logger.jsonl", MIXTRAL, tmp_path / "t.parquet", capsys)
    _check_target_only(trace)
    assert "1 duplicated records dropped" in printed and "target routing only" in printed
    (seq,) = trace.sequences
    assert seq.prompt_tokens.tolist() == [5, 6] and seq.tokens.tolist() == [7, 8]
    assert seq.prompt_ids.tolist() == [[[1, 3], [0, 2]], [[2, 3], [3, 1]]]
    assert seq.target_ids.tolist() == [[[0, 1], [2, 0]], [[3, 0], [1, 2]]]
    np.testing.assert_allclose(seq.prompt_weights[0, 0], [0.7, 0.3])  # the first record kept, not the duplicate
    info = trace.meta.extra["import"]
    assert info["duplicates_dropped"] == 1 and info["token_ids"] == "from the file"


def test_vllm_profiler_variant_names_and_missing_token_ids(tmp_path, capsys):
    trace, printed = _import("vllm-jsonl", DATA / "vllm_profiler.jsonl", MIXTRAL, tmp_path / "t.parquet", capsys)
    _check_target_only(trace)
    assert "stored as 0" in printed
    assert trace.meta.extra["import"]["sequences"] == ["gsm8k/0", "gsm8k/1"]
    first, second = trace.sequences
    assert first.n_prompt == 0 and first.tokens.tolist() == [0, 0, 0]
    assert first.target_ids[:, 0].tolist() == [[2, 0], [0, 3], [1, 2]]
    assert second.target_ids.tolist() == [[[3, 2], [0, 1]], [[1, 0], [2, 3]]]  # records out of order in the file
    np.testing.assert_allclose(second.target_weights[1, 1], [0.65, 0.35])


def test_megatron_one_based_layers_and_forward_chunks(tmp_path, capsys):
    trace, _ = _import("megatron-jsonl", DATA / "megatron_routing.jsonl", MIXTRAL, tmp_path / "t.parquet", capsys)
    _check_target_only(trace)
    (seq,) = trace.sequences
    assert seq.prompt_tokens.tolist() == [11, 12, 13] and seq.tokens.tolist() == [14, 15]
    assert seq.prompt_ids[:, 1].tolist() == [[3, 0], [1, 0], [2, 1]]  # layer_number 2 -> MoE layer 1
    assert seq.target_ids.tolist() == [[[1, 3], [2, 0]], [[0, 2], [3, 1]]]
    assert trace.meta.extra["import"]["layer_numbers_in_file"] == [1, 2]


def test_llamacpp_forwards_split_prompts_and_sequences(tmp_path, capsys):
    trace, printed = _import("llamacpp-csv", DATA / "llamacpp_trace.csv", DEEPSEEK, tmp_path / "t.parquet", capsys)
    _check_target_only(trace)
    assert "1/K" in printed
    first, second = trace.sequences
    assert (first.n_prompt, first.n_tokens, second.n_prompt, second.n_tokens) == (2, 2, 2, 1)
    assert first.prompt_ids.tolist() == [[[0, 2], [3, 0]], [[1, 3], [2, 1]]]
    assert first.target_ids.tolist() == [[[2, 1], [0, 3]], [[3, 0], [1, 2]]]
    assert second.target_ids.tolist() == [[[1, 2], [3, 1]]]
    assert np.all(first.target_weights == 0.5)


def test_llamacpp_one_row_per_token_variant(tmp_path, capsys):
    trace, _ = _import("llamacpp-csv", DATA / "llamacpp_ids.csv", MIXTRAL, tmp_path / "t.parquet", capsys)
    (seq,) = trace.sequences
    assert seq.n_prompt == 0 and seq.target_ids.tolist() == [[[1, 2], [0, 3]], [[3, 2], [1, 2]]]


def test_eam_npy_becomes_popularity_that_synth_follows(tmp_path, capsys):
    counts = np.array([[[5, 0, 3, 2], [1, 1, 1, 7]], [[0, 5, 0, 0], [2, 0, 0, 0]]])  # [S=2, L=2, E=4]
    np.save(tmp_path / "eam.npy", counts)
    data, printed = _import("eam-npy", tmp_path / "eam.npy", MIXTRAL, tmp_path / "pop.json", capsys)
    assert "aggregate only" in printed
    assert data["counts"] == [[5.0, 5.0, 3.0, 2.0], [3.0, 1.0, 1.0, 7.0]] and data["matrices"] == 2
    assert data["source"] == "import:eam-npy" and data["layers"] == 2 and data["experts"] == 4
    np.testing.assert_allclose(np.sum(data["popularity"], axis=1), 1.0)
    assert main(["synth", "--model", MIXTRAL, "--popularity", str(tmp_path / "pop.json"), "--seqs", "1",
                 "--tokens", "8", "--prompt-len", "2", "--k-max", "2", "--out", str(tmp_path / "s.parquet")]) == 0
    assert read_trace(tmp_path / "s.parquet").meta.model.experts == 4


def _fails(argv, capsys, *fragments):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("moespeq import: error:"), err
    for fragment in fragments:
        assert fragment in err[0], err[0]


def _bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD_VLLM = '{"req_id": "a", "token_idx": 0, "layer": 0, "topk_ids": [0, 1]}\n'


@pytest.mark.parametrize(("line", "fragment"), [
    ("not json", "not JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"req_id": "a", "token_idx": 0, "layer": 1}', "'experts' / 'topk_ids'"),
    ('{"req_id": "a", "token_idx": 0, "layer": 1, "experts": [0, 9]}', "expert 9 does not exist"),
    ('{"req_id": "a", "token_idx": 0, "layer": 1, "experts": [2, 2]}', "repeat"),
    ('{"req_id": "a", "token_idx": 0, "layer": 1, "experts": [0, 1, 2]}', "expected 2 expert ids"),
    ('{"req_id": "a", "token_idx": -1, "layer": 1, "experts": [0, 1]}', "non-negative integer"),
    ('{"req_id": "a", "token_idx": 0, "layer": 1, "experts": [0, 1], "gating_probs": [0.5]}', "gate weights"),
    ('{"token_idx": 0, "layer": 1, "experts": [0, 1]}', "'request_id' / 'req_id' / 'problem_id'"),
])
def test_vllm_malformed_line_names_file_and_line(tmp_path, capsys, line, fragment):
    path = _bad(tmp_path, "bad.jsonl", GOOD_VLLM + "\n" + line + "\n")
    _fails(["import", "--format", "vllm-jsonl", str(path), "--model", MIXTRAL, "--out", str(tmp_path / "t.parquet")],
           capsys, f"{path}:3", fragment)
    assert not (tmp_path / "t.parquet").exists()


def test_vllm_structural_errors(tmp_path, capsys):
    out = str(tmp_path / "t.parquet")
    batch_rows = GOOD_VLLM + '{"req_id": "a", "token_idx": 0, "layer": 0, "topk_ids": [2, 3]}\n'
    _fails(["import", "--format", "vllm-jsonl", str(_bad(tmp_path, "b1.jsonl", batch_rows)), "--model", MIXTRAL,
            "--out", out], capsys, ":2:", "other experts", "position in its request")
    one_layer = GOOD_VLLM
    _fails(["import", "--format", "vllm-jsonl", str(_bad(tmp_path, "b2.jsonl", one_layer)), "--model", MIXTRAL,
            "--out", out], capsys, "logs layers [0]", "2 MoE layers")
    gap = GOOD_VLLM + '{"req_id": "a", "token_idx": 0, "layer": 1, "topk_ids": [0, 1]}\n' + \
        '{"req_id": "a", "token_idx": 2, "layer": 0, "topk_ids": [0, 1]}\n'
    _fails(["import", "--format", "vllm-jsonl", str(_bad(tmp_path, "b3.jsonl", gap)), "--model", MIXTRAL,
            "--out", out], capsys, "no record for token 1")
    _fails(["import", "--format", "vllm-jsonl", str(_bad(tmp_path, "b4.jsonl", "\n\n")), "--model", MIXTRAL,
            "--out", out], capsys, "no routing records")
    _fails(["import", "--format", "vllm-jsonl", str(tmp_path / "missing.jsonl"), "--model", MIXTRAL,
            "--out", out], capsys, "no such file")


def test_megatron_and_llamacpp_malformed(tmp_path, capsys):
    out = str(tmp_path / "t.parquet")
    meg = '{"layer": 0, "top_indices": [[0, 1]]}\n{"layer": 1, "top_indices": [[0, 1], [1, 2]], "probs": [[1.0, 0.0]]}\n'
    _fails(["import", "--format", "megatron-jsonl", str(_bad(tmp_path, "m.jsonl", meg)), "--model", MIXTRAL,
            "--out", out], capsys, "m.jsonl:2", "one entry per token")
    uneven = '{"layer": 0, "top_indices": [[0, 1]]}\n{"layer": 1, "top_indices": [[0, 1], [1, 2]]}\n'
    _fails(["import", "--format", "megatron-jsonl", str(_bad(tmp_path, "m2.jsonl", uneven)), "--model", MIXTRAL,
            "--out", out], capsys, "token counts per layer")
    _fails(["import", "--format", "llamacpp-csv", str(_bad(tmp_path, "h.csv", "lay,exp\n0,1\n")), "--model",
            MIXTRAL, "--out", out], capsys, "h.csv:1", "header")
    _fails(["import", "--format", "llamacpp-csv", str(_bad(tmp_path, "c.csv", "layer,expert\n0,1\n0,x\n")),
            "--model", MIXTRAL, "--out", out], capsys, "c.csv:3", "not integers")
    _fails(["import", "--format", "llamacpp-csv", str(_bad(tmp_path, "s.csv", "layer,expert\n0,1\n1,2\n")),
            "--model", MIXTRAL, "--out", out], capsys, "s.csv:3", "before layer 0's top-2 set")
    _fails(["import", "--format", "llamacpp-csv", str(_bad(tmp_path, "e.csv", "layer,expert\n0,1\n0,2\n1,0\n")),
            "--model", MIXTRAL, "--out", out], capsys, "e.csv:4", "ends inside")
    order = "layer,expert\n1,0\n1,1\n0,0\n0,1\n"
    _fails(["import", "--format", "llamacpp-csv", str(_bad(tmp_path, "o.csv", order)), "--model", MIXTRAL,
            "--out", out], capsys, "o.csv:2", "layers [0, 1] in order")


def test_eam_npy_malformed(tmp_path, capsys):
    out = str(tmp_path / "pop.json")
    np.save(tmp_path / "shape.npy", np.ones((3, 4)))
    _fails(["import", "--format", "eam-npy", str(tmp_path / "shape.npy"), "--model", MIXTRAL, "--out", out],
           capsys, "shape (3, 4)", "[2, 4]")
    np.save(tmp_path / "neg.npy", -np.ones((2, 4)))
    _fails(["import", "--format", "eam-npy", str(tmp_path / "neg.npy"), "--model", MIXTRAL, "--out", out],
           capsys, "non-negative")
    np.save(tmp_path / "empty.npy", np.array([[1, 0, 0, 0], [0, 0, 0, 0]]))
    _fails(["import", "--format", "eam-npy", str(tmp_path / "empty.npy"), "--model", MIXTRAL, "--out", out],
           capsys, "MoE layer 1 has no activations")
    _fails(["import", "--format", "eam-npy", str(_bad(tmp_path, "text.npy", "hello")), "--model", MIXTRAL,
            "--out", out], capsys, "not a NumPy .npy")
    assert not Path(out).exists()
