"""Model geometry: the shapes of a Mixture-of-Experts decoder and the byte sizes derived from them.

Dimension letters used across moespeq: L MoE layers, E routed experts per layer, K top-k, T tokens,
D hidden size, F expert FFN size, J draft positions.

Usage:
    spec = get_model("phi-3.5-moe"); spec.expert_bytes_bf16   # 157,286,400
    spec = ModelSpec.from_hf_config("path/to/checkpoint")
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moespeq.errors import UserError

BF16_BYTES = 2

#: Hugging Face `model_type`s whose routing moespeq can collect and whose shapes it can read.
SUPPORTED_ARCHS = ("mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "olmoe", "deepseek_v2", "deepseek_v3")


@dataclass(frozen=True)
class QuantSpec:
    """How the draft's routed experts are quantized: symmetric integer, groups along the input dim."""

    bits: int = 4
    group: int = 128
    symmetric: bool = True
    scale_dtype: str = "bf16"
    method: str = "rtn"  # rtn | gptq | synthetic (no weights: only bytes matter)

    def __post_init__(self) -> None:
        if self.bits != 4:
            raise ValueError(f"QuantSpec.bits={self.bits}: only 4-bit experts are implemented")
        if self.group <= 0 or self.group % 8:
            raise ValueError(f"QuantSpec.group={self.group}: must be a positive multiple of 8")
        if self.scale_dtype not in ("bf16", "fp16"):
            raise ValueError(f"QuantSpec.scale_dtype={self.scale_dtype!r}: use 'bf16' or 'fp16'")
        if self.method not in ("rtn", "gptq", "synthetic"):
            raise ValueError(f"QuantSpec.method={self.method!r}: use 'rtn', 'gptq' or 'synthetic'")

    def matrix_bytes(self, n_in: int, n_out: int) -> int:
        """Packed weights plus one 2-byte scale per (group, output row) of an n_in x n_out matrix."""
        groups = math.ceil(n_in / self.group)
        return n_out * groups * self.group * self.bits // 8 + n_out * groups * 2


@dataclass(frozen=True)
class ModelSpec:
    """Shapes of an MoE decoder, as its Hugging Face config.json gives them.

    Attention is GQA (`heads`, `kv_heads`, `head_dim`) or, for DeepSeek, MLA (`kv_lora_rank` > 0).
    `shared_ffn` is the intermediate size of the shared-expert MLP, all shared experts together
    (DeepSeek-V2-Lite: 2 x 1408 = 2816), as the models implement it.
    """

    name: str
    arch: str
    layers: int
    experts: int
    top_k: int
    hidden: int
    moe_ffn: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    first_dense: int = 0
    dense_ffn: int = 0
    shared_experts: int = 0
    shared_ffn: int = 0
    shared_expert_gate: bool = False
    tie_embeddings: bool = False
    attention_bias: str = "none"  # none | qkv | all
    norm: str = "rms"  # rms | layer (LayerNorm with bias)
    qk_norm: str = "none"  # none | head (per head_dim) | full (over all heads)
    lm_head_bias: bool = False
    kv_lora_rank: int = 0
    q_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    router_bias: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, kind = getattr(self, f.name), {"int": int, "str": str, "bool": bool}[str(f.type)]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"ModelSpec.{f.name}={value!r} must be of type {f.type}")
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(f"ModelSpec.arch={self.arch!r} is not supported: use one of {', '.join(SUPPORTED_ARCHS)}")
        for name in ("layers", "experts", "top_k", "hidden", "moe_ffn", "heads", "kv_heads", "head_dim", "vocab"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelSpec.{name}={getattr(self, name)} must be positive")
        if not 0 <= self.first_dense < self.layers:
            raise ValueError(f"ModelSpec.first_dense={self.first_dense} must be in [0, layers={self.layers})")
        if self.top_k > self.experts:
            raise ValueError(f"ModelSpec.top_k={self.top_k} exceeds experts={self.experts}")
        if self.first_dense and self.dense_ffn <= 0:
            raise ValueError("ModelSpec.dense_ffn must be positive when the model has dense layers")

    # ---- geometry ---------------------------------------------------------------------------------
    @property
    def moe_layers(self) -> int:
        return self.layers - self.first_dense

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def expert_params(self) -> int:
        """gate, up (D x F each) and down (F x D) of one routed expert."""
        return 3 * self.hidden * self.moe_ffn

    @property
    def expert_bytes_bf16(self) -> int:
        return self.expert_params * BF16_BYTES

    def expert_bytes_int4(self, quant: QuantSpec | None = None) -> int:
        q = quant or QuantSpec()
        return 2 * q.matrix_bytes(self.hidden, self.moe_ffn) + q.matrix_bytes(self.moe_ffn, self.hidden)

    @property
    def kv_bytes_per_token(self) -> int:
        """bf16 KV cache per token over all layers; MLA caches its compressed latent plus the rope key."""
        per_layer = self.kv_lora_rank + self.qk_rope_head_dim if self.is_mla else 2 * self.kv_heads * self.head_dim
        return per_layer * self.layers * BF16_BYTES

    # ---- parameter counts -------------------------------------------------------------------------
    def _attention_params(self) -> int:
        d = self.hidden
        if self.is_mla:
            q_dim = self.heads * (self.qk_nope_head_dim + self.qk_rope_head_dim)
            q = d * q_dim if not self.q_lora_rank else d * self.q_lora_rank + self.q_lora_rank + self.q_lora_rank * q_dim
            kv_a = d * (self.kv_lora_rank + self.qk_rope_head_dim) + self.kv_lora_rank
            kv_b = self.kv_lora_rank * self.heads * (self.qk_nope_head_dim + self.v_head_dim)
            return q + kv_a + kv_b + self.heads * self.v_head_dim * d
        q_out, kv_out = self.heads * self.head_dim, self.kv_heads * self.head_dim
        params = d * q_out + 2 * d * kv_out + q_out * d
        if self.attention_bias in ("qkv", "all"):
            params += q_out + 2 * kv_out
        if self.attention_bias == "all":
            params += d
        params += {"none": 0, "head": 2 * self.head_dim, "full": q_out + kv_out}[self.qk_norm]
        return params

    def _norm_params(self) -> int:
        return self.hidden * (2 if self.norm == "layer" else 1)

    @property
    def router_params(self) -> int:
        return self.hidden * self.experts + (self.experts if self.router_bias else 0)

    @property
    def shared_params(self) -> int:
        """Shared-expert MLP (and Qwen's sigmoid gate on it) of one MoE layer."""
        return 3 * self.hidden * self.shared_ffn + (self.hidden if self.shared_expert_gate else 0)

    @property
    def routed_expert_params_total(self) -> int:
        return self.moe_layers * self.experts * self.expert_params

    @property
    def total_params(self) -> int:
        per_layer = self._attention_params() + 2 * self._norm_params()
        moe = self.router_params + self.shared_params + self.experts * self.expert_params
        dense = 3 * self.hidden * self.dense_ffn
        embed = self.vocab * self.hidden * (1 if self.tie_embeddings else 2) + (self.vocab if self.lm_head_bias else 0)
        return self.layers * per_layer + self.moe_layers * moe + self.first_dense * dense + embed + self._norm_params()

    @property
    def active_params(self) -> int:
        """Parameters one decoded token touches: everything but the unchosen routed experts."""
        return self.total_params - self.moe_layers * (self.experts - self.top_k) * self.expert_params

    @property
    def nonexpert_bytes_bf16(self) -> int:
        """All weights that are not routed experts (shared experts included): the GPU-resident part."""
        return (self.total_params - self.routed_expert_params_total) * BF16_BYTES

    @property
    def shared_bytes_bf16(self) -> int:
        return self.moe_layers * self.shared_params * BF16_BYTES

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def summary(self) -> dict[str, Any]:
        """The fields `moespeq models --json` prints: the config plus derived sizes."""
        return {
            **self.to_dict(),
            "moe_layers": self.moe_layers,
            "expert_bytes_bf16": self.expert_bytes_bf16,
            "expert_bytes_int4": self.expert_bytes_int4(),
            "total_params": self.total_params,
            "active_params": self.active_params,
            "nonexpert_bytes_bf16": self.nonexpert_bytes_bf16,
            "shared_bytes_bf16": self.shared_bytes_bf16,
            "kv_bytes_per_token": self.kv_bytes_per_token,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown model-spec keys {unknown}")
        return cls(**data)

    @classmethod
    def from_hf_config(cls, path: str | Path, name: str | None = None) -> ModelSpec:
        """Spec from a checkpoint folder or its config.json, for any architecture in SUPPORTED_ARCHS."""
        from moespeq.hf_config import spec_fields_from_hf_config

        path = Path(path)
        config_path = path / "config.json" if path.is_dir() else path
        if not config_path.is_file():
            raise UserError(f"{path}: no config.json found; point at a Hugging Face checkpoint folder")
        try:
            config = json.loads(config_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UserError(f"{config_path}: not readable JSON ({exc})") from None
        fields = spec_fields_from_hf_config(config, str(config_path))
        return cls(name=name or config_path.parent.name, source=f"hf-config:{config_path}", **fields)


def _spec(**kw: Any) -> ModelSpec:
    return ModelSpec(**kw)


# Shapes copied from each model's published config.json on the Hugging Face hub (source field names it).
PRESETS: dict[str, ModelSpec] = {
    "mixtral-8x7b": _spec(
        name="mixtral-8x7b", arch="mixtral", layers=32, experts=8, top_k=2, hidden=4096, moe_ffn=14336,
        heads=32, kv_heads=8, head_dim=128, vocab=32000, source="mistralai/Mixtral-8x7B-v0.1 config.json"),
    "phi-3.5-moe": _spec(
        name="phi-3.5-moe", arch="phimoe", layers=32, experts=16, top_k=2, hidden=4096, moe_ffn=6400,
        heads=32, kv_heads=8, head_dim=128, vocab=32064, attention_bias="all", norm="layer", lm_head_bias=True,
        source="microsoft/Phi-3.5-MoE-instruct config.json"),
    "qwen1.5-moe-a2.7b": _spec(
        name="qwen1.5-moe-a2.7b", arch="qwen2_moe", layers=24, experts=60, top_k=4, hidden=2048, moe_ffn=1408,
        heads=16, kv_heads=16, head_dim=128, vocab=151936, shared_experts=1, shared_ffn=5632,
        shared_expert_gate=True, attention_bias="qkv", source="Qwen/Qwen1.5-MoE-A2.7B config.json"),
    "qwen3-30b-a3b": _spec(
        name="qwen3-30b-a3b", arch="qwen3_moe", layers=48, experts=128, top_k=8, hidden=2048, moe_ffn=768,
        heads=32, kv_heads=4, head_dim=128, vocab=151936, qk_norm="head", source="Qwen/Qwen3-30B-A3B config.json"),
    "deepseek-v2-lite": _spec(
        name="deepseek-v2-lite", arch="deepseek_v2", layers=27, experts=64, top_k=6, hidden=2048, moe_ffn=1408,
        heads=16, kv_heads=16, head_dim=192, vocab=102400, first_dense=1, dense_ffn=10944, shared_experts=2,
        shared_ffn=2816, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        source="deepseek-ai/DeepSeek-V2-Lite config.json"),
    "olmoe-1b-7b": _spec(
        name="olmoe-1b-7b", arch="olmoe", layers=16, experts=64, top_k=8, hidden=2048, moe_ffn=1024,
        heads=16, kv_heads=16, head_dim=128, vocab=50304, qk_norm="full", source="allenai/OLMoE-1B-7B-0924 config.json"),
}


def get_model(name: str) -> ModelSpec:
    """Preset by exact name; a UserError lists the valid names."""
    if name not in PRESETS:
        raise UserError(f"unknown model {name!r}: use one of {', '.join(PRESETS)} (or a checkpoint folder)")
    return PRESETS[name]


def resolve_model(name_or_path: str) -> ModelSpec:
    """A preset name, or a checkpoint folder / config.json to read the shapes from."""
    if name_or_path in PRESETS:
        return PRESETS[name_or_path]
    if Path(name_or_path).exists():
        return ModelSpec.from_hf_config(name_or_path)
    return get_model(name_or_path)


