"""Expert geometry and the limits the MoE kernels support (mirrors runtime/kernels/moe_common.cuh).

Dimension letters: L layers, E experts, K top-k, T tokens, D hidden, F expert FFN, S cache slots.

Usage:
    geo = ExpertGeometry.from_spec(get_model("phi-3.5-moe")); geo.check_tokens(8)
"""

from __future__ import annotations

from dataclasses import dataclass

from moespeq.errors import UserError
from moespeq.spec import ModelSpec

GROUP = 128  # INT4 group along the input dim; also the k granularity of the kernels
MAX_TOKENS = 16  # MOE_MAX_TOKENS
MAX_SLOTS = 128  # MOE_MAX_SLOTS: T * K
MAX_EXPERTS = 512  # MOE_MAX_EXPERTS
MAX_WARPS = 8  # MOE_MAX_WARPS


@dataclass(frozen=True)
class ExpertGeometry:
    """One MoE layer's routed experts: gate and up [F, D], down [D, F] (nn.Linear layout)."""

    hidden: int
    moe_ffn: int
    experts: int
    top_k: int

    def __post_init__(self) -> None:
        for name in ("hidden", "moe_ffn"):
            value = getattr(self, name)
            if value <= 0 or value % GROUP:
                raise UserError(f"{name}={value} is not supported by the MoE kernels: it must be a positive multiple of {GROUP}")
        if not 1 <= self.experts <= MAX_EXPERTS:
            raise UserError(f"experts={self.experts} is not supported by the MoE kernels: use 1..{MAX_EXPERTS}")
        if not 1 <= self.top_k <= min(self.experts, MAX_SLOTS):
            raise UserError(f"top_k={self.top_k} is not supported: use 1..{min(self.experts, MAX_SLOTS)}")

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> ExpertGeometry:
        return cls(hidden=spec.hidden, moe_ffn=spec.moe_ffn, experts=spec.experts, top_k=spec.top_k)

    @property
    def matrix_elems(self) -> int:
        return self.hidden * self.moe_ffn

    @property
    def expert_elems(self) -> int:
        """bf16 values of one expert: gate | up | down, contiguous."""
        return 3 * self.matrix_elems

    @property
    def expert_bytes_bf16(self) -> int:
        return 2 * self.expert_elems

    @property
    def expert_bytes_int4(self) -> int:
        """Packed codes (half a byte each) plus one bf16 scale per 128-wide group and row."""
        return self.expert_elems // 2 + 2 * self.expert_elems // GROUP

    @property
    def max_tokens(self) -> int:
        return min(MAX_TOKENS, MAX_SLOTS // self.top_k)

    @property
    def max_used_experts(self) -> int:
        """At most this many distinct experts in one launch (T <= max_tokens)."""
        return min(self.experts, self.max_tokens * self.top_k)

    def check_tokens(self, tokens: int) -> None:
        if not 1 <= tokens <= self.max_tokens:
            raise UserError(f"{tokens} tokens per MoE launch is not supported with top_k={self.top_k}: "
                            f"use 1..{self.max_tokens} (T <= {MAX_TOKENS} and T*K <= {MAX_SLOTS})")


@dataclass(frozen=True)
class SlotArena:
    """The device expert cache as the verify kernel sees it.

    arena: [S, 3 F D] uint16 bf16 bits, slot s = one expert, gate [F, D] | up [F, D] | down [D, F].
    slot_table: [L, E] int32, the slot of (layer, expert) or -1.
    """

    arena: object
    slot_table: object
    geometry: ExpertGeometry

    def __post_init__(self) -> None:
        if self.arena.shape[1:] != (self.geometry.expert_elems,):  # type: ignore[attr-defined]
            raise ValueError(f"arena shape {self.arena.shape} does not hold experts of {self.geometry}")  # type: ignore[attr-defined]
        if self.slot_table.shape[1:] != (self.geometry.experts,):  # type: ignore[attr-defined]
            raise ValueError(f"slot table shape {self.slot_table.shape} does not match {self.geometry.experts} experts")  # type: ignore[attr-defined]
