import json

import pytest

from moespeq.cli import main
from moespeq.errors import UserError
from moespeq.spec import PRESETS, SUPPORTED_ARCHS, ModelSpec, QuantSpec, get_model

# (layers, moe layers, experts, top-k, hidden, expert FFN, shared experts, shared FFN, published total params in B)
PUBLISHED = {
    "mixtral-8x7b": (32, 32, 8, 2, 4096, 14336, 0, 0, 46.7),
    "phi-3.5-moe": (32, 32, 16, 2, 4096, 6400, 0, 0, 41.9),
    "qwen1.5-moe-a2.7b": (24, 24, 60, 4, 2048, 1408, 1, 5632, 14.3),
    "qwen3-30b-a3b": (48, 48, 128, 8, 2048, 768, 0, 0, 30.5),
    "deepseek-v2-lite": (27, 26, 64, 6, 2048, 1408, 2, 2816, 15.7),
    "olmoe-1b-7b": (16, 16, 64, 8, 2048, 1024, 0, 0, 6.9),
}


def test_presets_are_exactly_the_six_named_models():
    assert set(PRESETS) == set(PUBLISHED)


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_shapes_and_total_params(name):
    spec = get_model(name)
    layers, moe_layers, experts, top_k, hidden, ffn, shared, shared_ffn, total_b = PUBLISHED[name]
    assert (spec.layers, spec.moe_layers, spec.experts, spec.top_k, spec.hidden, spec.moe_ffn) == (
        layers, moe_layers, experts, top_k, hidden, ffn)
    assert (spec.shared_experts, spec.shared_ffn) == (shared, shared_ffn)
    assert spec.total_params / 1e9 == pytest.approx(total_b, rel=0.01)
    assert spec.expert_bytes_bf16 == 3 * hidden * ffn * 2
    assert spec.active_params < spec.total_params


def test_phi_expert_bytes_match_the_issue():
    assert get_model("phi-3.5-moe").expert_bytes_bf16 == 157_286_400


def test_int4_expert_bytes_count_packed_codes_and_bf16_scales():
    spec = get_model("qwen1.5-moe-a2.7b")  # D=2048, F=1408 = 11 groups of 128
    d, f = 2048, 1408
    packed = 3 * d * f // 2
    scales = (f * (d // 128) * 2 + d * (f // 128)) * 2
    assert spec.expert_bytes_int4() == packed + scales
    assert spec.expert_bytes_int4(QuantSpec(group=64)) > spec.expert_bytes_int4()


def test_deepseek_mla_kv_cache_is_the_compressed_latent():
    spec = get_model("deepseek-v2-lite")
    assert spec.kv_bytes_per_token == (512 + 64) * 27 * 2


def test_qwen_kv_cache_matches_paper_table2():
    # Table 2: 2.25 GB of KV cache for Qwen1.5-MoE at 12K context.
    assert get_model("qwen1.5-moe-a2.7b").kv_bytes_per_token * 12 * 1024 / 2**30 == pytest.approx(2.25, rel=0.01)


def test_unknown_model_lists_valid_names():
    with pytest.raises(UserError, match="phi-3.5-moe"):
        get_model("phi")


def test_invalid_spec_values_are_rejected(tiny_spec):
    with pytest.raises(ValueError, match="top_k"):
        ModelSpec(**{**tiny_spec.to_dict(), "top_k": 9})
    with pytest.raises(ValueError, match="arch"):
        ModelSpec(**{**tiny_spec.to_dict(), "arch": "llama"})


HF_CONFIGS = {
    "mixtral": {"model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
                "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000, "num_local_experts": 8,
                "num_experts_per_tok": 2, "tie_word_embeddings": False},
    "qwen2_moe": {"model_type": "qwen2_moe", "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 24,
                  "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 151936, "num_experts": 60,
                  "num_experts_per_tok": 4, "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
                  "decoder_sparse_step": 1, "mlp_only_layers": []},
    "deepseek_v2": {"model_type": "deepseek_v2", "hidden_size": 2048, "intermediate_size": 10944, "num_hidden_layers": 27,
                    "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 102400, "n_routed_experts": 64,
                    "n_shared_experts": 2, "num_experts_per_tok": 6, "moe_intermediate_size": 1408,
                    "first_k_dense_replace": 1, "kv_lora_rank": 512, "q_lora_rank": None, "qk_nope_head_dim": 128,
                    "qk_rope_head_dim": 64, "v_head_dim": 128},
}
MATCHING_PRESET = {"mixtral": "mixtral-8x7b", "qwen2_moe": "qwen1.5-moe-a2.7b", "deepseek_v2": "deepseek-v2-lite"}


@pytest.mark.parametrize("arch", sorted(HF_CONFIGS))
def test_from_hf_config_reproduces_the_preset(tmp_path, arch):
    (tmp_path / "config.json").write_text(json.dumps(HF_CONFIGS[arch]))
    spec = ModelSpec.from_hf_config(tmp_path)
    preset = get_model(MATCHING_PRESET[arch])
    assert spec.total_params == preset.total_params
    assert spec.summary()["expert_bytes_int4"] == preset.expert_bytes_int4()
    assert spec.kv_bytes_per_token == preset.kv_bytes_per_token


def test_from_hf_config_rejects_unsupported_architectures(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(UserError) as err:
        ModelSpec.from_hf_config(tmp_path)
    assert "llama" in str(err.value) and all(a in str(err.value) for a in SUPPORTED_ARCHS)


def test_from_hf_config_without_config_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="no config.json"):
        ModelSpec.from_hf_config(tmp_path)


def test_models_json_lists_every_field(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    fields = {"name", "arch", "layers", "moe_layers", "experts", "top_k", "shared_experts", "shared_ffn", "hidden",
              "moe_ffn", "heads", "kv_heads", "head_dim", "vocab", "expert_bytes_bf16", "expert_bytes_int4",
              "total_params", "active_params", "nonexpert_bytes_bf16"}
    assert [r["name"] for r in rows] == list(PRESETS)
    assert all(fields <= set(r) for r in rows)
    assert {r["arch"] for r in rows} == {"mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "deepseek_v2", "olmoe"}
