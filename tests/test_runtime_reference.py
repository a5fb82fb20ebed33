"""The NumPy references of the MoE kernels, the op dispatch, the backend and the kernel shape limits."""

import json

import numpy as np
import pytest

from moespeq.errors import UserError
from moespeq.runtime import launch_config as lc
from moespeq.runtime.backend import array_module, get_backend, gpu_available, to_numpy
from moespeq.runtime.bf16 import from_bf16, round_bf16, to_bf16
from moespeq.runtime.expert_store import ExpertStore
from moespeq.runtime.int4_pack import Int4Experts, dequantize_packed
from moespeq.runtime.layout import ExpertGeometry
from moespeq.runtime.ops import moe_bf16, moe_int4
from moespeq.spec import PRESETS


def routing(rng, tokens, experts, top_k):
    """Distinct top-k ids per token and softmax-like weights."""
    ids = np.stack([rng.choice(experts, size=top_k, replace=False) for _ in range(tokens)]).astype(np.int32)
    w = rng.random((tokens, top_k)).astype(np.float32)
    return ids, w / w.sum(axis=1, keepdims=True)


def per_token_moe(x, ids, w, weights):
    """Token by token, k by k: an independent statement of the MoE layer (weights: e -> (gate, up, down))."""
    xf = from_bf16(x).astype(np.float64)
    y = np.zeros_like(xf)
    for t in range(x.shape[0]):
        for k in range(ids.shape[1]):
            gate, up, down = weights(int(ids[t, k]))
            g = gate @ xf[t]
            h = round_bf16((g / (1 + np.exp(-g)) * (up @ xf[t])).astype(np.float32)).astype(np.float64)
            y[t] += w[t, k] * (down @ h)
    return y


def rel_err(got_bits, ref):
    got = from_bf16(got_bits).astype(np.float64)
    return np.linalg.norm(got - ref) / np.linalg.norm(ref)


@pytest.mark.parametrize("tokens", [1, 3, 8, 9, 16])
def test_int4_reference_matches_per_token_statement(tokens):
    rng = np.random.default_rng(tokens)
    e, d, f, k = 6, 256, 384, 2
    gate, up = (rng.standard_normal((e, f, d)).astype(np.float32) * 0.05 for _ in range(2))
    down = rng.standard_normal((e, d, f)).astype(np.float32) * 0.05
    experts = Int4Experts.from_weights(gate, up, down)
    x = to_bf16(rng.standard_normal((tokens, d)).astype(np.float32))
    ids, w = routing(rng, tokens, e, k)
    y = moe_int4(x, ids, w, experts)
    assert y.shape == (tokens, d) and y.dtype == np.uint16

    def weights(i):
        return tuple(dequantize_packed(type(m)(m.codes[i], m.scales[i])).astype(np.float64)
                     for m in (experts.gate, experts.up, experts.down))
    assert rel_err(y, per_token_moe(x, ids, w, weights)) < 2e-3


@pytest.mark.parametrize("tokens", [1, 5, 16])
def test_bf16_reference_reads_experts_through_the_slot_table(tokens):
    rng = np.random.default_rng(10 + tokens)
    geo = ExpertGeometry(hidden=128, moe_ffn=256, experts=8, top_k=4)
    store = ExpertStore(geo, layers=2, slots=8, backend=get_backend("numpy"))
    store.host[:] = to_bf16(rng.standard_normal(store.host.shape).astype(np.float32) * 0.05)
    for slot, e in enumerate(rng.permutation(8)):  # a scrambled mapping: the table must be followed
        store.prefetch(1, int(e), slot)
    x = to_bf16(rng.standard_normal((tokens, 128)).astype(np.float32))
    ids, w = routing(rng, tokens, 8, 4)
    y = moe_bf16(x, ids, w, store.slot_arena(), layer=1)

    def weights(i):
        v = from_bf16(store.host[1, i]).astype(np.float64)
        return v[:256 * 128].reshape(256, 128), v[256 * 128: 2 * 256 * 128].reshape(256, 128), v[2 * 256 * 128:].reshape(128, 256)
    assert rel_err(y, per_token_moe(x, ids, w, weights)) < 2e-3


def test_bf16_reference_refuses_a_missing_expert():
    geo = ExpertGeometry(hidden=128, moe_ffn=128, experts=4, top_k=1)
    store = ExpertStore(geo, layers=1, slots=1, backend=get_backend("numpy"))
    store.prefetch(0, 2, 0)
    with pytest.raises(ValueError, match="expert 1 of layer 0"):
        moe_bf16(np.zeros((1, 128), np.uint16), np.array([[1]], np.int32), np.ones((1, 1), np.float32), store.slot_arena(), 0)


def test_backend_selection():
    assert get_backend("numpy").xp is np and not get_backend("numpy").is_gpu
    assert array_module(np.zeros(2)) is np
    assert to_numpy([1, 2]).tolist() == [1, 2]
    with pytest.raises(UserError, match="unknown backend 'tpu'"):
        get_backend("tpu")
    if not gpu_available():
        assert get_backend("auto").name == "numpy"
        with pytest.raises(UserError, match="use the NumPy backend"):
            get_backend("cupy")


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_fits_the_kernels(name):
    geo = ExpertGeometry.from_spec(PRESETS[name])
    geo.check_tokens(1)
    geo.check_tokens(geo.max_tokens)
    assert geo.max_tokens == 16  # top_k <= 8 for every preset
    assert geo.expert_bytes_int4 == PRESETS[name].expert_bytes_int4()


def test_unsupported_shapes_are_one_line_user_errors():
    with pytest.raises(UserError, match="moe_ffn=1000 .*multiple of 128"):
        ExpertGeometry(hidden=2048, moe_ffn=1000, experts=8, top_k=2)
    with pytest.raises(UserError, match="experts=600"):
        ExpertGeometry(hidden=2048, moe_ffn=1024, experts=600, top_k=2)
    geo = ExpertGeometry(hidden=2048, moe_ffn=1024, experts=64, top_k=8)
    with pytest.raises(UserError, match="17 tokens .* use 1..16"):
        geo.check_tokens(17)
    with pytest.raises(UserError, match="use 1..8"):
        ExpertGeometry(hidden=2048, moe_ffn=1024, experts=64, top_k=16).check_tokens(9)


def test_launch_config_nearest_tokens_and_fallback(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(lc, "CONFIG_DIR", tmp_path)
    geo = ExpertGeometry(hidden=256, moe_ffn=128, experts=8, top_k=2)
    best = {"moe_int4": {lc.shape_key(geo): {1: lc.LaunchConfig(4, 3, 1), 8: lc.LaunchConfig(8, 2, 2)}}}
    path = lc.write_configs("Test GPU X", "unit test", best)
    assert path == tmp_path / "Test_GPU_X.json"
    assert lc.launch_config("moe_int4", "Test GPU X", geo, tokens=3) == lc.LaunchConfig(4, 3, 1)
    assert lc.launch_config("moe_int4", "Test GPU X", geo, tokens=6) == lc.LaunchConfig(8, 2, 2)
    with caplog.at_level("WARNING"):
        assert lc.launch_config("moe_bf16", "Test GPU X", geo, tokens=1) == lc.DEFAULT_CONFIG
    assert "no tuned moe_bf16 launch parameters" in caplog.text
    with pytest.raises(ValueError, match="warps=9"):
        lc.LaunchConfig(warps=9)
    with pytest.raises(ValueError, match="k_splits=3: must divide warps=4"):
        lc.LaunchConfig(warps=4, k_splits=3)
    with pytest.raises(ValueError, match="ring_chunks=12"):
        lc.LaunchConfig(ring_chunks=12)
    with pytest.raises(ValueError, match="ring_chunks=16.*k_splits=1"):
        lc.LaunchConfig(warps=4, k_splits=2, ring_chunks=16)
    with pytest.raises(ValueError, match="ring_depth=3: use 0, or 2..16 with ring_chunks"):
        lc.LaunchConfig(ring_depth=3)
    with pytest.raises(ValueError, match="ring_depth=1"):
        lc.LaunchConfig(ring_chunks=16, ring_depth=1)
    assert lc.LaunchConfig(ring_chunks=16, ring_depth=3).to_dict()["ring_depth"] == 3


def test_launch_config_keeps_models_of_one_expert_shape_apart(tmp_path, monkeypatch):
    """qwen1.5-moe-a2.7b and deepseek-v2-lite share D and F; tuning the second must not replace the first's."""
    monkeypatch.setattr(lc, "CONFIG_DIR", tmp_path)
    qwen, deepseek = (ExpertGeometry.from_spec(PRESETS[name]) for name in ("qwen1.5-moe-a2.7b", "deepseek-v2-lite"))
    assert (qwen.hidden, qwen.moe_ffn) == (deepseek.hidden, deepseek.moe_ffn)
    lc.write_configs("Test GPU Y", "unit test", {"moe_int4": {lc.shape_key(qwen): {1: lc.LaunchConfig(8, 2, 1, 2)}}})
    lc.write_configs("Test GPU Y", "unit test", {"moe_int4": {lc.shape_key(deepseek): {1: lc.LaunchConfig(4, 3, 2, 4)}}})
    assert lc.launch_config("moe_int4", "Test GPU Y", qwen, tokens=1) == lc.LaunchConfig(8, 2, 1, 2)
    assert lc.launch_config("moe_int4", "Test GPU Y", deepseek, tokens=1) == lc.LaunchConfig(4, 3, 2, 4)
    same_shape_other_k = ExpertGeometry(qwen.hidden, qwen.moe_ffn, qwen.experts, qwen.top_k + 1)
    assert lc.shape_key(same_shape_other_k) != lc.shape_key(qwen)


def test_launch_config_ignores_old_shape_keys_with_a_warning(tmp_path, monkeypatch, caplog):
    """A file keyed D,F only (before E and K were in the key): its entries are ignored, then dropped on write."""
    monkeypatch.setattr(lc, "CONFIG_DIR", tmp_path)
    old = {"device": "Test GPU Z", "source": "old", "kernels": {"moe_int4": {"D=256,F=128": {"1": {"warps": 8}}}}}
    path = lc.config_path("Test GPU Z")
    path.write_text(json.dumps(old))
    geo = ExpertGeometry(hidden=256, moe_ffn=128, experts=8, top_k=2)
    with caplog.at_level("WARNING"):
        assert lc.launch_config("moe_int4", "Test GPU Z", geo, tokens=1) == lc.DEFAULT_CONFIG
    assert "ignoring moe_int4 launch parameters keyed D=256,F=128" in caplog.text
    lc.write_configs("Test GPU Z", "unit test", {"moe_int4": {lc.shape_key(geo): {1: lc.LaunchConfig(4, 3, 1)}}})
    assert json.loads(path.read_text())["kernels"]["moe_int4"] == {"D=256,F=128,E=8,K=2": {
        "1": {"warps": 4, "blocks_per_sm": 3, "down_splits": 1, "k_splits": 1, "ring_chunks": 0, "ring_depth": 0}}}
    assert lc.launch_config("moe_int4", "Test GPU Z", geo, tokens=1) == lc.LaunchConfig(4, 3, 1)
