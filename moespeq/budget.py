"""GPU memory layout of each kind of system under a byte budget (the paper's Table 2, per system).

Every system keeps non-expert weights, shared experts, the KV cache and a workspace on the GPU. What is
left goes to routed experts, by one of these rules (DESIGN §1):

  draft         speq, speq-static, oracle: the INT4 draft experts stay resident; the rest is the cache.
  same-cache    lru-sc: exactly as many cache slots as speq gets at this budget (less memory used).
  same-memory   lru-sm, gate-prefetch, eam-prefetch: the draft's bytes go to the cache as well.
  staging       ondemand: top-k slots re-filled for every layer of every token; no cache.
  layer         hf-offload: one whole MoE layer streamed per layer of every token; no cache.

Usage:
    layout = plan_memory(BudgetConfig(model=get_model("phi-3.5-moe"), budget_bytes=40 * 2**30, system="speq"))
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from moespeq.errors import UserError
from moespeq.spec import ModelSpec, QuantSpec
from moespeq.units import format_bytes

MEMORY_RULES: dict[str, str] = {
    "speq": "draft", "speq-static": "draft", "oracle": "draft",
    "lru-sc": "same-cache",
    "lru-sm": "same-memory", "gate-prefetch": "same-memory", "eam-prefetch": "same-memory",
    "ondemand": "staging",
    "hf-offload": "layer",
}


@dataclass(frozen=True)
class BudgetConfig:
    """What to lay out: a model, a GPU byte budget, a system, a context length."""

    model: ModelSpec
    budget_bytes: int
    system: str = "speq"
    context: int = 4096  # tokens of KV cache reserved
    workspace_bytes: int = 512 * 2**20  # activations, logits, kernel scratch
    quant: QuantSpec = QuantSpec()

    def __post_init__(self) -> None:
        if self.system not in MEMORY_RULES:
            raise UserError(f"unknown system {self.system!r}: use one of {', '.join(MEMORY_RULES)}")
        if self.budget_bytes <= 0:
            raise UserError(f"budget {self.budget_bytes} bytes must be positive")
        if self.context < 1:
            raise UserError(f"context {self.context} must be at least 1 token")
        if self.workspace_bytes < 0:
            raise UserError(f"workspace {self.workspace_bytes} bytes must not be negative")


@dataclass(frozen=True)
class MemoryLayout:
    """Bytes per component; `cache_slots_*` count bf16 routed experts."""

    system: str
    rule: str
    budget_bytes: int
    nonexpert_bytes: int  # embeddings, attention, norms, routers, dense layers (shared experts excluded)
    shared_bytes: int
    kv_bytes: int
    workspace_bytes: int
    draft_bytes: int
    cache_slots_total: int
    cache_slots_per_layer: int
    cache_bytes: int
    used_bytes: int
    min_budget_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def rows(self) -> list[tuple[str, str]]:
        return [
            ("non-expert weights", format_bytes(self.nonexpert_bytes)),
            ("shared experts", format_bytes(self.shared_bytes)),
            ("KV cache", format_bytes(self.kv_bytes)),
            ("workspace", format_bytes(self.workspace_bytes)),
            ("draft INT4 experts", format_bytes(self.draft_bytes)),
            (f"expert cache ({self.cache_slots_total} slots, {self.cache_slots_per_layer}/layer)",
             format_bytes(self.cache_bytes)),
            ("total used", format_bytes(self.used_bytes)),
            ("budget", format_bytes(self.budget_bytes)),
        ]


def _fixed_bytes(cfg: BudgetConfig) -> tuple[int, int, int]:
    spec = cfg.model
    return spec.nonexpert_bytes_bf16 - spec.shared_bytes_bf16, spec.shared_bytes_bf16, spec.kv_bytes_per_token * cfg.context


def min_slots(spec: ModelSpec, rule: str) -> int:
    """Fewest expert slots a system of this rule can run with: one token's top-k (a whole layer for hf-offload)."""
    return spec.experts if rule == "layer" else spec.top_k


def plan_memory(cfg: BudgetConfig) -> MemoryLayout:
    """Lay out the budget; UserError naming the minimum budget when it does not fit."""
    spec, rule = cfg.model, MEMORY_RULES[cfg.system]
    nonexpert, shared, kv = _fixed_bytes(cfg)
    expert = spec.expert_bytes_bf16
    # lru-sc needs speq's draft to fit to know speq's cache, even though it does not hold the draft itself.
    draft_all = spec.moe_layers * spec.experts * spec.expert_bytes_int4(cfg.quant)
    has_draft = rule in ("draft", "same-cache")
    fixed = nonexpert + shared + kv + cfg.workspace_bytes + (draft_all if has_draft else 0)
    need_slots = min_slots(spec, rule)
    minimum = fixed + need_slots * expert
    free = cfg.budget_bytes - fixed
    if free < need_slots * expert:
        raise UserError(
            f"budget {format_bytes(cfg.budget_bytes)} is too small for {cfg.system} on {spec.name}: "
            f"it needs at least {format_bytes(minimum)} ({minimum} bytes) at context {cfg.context}")
    slots = free // expert
    if rule == "staging":
        slots = need_slots
    elif rule == "layer":
        slots = spec.experts
    draft = draft_all if rule == "draft" else 0
    used = nonexpert + shared + kv + cfg.workspace_bytes + draft + slots * expert
    return MemoryLayout(
        system=cfg.system, rule=rule, budget_bytes=cfg.budget_bytes, nonexpert_bytes=nonexpert,
        shared_bytes=shared, kv_bytes=kv, workspace_bytes=cfg.workspace_bytes, draft_bytes=draft,
        cache_slots_total=int(slots), cache_slots_per_layer=int(slots // spec.moe_layers),
        cache_bytes=int(slots * expert), used_bytes=int(used), min_budget_bytes=int(minimum),
    )
