"""`moespeq tiny` and `moespeq collect` on bad input: one line on stderr, exit 1; and the stop rule."""

import json

import pytest

from moespeq.cli import main
from moespeq.spec import SUPPORTED_ARCHS
from moespeq.trace import read_trace


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "mixtral"
    assert main(["tiny", "--arch", "mixtral", "--out", str(path), "--experts", "4"]) == 0
    return path


def _fails(argv, capsys, *fragments):
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"moespeq {argv[0]}: error:"), err
    for fragment in fragments:
        assert fragment in err[0]
    return err[0]


def _collect(model, out, *extra, new_tokens=2):
    return ["collect", "--model", str(model), "--device", "cpu", "--dtype", "fp32", "--max-new-tokens", str(new_tokens),
            "--out", str(out), *extra]


def test_tiny_rejects_unsupported_arch_and_bad_geometry(tmp_path, capsys):
    _fails(["tiny", "--arch", "llama", "--out", str(tmp_path / "x")], capsys, "'llama'", *SUPPORTED_ARCHS)
    _fails(["tiny", "--arch", "mixtral", "--top-k", "9", "--out", str(tmp_path / "x")], capsys, "--top-k=9")
    _fails(["tiny", "--arch", "phimoe", "--top-k", "1", "--out", str(tmp_path / "x")], capsys, "phimoe")


def test_collect_rejects_unsupported_architecture(tmp_path, capsys):
    folder = tmp_path / "gpt2"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 2}))
    _fails(_collect(folder, tmp_path / "t.parquet"), capsys, "'gpt2'", "supported", *SUPPORTED_ARCHS)


def test_collect_rejects_folders_without_config_or_weights(ckpt, tmp_path, capsys):
    _fails(_collect(tmp_path / "missing", tmp_path / "t.parquet"), capsys, "no such checkpoint folder")
    empty = tmp_path / "empty"
    empty.mkdir()
    _fails(_collect(empty, tmp_path / "t.parquet"), capsys, "no config.json")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((ckpt / "config.json").read_text())
    _fails(_collect(no_weights, tmp_path / "t.parquet"), capsys, "no weights")


def test_collect_rejects_bad_prompts_and_k_max(ckpt, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    _fails(_collect(ckpt, tmp_path / "t.parquet", "--prompts", str(empty)), capsys, str(empty), "no prompts")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n{"text": "no prompt field"}\n')
    _fails(_collect(ckpt, tmp_path / "t.parquet", "--prompts", str(bad)), capsys, f"{bad}:2", "prompt")
    _fails(_collect(ckpt, tmp_path / "t.parquet", "--k-max", "0"), capsys, "--k-max=0")
    assert not (tmp_path / "t.parquet").exists()


def test_collect_rejects_sizes_off_the_int4_group(tmp_path, capsys):
    model = tmp_path / "odd"
    assert main(["tiny", "--arch", "olmoe", "--out", str(model), "--hidden", "96", "--moe-ffn", "128"]) == 0
    capsys.readouterr()
    _fails(_collect(model, tmp_path / "t.parquet"), capsys, "hidden size 96", "group 128")


def test_collection_stops_after_end_of_sequence(ckpt, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("abc\n")
    assert main(_collect(ckpt, tmp_path / "full.parquet", "--prompts", str(prompts), "--k-max", "2", new_tokens=8)) == 0
    tokens = read_trace(tmp_path / "full.parquet").sequences[0].tokens.tolist()
    stop = tokens[3]
    config = json.loads((ckpt / "generation_config.json").read_text())
    stopped = tmp_path / "stopped"
    stopped.mkdir()
    for f in ckpt.iterdir():
        (stopped / f.name).write_bytes(f.read_bytes())
    (stopped / "generation_config.json").write_text(json.dumps({**config, "eos_token_id": stop}))
    assert main(_collect(stopped, tmp_path / "s.parquet", "--prompts", str(prompts), "--k-max", "2", new_tokens=8)) == 0
    seq = read_trace(tmp_path / "s.parquet").sequences[0]
    assert seq.tokens.tolist() == tokens[: tokens.index(stop) + 1]
    assert seq.draft_tokens.shape == (len(seq.tokens), 2)
    capsys.readouterr()
