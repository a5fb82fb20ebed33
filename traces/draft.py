"""The INT4 draft: the target model with only its routed experts quantized, sharing every other tensor.

The draft is not a second model. It is a second set of routed-expert tensors (dequantized INT4, in the
target's dtype and device) that `draft_weights` swaps into the target's expert modules for the draft's
forwards, so embeddings, attention, norms, routers, dense layers and shared experts are the target's own
tensors, and so is the KV cache of the accepted prefix (paper §3.4, DESIGN §1). Memory cost: one extra
copy of the routed experts in the model dtype.

Quantization (moespeq.traces.quantize): symmetric INT4, groups of `QuantSpec.group` along the input
dimension, per expert and per matrix (gate_up_proj rows are output rows, so gate and up are quantized
exactly as if separate). RTN needs nothing else. GPTQ needs calibration prompts: one target forward per
prompt records each MoE layer's expert inputs (pre-hooks on the expert modules, the hidden states and the
router's choices); expert e's gate_up Hessian comes from the tokens routed to it, and its down_proj
Hessian from the intermediate activations act(x W_gate^T) * (x W_up^T) computed with the *quantized*
gate_up (sequential within the expert, as GPTQ's true-sequential mode). Layers are quantized from the
full-precision model's activations (not sequentially across layers).

Dimension letters: E experts, D hidden, F expert FFN, T calibration tokens, K top-k.

Usage:
    draft = build_draft(ckpt, QuantSpec(method="gptq"), calib_token_lists)
    with draft_weights(ckpt, draft):
        logits = ckpt.model(ids).logits
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from moespeq.spec import ModelSpec, QuantSpec
from moespeq.traces import quantize
from moespeq.traces.hf_model import Checkpoint

log = logging.getLogger(__name__)


@dataclass
class DraftExperts:
    """Dequantized draft experts per MoE layer, and how they were made."""

    quant: QuantSpec
    gate_up: list[Any]  # per MoE layer: [E, 2F, D] in the model dtype
    down: list[Any]  # per MoE layer: [E, D, F]
    stats: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def draft_weights(ckpt: Checkpoint, draft: DraftExperts) -> Iterator[None]:
    """Within the block, the model's routed experts are the draft's; the target's come back afterwards."""
    import torch

    saved = [(layer.experts.gate_up_proj, layer.experts.down_proj) for layer in ckpt.layers]
    try:
        for layer, gate_up, down in zip(ckpt.layers, draft.gate_up, draft.down, strict=True):
            layer.experts.gate_up_proj = torch.nn.Parameter(gate_up, requires_grad=False)
            layer.experts.down_proj = torch.nn.Parameter(down, requires_grad=False)
        yield
    finally:
        for layer, (gate_up, down) in zip(ckpt.layers, saved, strict=True):
            layer.experts.gate_up_proj, layer.experts.down_proj = gate_up, down


def check_quantizable(spec: ModelSpec, quant: QuantSpec) -> None:
    """ValueError unless both expert input sizes (D for gate_up, F for down) are whole groups."""
    if quant.method not in ("rtn", "gptq"):
        raise ValueError(f"QuantSpec.method={quant.method!r}: a collected draft is 'rtn' or 'gptq'")
    for name, size in (("hidden", spec.hidden), ("expert FFN", spec.moe_ffn)):
        if size % quant.group:
            raise ValueError(f"{spec.name}: {name} size {size} is not a multiple of the INT4 group {quant.group}")


def build_draft(ckpt: Checkpoint, quant: QuantSpec, calib: Sequence[Sequence[int]] = ()) -> DraftExperts:
    """Quantize every routed expert by `quant.method` (rtn, or gptq on the calibration token lists)."""
    check_quantizable(ckpt.spec, quant)
    if quant.method == "rtn":
        return _rtn_draft(ckpt, quant)
    if not calib:
        raise ValueError("GPTQ needs calibration prompts")
    return _gptq_draft(ckpt, quant, calib)


def _rtn_draft(ckpt: Checkpoint, quant: QuantSpec) -> DraftExperts:
    gate_up, down = [], []
    for layer in ckpt.layers:
        for target, out in ((layer.experts.gate_up_proj, gate_up), (layer.experts.down_proj, down)):
            out.append(_stack([quantize.dequantize(*quantize.rtn(w, quant), quant, like=w) for w in target]))
    return DraftExperts(quant, gate_up, down)


def _stack(mats: list[Any]) -> Any:
    import torch

    return torch.stack(mats)


def _expert_inputs(ckpt: Checkpoint, calib: Sequence[Sequence[int]]) -> list[tuple[Any, Any]]:
    """Per MoE layer: (hidden states [T, D] float32, router choices [T, K]) over all calibration tokens."""
    import torch

    seen: list[list[tuple[Any, Any]]] = [[] for _ in ckpt.layers]

    def pre_hook(slot: int):
        def hook(module: Any, args: tuple[Any, ...]) -> None:
            hidden, top_k_index = args[0], args[1]  # experts(hidden_states [T, D], top_k_index [T, K], weights)
            seen[slot].append((hidden.detach().float(), top_k_index.detach()))
        return hook

    handles = [layer.experts.register_forward_pre_hook(pre_hook(i)) for i, layer in enumerate(ckpt.layers)]
    try:
        with torch.no_grad():
            for tokens in calib:
                ckpt.model(torch.tensor([list(tokens)], device=ckpt.device), use_cache=False, logits_to_keep=1)
    finally:
        for handle in handles:
            handle.remove()
    return [(torch.cat([h for h, _ in calls]), torch.cat([i for _, i in calls])) for calls in seen]


def _gptq_draft(ckpt: Checkpoint, quant: QuantSpec, calib: Sequence[Sequence[int]]) -> DraftExperts:
    import torch

    spec = ckpt.spec
    gate_up, down = [], []
    stats = {"calib_prompts": len(calib), "calib_tokens": 0, "experts_without_calib_tokens": 0,
             "output_error_gptq": 0.0, "output_error_rtn": 0.0}
    for layer, (hidden, choice) in zip(ckpt.layers, _expert_inputs(ckpt, calib), strict=True):
        stats["calib_tokens"] = int(hidden.shape[0])
        experts = layer.experts
        routed = [hidden[(choice == e).any(dim=-1)] for e in range(spec.experts)]  # E x [T_e, D]
        stats["experts_without_calib_tokens"] += sum(int(x.shape[0] == 0) for x in routed)
        gu_hat = _gptq_matrices(experts.gate_up_proj, routed, quant, stats)  # [E, 2F, D] float32
        inter = [_intermediate(experts, x, gu_hat[e]) for e, x in enumerate(routed)]  # E x [T_e, F]
        down_hat = _gptq_matrices(experts.down_proj, inter, quant, stats)  # [E, D, F]
        gate_up.append(gu_hat.to(experts.gate_up_proj.dtype))
        down.append(down_hat.to(experts.down_proj.dtype))
        del hidden, choice, routed, inter
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    log.info("GPTQ draft: output error %.4g vs RTN %.4g on %d calibration tokens",
             stats["output_error_gptq"], stats["output_error_rtn"], stats["calib_tokens"])
    return DraftExperts(quant, gate_up, down, stats)


def _identity_if_empty(h: Any, n_tokens: int) -> Any:
    """GPTQ with an identity Hessian is RTN: the rule for experts that no calibration token reached."""
    import torch

    return torch.eye(h.shape[0], dtype=h.dtype, device=h.device) if n_tokens == 0 else h


def _gptq_matrices(weights: Any, inputs: list[Any], quant: QuantSpec, stats: dict[str, Any]) -> Any:
    """GPTQ of all experts' matrices weights [E, O, I] on their inputs E x [T_e, I]; dequantized float32."""
    import torch

    hessians = torch.stack([_identity_if_empty(quantize.hessian(x), x.shape[0]) for x in inputs])  # [E, I, I]
    codes, scales = quantize.gptq(weights, hessians, quant)  # [E, O, I], [E, O, I/G]
    w32 = weights.float()
    w_hat = torch.stack([quantize.dequantize(codes[e], scales[e], quant, like=w32) for e in range(len(inputs))])
    for e, x in enumerate(inputs):
        stats["output_error_gptq"] += quantize.output_error(x, w32[e], w_hat[e])
        rtn_hat = quantize.dequantize(*quantize.rtn(weights[e], quant), quant, like=w32)
        stats["output_error_rtn"] += quantize.output_error(x, w32[e], rtn_hat)
    return w_hat


def _intermediate(experts: Any, x: Any, gate_up_hat: Any) -> Any:
    """act(x W_gate^T) * (x W_up^T) [T, F] with the quantized gate_up [2F, D] (gate rows first)."""
    gate, up = (x @ gate_up_hat.T).chunk(2, dim=-1)
    return experts.act_fn(gate) * up
