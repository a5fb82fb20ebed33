"""Reading ModelSpec fields from a Hugging Face config.json, one small rule per architecture.

The key names differ between architectures (`num_local_experts` vs `num_experts` vs `n_routed_experts`);
everything that reads a checkpoint's geometry goes through `spec_fields_from_hf_config`.
"""

from __future__ import annotations

from typing import Any

from moespeq.errors import UserError
from moespeq.spec import SUPPORTED_ARCHS


def _require(config: dict[str, Any], key: str, where: str) -> Any:
    if key not in config:
        raise UserError(f"{where}: config has no {key!r}, which a {config.get('model_type')} model needs")
    return config[key]


def _common(config: dict[str, Any], where: str) -> dict[str, Any]:
    hidden = int(_require(config, "hidden_size", where))
    heads = int(_require(config, "num_attention_heads", where))
    return {
        "arch": config["model_type"],
        "layers": int(_require(config, "num_hidden_layers", where)),
        "hidden": hidden,
        "heads": heads,
        "kv_heads": int(config.get("num_key_value_heads") or heads),
        "head_dim": int(config.get("head_dim") or hidden // heads),
        "vocab": int(_require(config, "vocab_size", where)),
        "tie_embeddings": bool(config.get("tie_word_embeddings", False)),
        "top_k": int(_require(config, "num_experts_per_tok", where)),
    }


def _first_dense_of_qwen(config: dict[str, Any], layers: int, where: str) -> int:
    """Qwen MoE marks dense layers through `mlp_only_layers`/`decoder_sparse_step`; only a dense prefix is modelled."""
    dense = set(config.get("mlp_only_layers") or [])
    step = int(config.get("decoder_sparse_step") or 1)
    dense |= {i for i in range(layers) if (i + 1) % step != 0}
    if dense != set(range(len(dense))):
        raise UserError(f"{where}: dense layers {sorted(dense)} are not a prefix; moespeq models dense layers only at the start")
    return len(dense)


def spec_fields_from_hf_config(config: dict[str, Any], where: str) -> dict[str, Any]:
    """ModelSpec keyword arguments (all but `name`) for a supported config."""
    arch = config.get("model_type")
    if arch not in SUPPORTED_ARCHS:
        raise UserError(f"{where}: architecture {arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}")
    fields = _common(config, where)
    if arch in ("mixtral", "phimoe"):
        fields.update(experts=int(_require(config, "num_local_experts", where)),
                      moe_ffn=int(_require(config, "intermediate_size", where)))
        if arch == "phimoe":
            fields.update(attention_bias="all" if config.get("attention_bias", True) else "none",
                          norm="layer", lm_head_bias=bool(config.get("lm_head_bias", True)))
    elif arch in ("qwen2_moe", "qwen3_moe"):
        first_dense = _first_dense_of_qwen(config, fields["layers"], where)
        # transformers >= 5 saves qwen3_moe's expert count as num_local_experts (the hub configs say num_experts)
        experts_key = "num_experts" if "num_experts" in config else "num_local_experts"
        fields.update(experts=int(_require(config, experts_key, where)),
                      moe_ffn=int(_require(config, "moe_intermediate_size", where)),
                      first_dense=first_dense,
                      dense_ffn=int(config.get("intermediate_size") or 0) if first_dense else 0)
        if arch == "qwen2_moe":
            shared_ffn = int(config.get("shared_expert_intermediate_size") or 0)
            fields.update(shared_experts=1 if shared_ffn else 0, shared_ffn=shared_ffn,
                          shared_expert_gate=bool(shared_ffn), attention_bias="qkv")
        else:
            fields.update(qk_norm="head", attention_bias="qkv" if config.get("attention_bias") else "none")
    elif arch == "olmoe":
        fields.update(experts=int(_require(config, "num_experts", where)),
                      moe_ffn=int(_require(config, "intermediate_size", where)), qk_norm="full")
    else:  # deepseek_v2, deepseek_v3
        moe_ffn = int(_require(config, "moe_intermediate_size", where))
        n_shared = int(config.get("n_shared_experts") or 0)
        rope, nope = int(config.get("qk_rope_head_dim") or 0), int(config.get("qk_nope_head_dim") or 0)
        first_dense = int(config.get("first_k_dense_replace") or 0)
        fields.update(
            experts=int(_require(config, "n_routed_experts", where)), moe_ffn=moe_ffn,
            first_dense=first_dense, dense_ffn=int(config.get("intermediate_size") or 0) if first_dense else 0,
            shared_experts=n_shared, shared_ffn=n_shared * moe_ffn,
            kv_lora_rank=int(config.get("kv_lora_rank") or 0), q_lora_rank=int(config.get("q_lora_rank") or 0),
            qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=int(config.get("v_head_dim") or 0),
            head_dim=nope + rope or fields["head_dim"], router_bias=arch == "deepseek_v3",
        )
    return fields
