"""The serializable policy configuration: what `moespeq search` writes and `simulate/decode --policy-file` read.

A policy is a cache rule, a prefetcher and a governor with their knobs, plus the model it was made for
(a policy tuned for one model's geometry means nothing for another, so loading it for another model is
an error). The JSON is strict: unknown keys and values of the wrong type are errors naming the key.

Usage:
    cfg = PolicyConfig(model="phi-3.5-moe", governor=GovernorConfig(kind="static", k=3))
    save_policy(cfg, "p.json"); cfg = load_policy("p.json", model="phi-3.5-moe")
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moespeq.errors import UserError

POLICY_VERSION = 1
EVICTIONS = ("lru", "lfu", "lfru", "lookahead", "belady")
POOLS = ("layer", "global")
TIE_BREAKS = ("recency-freq", "freq-recency")
PREFETCHERS = ("none", "gate", "eam", "elb", "perfect")
GOVERNORS = ("off", "static", "roofline")


def _choice(owner: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{owner}.{name}={value!r}: use one of {', '.join(allowed)}")


def _in_range(owner: str, name: str, value: float, lo: float, hi: float) -> None:
    if not lo <= value <= hi:
        raise ValueError(f"{owner}.{name}={value} must be in [{lo}, {hi}]")


@dataclass(frozen=True)
class CacheConfig:
    """Which expert to evict, and whether slots are per layer or one pool for all layers."""

    eviction: str = "lru"
    pool: str = "layer"
    layer_split: float = 0.0  # per-layer pool only: > 0 gives early layers more slots, < 0 late layers
    decay: float = 0.9  # per-access decay of LFRU / lookahead frequency counts (1 = plain LFU counts)
    tie_break: str = "recency-freq"  # lookahead/belady, unpredicted experts: age (LRU) or frequency first

    def __post_init__(self) -> None:
        _choice("CacheConfig", "eviction", self.eviction, EVICTIONS)
        _choice("CacheConfig", "pool", self.pool, POOLS)
        _choice("CacheConfig", "tie_break", self.tie_break, TIE_BREAKS)
        _in_range("CacheConfig", "layer_split", self.layer_split, -1.0, 1.0)
        _in_range("CacheConfig", "decay", self.decay, 0.0, 1.0)


@dataclass(frozen=True)
class PrefetchConfig:
    """What to fetch ahead of need: nothing, gate prediction, activation matching, the ELB, or the truth."""

    kind: str = "none"
    phase2_aggressiveness: float = 1.0  # elb: scales the Phase II time budget (0 = no Phase II)
    gate_accuracy: float = 0.847  # gate: P(a predicted next-layer expert is right); ProMoE's 84.7 % (paper §2.5)
    eam_window: int = 16  # eam: decoded tokens per stored activation matrix
    eam_width: int = 0  # eam: experts predicted per layer (0 = the model's top-k)
    eam_depth: int = 0  # eam: layers ahead to prefetch (0 = all remaining layers)

    def __post_init__(self) -> None:
        _choice("PrefetchConfig", "kind", self.kind, PREFETCHERS)
        _in_range("PrefetchConfig", "phase2_aggressiveness", self.phase2_aggressiveness, 0.0, 100.0)
        _in_range("PrefetchConfig", "gate_accuracy", self.gate_accuracy, 0.0, 1.0)
        for name in ("eam_window", "eam_width", "eam_depth"):
            if getattr(self, name) < 0:
                raise ValueError(f"PrefetchConfig.{name}={getattr(self, name)} must be >= 0")
        if self.eam_window < 1:
            raise ValueError(f"PrefetchConfig.eam_window={self.eam_window} must be at least 1 token")


@dataclass(frozen=True)
class GovernorConfig:
    """How the draft length k is chosen each cycle (k = 0: no speculation)."""

    kind: str = "off"
    k: int = 4  # static: the fixed draft length
    k_min: int = 0  # roofline: smallest candidate (0 lets it switch speculation off)
    k_max: int = 8  # roofline: largest candidate (k_SLO of the paper)
    ema: float = 0.1  # roofline: EMA factor of per-position acceptance and of new-expert counts
    warmup: int = 4  # roofline: cycles at k_max that measure acceptance before the EMA takes over
    prior_acceptance: float = 0.8  # roofline: per-position acceptance assumed before any measurement
    prior_weight: float = 2.0  # roofline: the prior counts as this many observations of each position
    probe_interval: int = 16  # roofline: after this many cycles at k = 0, one cycle at k = 1 re-measures p_1

    def __post_init__(self) -> None:
        _choice("GovernorConfig", "kind", self.kind, GOVERNORS)
        for name in ("k", "k_min", "k_max", "warmup", "probe_interval"):
            if getattr(self, name) < 0:
                raise ValueError(f"GovernorConfig.{name}={getattr(self, name)} must be >= 0")
        if self.k_min > self.k_max:
            raise ValueError(f"GovernorConfig.k_min={self.k_min} exceeds k_max={self.k_max}")
        _in_range("GovernorConfig", "ema", self.ema, 1e-6, 1.0)
        _in_range("GovernorConfig", "prior_acceptance", self.prior_acceptance, 0.0, 1.0)
        _in_range("GovernorConfig", "prior_weight", self.prior_weight, 0.0, 1e6)


@dataclass(frozen=True)
class PolicyConfig:
    """One system's decision logic, for one model; `provenance` says how it was obtained (search inputs)."""

    model: str
    system: str = "speq"
    cache: CacheConfig = CacheConfig()
    prefetch: PrefetchConfig = PrefetchConfig()
    governor: GovernorConfig = GovernorConfig()
    provenance: dict[str, Any] = field(default_factory=dict)
    version: int = POLICY_VERSION

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError("PolicyConfig.model must name the model the policy was made for")
        if self.version != POLICY_VERSION:
            raise ValueError(f"PolicyConfig.version={self.version}: this moespeq reads version {POLICY_VERSION}")
        if self.prefetch.kind == "elb" and self.governor.kind == "off":
            raise ValueError("PolicyConfig: the elb prefetcher needs a draft; use governor kind static or roofline")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **sections: Any) -> PolicyConfig:
        """A copy with whole sections or section fields replaced: replace(governor={"k": 3})."""
        values: dict[str, Any] = {}
        for name, value in sections.items():
            current = getattr(self, name)
            is_section = isinstance(value, dict) and name in ("cache", "prefetch", "governor")
            values[name] = dataclasses.replace(current, **value) if is_section else value
        return dataclasses.replace(self, **values)

    def check_model(self, model: str, where: str = "policy") -> None:
        if model != self.model:
            raise UserError(f"{where} was made for model {self.model!r}, not {model!r}: "
                            f"run `moespeq search` on a {model} trace to get a policy for it")


# ---- strict JSON ------------------------------------------------------------------------------------

def _typed(cls: type, data: Any, where: str) -> Any:
    """cls(**data) with every key known and every value of its annotated type (recursing into sections)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown keys {unknown}; valid keys are {sorted(known)}")
    values = {}
    for key, value in data.items():
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _typed(hint, value, f"{where}.{key}")  # type: ignore[arg-type]
            continue
        base = typing.get_origin(hint) or hint
        ok = (isinstance(value, (int, float)) and not isinstance(value, bool)) if base is float else \
            (isinstance(value, int) and not isinstance(value, bool)) if base is int else isinstance(value, base)
        if not ok:
            raise UserError(f"{where}.{key}={value!r}: expected {getattr(base, '__name__', base)}")
        values[key] = float(value) if base is float else value
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise UserError(f"{where}: {exc}") from None


def policy_from_dict(data: Any, where: str = "policy") -> PolicyConfig:
    policy: PolicyConfig = _typed(PolicyConfig, data, where)
    return policy


def load_policy(path: str | Path, model: str | None = None) -> PolicyConfig:
    """Read a policy file; UserError if it is malformed or (when `model` is given) made for another model."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such policy file; write one with `moespeq search --out {path}`") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: not a JSON policy file ({exc})") from None
    policy = policy_from_dict(data, str(path))
    if model is not None:
        policy.check_model(model, f"policy file {path}")
    return policy


def save_policy(policy: PolicyConfig, path: str | Path) -> None:
    Path(path).write_text(json.dumps(policy.to_dict(), indent=2, sort_keys=True) + "\n")
