"""INT4 draft quantization: RTN is moespeq.int4, GPTQ uses the same format and beats RTN on its calibration data."""

import numpy as np
import pytest
import torch

from moespeq import int4
from moespeq.cli import main
from moespeq.spec import QuantSpec
from moespeq.trace import read_trace
from moespeq.traces import quantize
from moespeq.traces.draft import build_draft, draft_weights
from moespeq.traces.hf_model import load_checkpoint
from moespeq.traces.tiny import TinyConfig, save_tiny

QUANT = QuantSpec()


def _correlated_inputs(n_tokens, n_in, seed):
    """Activations with a strongly non-isotropic covariance (what makes GPTQ's error feedback pay)."""
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(n_in, n_in, generator=gen) / n_in**0.5
    scale = torch.logspace(-1, 1, n_in)
    return (torch.randn(n_tokens, n_in, generator=gen) * scale) @ mix


def test_rtn_is_the_int4_definition():
    w = torch.randn(48, 256) * 0.03
    codes, scales = quantize.rtn(w, QUANT)
    ref_codes, ref_scales = int4.quantize_rtn(w.numpy(), 128, "bf16")
    np.testing.assert_array_equal(codes, ref_codes)
    np.testing.assert_array_equal(scales, ref_scales)


def test_gptq_with_identity_hessian_is_rtn():
    w = torch.randn(3, 40, 256) * 0.05
    codes, scales = quantize.gptq(w, torch.eye(256).expand(3, 256, 256), QUANT)
    for b in range(3):
        ref_codes, ref_scales = int4.quantize_rtn(w[b].numpy(), 128)
        np.testing.assert_array_equal(codes[b], ref_codes)
        np.testing.assert_array_equal(scales[b], ref_scales)


@pytest.mark.parametrize(("n_out", "n_in", "n_tokens"), [(1, 128, 64), (33, 256, 300), (64, 384, 90)])
def test_gptq_format_and_error_below_rtn(n_out, n_in, n_tokens):
    w = torch.randn(2, n_out, n_in) * 0.05
    xs = [_correlated_inputs(n_tokens, n_in, seed) for seed in (1, 2)]
    codes, scales = quantize.gptq(w, torch.stack([quantize.hessian(x) for x in xs]), QUANT)
    assert codes.shape == (2, n_out, n_in) and codes.dtype == np.int8
    assert scales.shape == (2, n_out, n_in // 128) and scales.dtype == np.float32
    assert codes.min() >= int4.QMIN and codes.max() <= int4.QMAX
    np.testing.assert_array_equal(int4.round_to_bf16(scales), scales)  # scales are bf16 values
    for b, x in enumerate(xs):
        gptq_err = quantize.output_error(x, w[b], quantize.dequantize(codes[b], scales[b], QUANT, like=w))
        rtn_err = quantize.output_error(x, w[b], quantize.dequantize(*quantize.rtn(w[b], QUANT), QUANT, like=w))
        assert gptq_err < 0.8 * rtn_err


def test_gptq_rejects_a_partial_group():
    with pytest.raises(ValueError, match="multiple of the group size"):
        quantize.gptq(torch.zeros(1, 4, 100), torch.eye(100)[None], QUANT)


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    path = save_tiny(TinyConfig(arch="qwen2_moe", experts=4), tmp_path_factory.mktemp("q") / "ckpt")
    return load_checkpoint(path, "cpu", "fp32")


def test_gptq_draft_beats_rtn_on_calibration_activations(tiny_qwen):
    calib = [list(range(5, 60)), list(range(100, 180, 2)), [7, 9, 11] * 10]
    draft = build_draft(tiny_qwen, QuantSpec(method="gptq"), calib)
    stats = draft.stats
    assert stats["calib_prompts"] == 3 and stats["calib_tokens"] == 55 + 40 + 30
    assert 0 < stats["output_error_gptq"] < stats["output_error_rtn"]
    for layer, gu, down in zip(tiny_qwen.layers, draft.gate_up, draft.down, strict=True):
        assert gu.shape == layer.experts.gate_up_proj.shape and down.shape == layer.experts.down_proj.shape
        assert not torch.equal(gu, layer.experts.gate_up_proj)


def test_draft_shares_everything_but_routed_experts(tiny_qwen):
    model = tiny_qwen.model
    draft = build_draft(tiny_qwen, QUANT)
    before = {name: p.data_ptr() for name, p in model.named_parameters()}
    targets = [(layer.experts.gate_up_proj, layer.experts.down_proj) for layer in tiny_qwen.layers]
    with draft_weights(tiny_qwen, draft):
        during = {name: p.data_ptr() for name, p in model.named_parameters()}
        for layer, gu in zip(tiny_qwen.layers, draft.gate_up, strict=True):
            assert layer.experts.gate_up_proj.data_ptr() == gu.data_ptr()
    changed = {name for name in before if before[name] != during[name]}
    assert changed and all(name.endswith(("experts.gate_up_proj", "experts.down_proj")) for name in changed)
    assert {name for name in changed if "shared_expert" in name} == set()
    for layer, (gu, down) in zip(tiny_qwen.layers, targets, strict=True):  # the target's tensors are back
        assert layer.experts.gate_up_proj is gu and layer.experts.down_proj is down


def test_collect_with_gptq_draft(tmp_path, capsys):
    ckpt, out = tmp_path / "ckpt", tmp_path / "t.parquet"
    (tmp_path / "calib.jsonl").write_text('{"prompt": "The quick brown fox"}\n\n{"prompt": "jumps over the lazy dog"}\n')
    assert main(["tiny", "--arch", "olmoe", "--out", str(ckpt), "--experts", "4"]) == 0
    assert main(["collect", "--model", str(ckpt), "--draft", "int4-gptq", "--calib-prompts", str(tmp_path / "calib.jsonl"),
                 "--max-new-tokens", "3", "--k-max", "2", "--device", "cpu", "--dtype", "fp32", "--out", str(out)]) == 0
    assert "GPTQ on 2 calibration prompts" in capsys.readouterr().out
    meta = read_trace(out).meta
    assert meta.draft_quant == QuantSpec(method="gptq")
    q = meta.extra["draft_quantization"]
    assert q["calib_prompts"] == 2 and q["output_error_gptq"] < q["output_error_rtn"]
