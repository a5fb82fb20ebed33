"""Loading a Hugging Face MoE checkpoint and hooking its routers: the architecture adapter of the collector.

What transformers (>= 5.17) does, per supported architecture (checked against 5.24's modeling files):

  arch          MoE block (decoder_layer.mlp)   router        router returns (logits, weights, ids)
  mixtral       MixtralSparseMoeBlock           mlp.gate      softmax -> top-k (sorted) -> renormalized
  phimoe        PhimoeSparseMoeBlock            mlp.router    sparsemixer: top-1, then top-2 (always 2)
  qwen2_moe     Qwen2MoeSparseMoeBlock          mlp.gate      softmax -> top-k (sorted), renorm if norm_topk_prob
  qwen3_moe     Qwen3MoeSparseMoeBlock          mlp.gate      same as qwen2_moe
  olmoe         OlmoeSparseMoeBlock             mlp.gate      same as qwen2_moe
  deepseek_v2   DeepseekV2Moe                   mlp.gate      softmax -> (group-limited) top-k, UNSORTED, x scale
  deepseek_v3   DeepseekV3MoE                   mlp.gate      sigmoid + bias choice, grouped top-k, UNSORTED,
                                                               renorm if norm_topk_prob, x routed_scaling_factor

Every MoE block calls `self.experts(hidden_states, top_k_index, top_k_weights)` with exactly the router's
weights, so the weights a router hook records are the ones the experts multiply by (a test checks this).
Routed experts are fused in memory: `experts.gate_up_proj` [E, 2F, D] (gate rows first) and
`experts.down_proj` [E, D, F], nn.Linear [out, in] layout, whatever the per-expert keys on disk are.
Dense layers (DeepSeek's first_k_dense_replace, Qwen's mlp_only_layers) have an MLP without `experts`
and no router; shared experts (Qwen2-MoE, DeepSeek) sit beside the routed ones and are not hooked.

Routing rows are recorded in the router's order, which is largest weight first for the sorted routers and
selection order (top-1, then top-2) for phimoe. DeepSeek's routers use topk(sorted=False), whose order
is an implementation detail the model ignores; their rows are sorted by gate weight (largest first).

Dimension letters: T tokens of one forward, L MoE layers, K top-k, E experts, D hidden, F expert FFN.

Usage:
    ckpt = load_checkpoint("ckpt/tiny-qwen2", device="cpu", dtype="fp32")
    with RoutingRecorder(ckpt) as rec:
        ckpt.model(ids); ids_tlk, weights_tlk = rec.pop()
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from moespeq.errors import UserError
from moespeq.spec import ModelSpec
from moespeq.trace import ID_DTYPE, WEIGHT_DTYPE

log = logging.getLogger(__name__)

ROUTER_ATTRS = ("gate", "router")  # the attribute of the MoE block that holds the router, in lookup order
UNSORTED_ROUTERS = ("deepseek_v2", "deepseek_v3")  # topk(sorted=False): rows are sorted by weight
DTYPES = ("bf16", "fp32")


@dataclass(frozen=True)
class MoeLayer:
    """One MoE decoder layer: its index among all decoder layers, its router and its routed experts."""

    index: int
    router: Any  # nn.Module
    experts: Any  # nn.Module with gate_up_proj [E, 2F, D] and down_proj [E, D, F]


@dataclass
class Checkpoint:
    """A loaded target model with what the collector needs to drive it."""

    path: Path
    model: Any  # transformers PreTrainedModel (causal LM), eval mode
    tokenizer: Any
    spec: ModelSpec
    layers: list[MoeLayer]
    device: str
    dtype: str


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """bf16 on a GPU (the paper's target precision class); fp32 on CPU, where bf16 is slow and inexact."""
    return "bf16" if device.startswith("cuda") else "fp32"


def torch_dtype(dtype: str):
    import torch

    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]


def check_checkpoint_folder(path: Path) -> ModelSpec:
    """UserError unless `path` is a folder with config.json of a supported architecture and weight files."""
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint folder; give a Hugging Face checkpoint folder (make one with `moespeq tiny`)")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: no config.json; this is not a Hugging Face checkpoint folder")
    spec = ModelSpec.from_hf_config(path)  # names the architecture and lists the supported ones if unsupported
    weights = [*path.glob("*.safetensors"), *path.glob("pytorch_model*.bin")]
    if not weights:
        raise UserError(f"{path}: no weights (*.safetensors or pytorch_model*.bin) beside config.json")
    return spec


def find_moe_layers(model: Any, spec: ModelSpec) -> list[MoeLayer]:
    """The MoE layers of a loaded model in depth order; RuntimeError if the layout is not the expected one."""
    layers = []
    for index, decoder_layer in enumerate(model.model.layers):
        mlp = decoder_layer.mlp
        experts = getattr(mlp, "experts", None)
        if experts is None:
            continue  # dense layer
        router = next((getattr(mlp, a) for a in ROUTER_ATTRS if hasattr(mlp, a)), None)
        if router is None or not hasattr(experts, "gate_up_proj") or not hasattr(experts, "down_proj"):
            raise RuntimeError(f"layer {index}: {type(mlp).__name__} has no router at mlp.gate/mlp.router or no fused "
                               "gate_up_proj/down_proj experts; this transformers version lays out MoE blocks differently")
        want_gu, want_down = (spec.experts, 2 * spec.moe_ffn, spec.hidden), (spec.experts, spec.hidden, spec.moe_ffn)
        if tuple(experts.gate_up_proj.shape) != want_gu or tuple(experts.down_proj.shape) != want_down:
            raise RuntimeError(f"layer {index}: experts have shapes {tuple(experts.gate_up_proj.shape)} and "
                               f"{tuple(experts.down_proj.shape)}, expected {want_gu} and {want_down}")
        layers.append(MoeLayer(index, router, experts))
    if len(layers) != spec.moe_layers:
        raise RuntimeError(f"found {len(layers)} MoE layers, the config says {spec.moe_layers}")
    return layers


def load_checkpoint(path: str | Path, device: str | None = None, dtype: str | None = None) -> Checkpoint:
    """Load model and tokenizer for collection (eval mode, no gradients needed)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path)
    spec = check_checkpoint_folder(path)
    device = device or default_device()
    dtype = dtype or default_dtype(device)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: no usable tokenizer ({str(exc).splitlines()[0][:120]}); "
                        "checkpoints made by `moespeq tiny` carry a byte-level one") from None
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype(dtype))
    model.to(device).eval().requires_grad_(False)
    log.info("loaded %s (%s) on %s in %s", path, spec.arch, device, dtype)
    return Checkpoint(path, model, tokenizer, spec, find_moe_layers(model, spec), device, dtype)


class RoutingRecorder:
    """Forward hooks on every router; `pop()` returns the routing of the forwards since the last pop.

    Each router call appends its (ids [T, K], weights [T, K]) per layer; one model forward of T tokens
    gives one call per MoE layer. pop() stacks them to ids [T, L, K] int16 and weights [T, L, K] float32.
    """

    def __init__(self, ckpt: Checkpoint) -> None:
        self._layers = ckpt.layers
        self._sort = ckpt.spec.arch in UNSORTED_ROUTERS
        self._calls: list[list[tuple[Any, Any]]] = [[] for _ in ckpt.layers]
        self._handles: list[Any] = []

    def __enter__(self) -> RoutingRecorder:
        for slot, layer in enumerate(self._layers):
            self._handles.append(layer.router.register_forward_hook(self._hook(slot)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, slot: int):
        def hook(module: Any, args: Any, output: tuple[Any, Any, Any]) -> None:
            _, weights, ids = output  # weights [T, K] (what the experts multiply by), ids [T, K]
            self._calls[slot].append((ids.detach(), weights.detach()))
        return hook

    def pop(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids [T, L, K] int16, weights [T, L, K] float32) of all router calls since the last pop."""
        import torch

        if any(len(calls) != len(self._calls[0]) for calls in self._calls):
            raise RuntimeError("router calls differ between layers; a forward was interrupted")
        ids = torch.stack([torch.cat([c[0] for c in calls]) for calls in self._calls], dim=1)  # [T, L, K]
        weights = torch.stack([torch.cat([c[1] for c in calls]) for calls in self._calls], dim=1).float()
        for calls in self._calls:
            calls.clear()
        if self._sort:
            order = torch.argsort(weights, dim=-1, descending=True, stable=True)
            ids, weights = ids.gather(-1, order), weights.gather(-1, order)
        return ids.cpu().numpy().astype(ID_DTYPE), weights.cpu().numpy().astype(WEIGHT_DTYPE)
