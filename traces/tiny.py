"""Tiny random-initialized Hugging Face MoE checkpoints, so every collection path runs without downloads.

A tiny checkpoint is built with transformers' own config and model classes for one of SUPPORTED_ARCHS,
saved with `save_pretrained` (safetensors), together with a byte-level tokenizer (256 byte tokens plus
<s>, </s>, <pad>) so text prompts work. Hidden and expert FFN sizes default to multiples of 128, so the
INT4 draft's group-128 quantization is exercised for real. Architecture quirks are kept, because they are
what the collector must handle: DeepSeek's dense first layer and shared experts, Qwen2-MoE's gated shared
expert, Phi-MoE's sparsemixer router (top-2 only), DeepSeek-V3's grouped sigmoid router.

Usage:
    path = save_tiny(TinyConfig(arch="qwen2_moe"), "ckpt/tiny-qwen2")
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moespeq.spec import SUPPORTED_ARCHS

log = logging.getLogger(__name__)

N_BYTE_TOKENS = 256
SPECIAL_TOKENS = ("<s>", "</s>", "<pad>")  # ids 256, 257, 258 (</s> is not a stop token: see build_tiny)
HEAD_DIM = 32


@dataclass(frozen=True)
class TinyConfig:
    """Geometry of a tiny checkpoint (D hidden, F expert FFN; attention heads follow from D)."""

    arch: str
    layers: int = 2
    experts: int = 8
    top_k: int = 2
    hidden: int = 128
    moe_ffn: int = 256
    vocab: int = 384
    seed: int = 0
    init_std: float = 0.1  # larger than HF's 0.02 so routers and logits are not nearly uniform

    def __post_init__(self) -> None:
        if self.arch not in SUPPORTED_ARCHS:
            raise ValueError(f"--arch {self.arch!r} is not supported; supported: {', '.join(SUPPORTED_ARCHS)}")
        for name in ("layers", "experts", "top_k", "hidden", "moe_ffn"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')}={getattr(self, name)} must be positive")
        if self.top_k > self.experts:
            raise ValueError(f"--top-k={self.top_k} exceeds --experts={self.experts}")
        if self.arch == "phimoe" and self.top_k != 2:
            raise ValueError(f"--top-k={self.top_k}: phimoe's sparsemixer router always picks 2 experts; use --top-k 2")
        if self.hidden % HEAD_DIM:
            raise ValueError(f"--hidden={self.hidden} must be a multiple of the head size {HEAD_DIM}")
        if self.arch.startswith("deepseek") and self.layers < 2:
            raise ValueError(f"--layers={self.layers}: a tiny {self.arch} has one dense first layer, so it needs >= 2 layers")
        if self.vocab < N_BYTE_TOKENS + len(SPECIAL_TOKENS):
            raise ValueError(f"--vocab={self.vocab} must hold the byte tokenizer's {N_BYTE_TOKENS + len(SPECIAL_TOKENS)} tokens")


def hf_config_kwargs(cfg: TinyConfig) -> dict[str, Any]:
    """Keyword arguments of the architecture's transformers config class."""
    heads = cfg.hidden // HEAD_DIM
    common: dict[str, Any] = dict(
        vocab_size=cfg.vocab, hidden_size=cfg.hidden, num_hidden_layers=cfg.layers, num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 2), num_experts_per_tok=cfg.top_k, max_position_embeddings=2048,
        initializer_range=cfg.init_std, tie_word_embeddings=False,
        bos_token_id=N_BYTE_TOKENS, eos_token_id=N_BYTE_TOKENS + 1, pad_token_id=N_BYTE_TOKENS + 2,
    )
    if cfg.arch in ("mixtral", "phimoe"):
        return {**common, "num_local_experts": cfg.experts, "intermediate_size": cfg.moe_ffn, "sliding_window": None}
    if cfg.arch == "olmoe":
        return {**common, "num_experts": cfg.experts, "intermediate_size": cfg.moe_ffn}
    if cfg.arch in ("qwen2_moe", "qwen3_moe"):
        qwen = {**common, "num_experts": cfg.experts, "moe_intermediate_size": cfg.moe_ffn,
                "intermediate_size": 2 * cfg.moe_ffn, "decoder_sparse_step": 1, "mlp_only_layers": [],
                "norm_topk_prob": cfg.arch == "qwen3_moe"}
        if cfg.arch == "qwen2_moe":
            return {**qwen, "shared_expert_intermediate_size": 2 * cfg.moe_ffn}
        return {**qwen, "head_dim": HEAD_DIM}
    # deepseek_v2 / deepseek_v3: MLA attention, one dense first layer, one shared expert
    deepseek = {**common, "num_key_value_heads": heads, "n_routed_experts": cfg.experts,
                "moe_intermediate_size": cfg.moe_ffn, "intermediate_size": 2 * cfg.moe_ffn, "n_shared_experts": 1,
                "first_k_dense_replace": 1, "kv_lora_rank": 64, "q_lora_rank": None, "qk_nope_head_dim": 16,
                "qk_rope_head_dim": 16, "v_head_dim": HEAD_DIM, "head_dim": 16, "routed_scaling_factor": 1.0}
    if cfg.arch == "deepseek_v2":
        return {**deepseek, "topk_method": "greedy", "n_group": 1, "topk_group": 1}
    groups = 2 if cfg.experts % 2 == 0 and cfg.experts >= 4 else 1
    return {**deepseek, "n_group": groups, "topk_group": groups, "norm_topk_prob": True}


def byte_tokenizer():
    """A PreTrainedTokenizerFast over raw UTF-8 bytes (no merges), ids 0..255, specials from 256."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), key=lambda ch: _byte_of(ch))
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    vocab.update({tok: N_BYTE_TOKENS + i for i, tok in enumerate(SPECIAL_TOKENS)})
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _byte_of(ch: str) -> int:
    """The byte that GPT-2's byte-to-unicode table maps to `ch` (printable bytes map to themselves)."""
    code = ord(ch)
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    if code in printable:
        return code
    others = [b for b in range(256) if b not in printable]
    return others[code - 256]


def build_tiny(cfg: TinyConfig):
    """(model, tokenizer): a random-initialized fp32 model of the architecture, seeded."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    hf_config = AutoConfig.for_model(cfg.arch, **hf_config_kwargs(cfg))
    torch.manual_seed(cfg.seed)
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    # a random model's end-of-sequence is noise: without one, generate and collect run to max_new_tokens
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = hf_config.pad_token_id
    return model.eval(), byte_tokenizer()


def save_tiny(cfg: TinyConfig, out: str | Path) -> Path:
    """Build and save a tiny checkpoint (config.json, model.safetensors, tokenizer) to `out`."""
    out = Path(out)
    model, tokenizer = build_tiny(cfg)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    log.info("saved tiny %s (%d parameters) to %s", cfg.arch, sum(p.numel() for p in model.parameters()), out)
    return out
