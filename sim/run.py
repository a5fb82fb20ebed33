"""Simulate one system on one trace: lay out memory, build the policies, run SimPy, summarize.

Usage:
    result = simulate(read_trace(demo_trace_path()), SimConfig(system="speq", budget_bytes=36 * 2**30,
                                                                hardware=get_hardware("a100-40g-pcie4")))
    result.metrics["tpot_ms"]
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import simpy

from moespeq.budget import BudgetConfig, MemoryLayout, plan_memory
from moespeq.errors import UserError
from moespeq.events import ListRecorder, NullRecorder, Recorder, write_chrome_trace
from moespeq.hardware import HardwareProfile
from moespeq.policy import FutureUses, PolicyConfig, build_policies
from moespeq.spec import PRESETS
from moespeq.trace import LookaheadTrace

from .costs import CostModel
from .cycle import Decoder, static_schedule
from .machine import Machine
from .metrics import TOKEN_COLUMNS, RunStats, summary
from .systems import SystemSpec, get_system

log = logging.getLogger(__name__)

GEOMETRY = ("layers", "experts", "top_k", "hidden", "moe_ffn", "first_dense", "moe_layers")


@dataclass(frozen=True)
class SimConfig:
    """One simulation: a system under a budget on a machine, with its policy (None: the system's default)."""

    system: str
    budget_bytes: int
    hardware: HardwareProfile
    policy: PolicyConfig | None = None
    seed: int = 0
    context: int = BudgetConfig.context  # tokens of KV cache the budget reserves
    pinned: bool = True  # experts in pinned host memory (else pageable copies)
    warm_start: bool = False  # start with the cache filled in layer order (tests of the compute bound)
    record: bool = False  # keep the event timeline

    def __post_init__(self) -> None:
        get_system(self.system)
        if self.budget_bytes <= 0:
            raise ValueError(f"SimConfig.budget_bytes={self.budget_bytes} must be positive")


@dataclass
class SimResult:
    system: str
    metrics: dict[str, Any]
    policy: PolicyConfig
    layout: MemoryLayout
    routing_source: str
    stats: RunStats
    recorder: Recorder = field(default_factory=NullRecorder)
    counters: dict[str, int] = field(default_factory=dict)  # whole-run cache counters
    h2d_bytes: int = 0  # whole run
    expert_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The system's entry in `moespeq simulate --json` (and in `moespeq report`'s systems.json)."""
        return {**self.metrics, "routing_source": self.routing_source, "policy": self.policy.to_dict()}


def check_trace(trace: LookaheadTrace) -> None:
    """UserError when a trace names a preset model but carries another geometry."""
    spec = trace.meta.model
    preset = PRESETS.get(spec.name)
    if preset is None:
        return
    diff = [g for g in GEOMETRY if getattr(spec, g) != getattr(preset, g)]
    if diff:
        got = ", ".join(f"{g}={getattr(spec, g)} (preset {getattr(preset, g)})" for g in diff)
        raise UserError(f"trace says model {spec.name!r} but its geometry disagrees with that model: {got}; "
                        "re-collect the trace or give its model another name")


def with_lookahead(trace: LookaheadTrace, seed: int) -> LookaheadTrace:
    """The trace itself, or for target-only traces draft/verify routing synthesized at the paper's fidelity."""
    if trace.meta.lookahead:
        return trace
    from moespeq.traces.synth import add_lookahead

    log.warning("trace has no draft routing (%s): synthesizing it (draft fidelity 0.909, acceptance 0.9)",
                trace.meta.routing_source)
    return add_lookahead(trace, k_max=8, seed=seed)


def layout_for(trace: LookaheadTrace, system: SystemSpec, budget_bytes: int, context: int,
               rule_system: str | None = None) -> MemoryLayout:
    layout = plan_memory(BudgetConfig(model=trace.meta.model, budget_bytes=budget_bytes,
                                      system=rule_system or system.name, context=context))
    layers = trace.meta.model.moe_layers
    if system.cache.pool == "layer" and layout.cache_slots_total < layers:
        raise UserError(f"budget gives {system.name} {layout.cache_slots_total} cache slots, but its per-layer "
                        f"cache needs at least one per layer ({layers}); raise --budget")
    return layout


def _run_once(trace: LookaheadTrace, cfg: SimConfig, system: SystemSpec, policy: PolicyConfig,
              layout: MemoryLayout) -> SimResult:
    spec = trace.meta.model
    costs = CostModel(spec, cfg.hardware)
    copy_s = cfg.hardware.h2d_time_s(spec.expert_bytes_bf16, cfg.pinned)
    mean_context = int(np.mean([s.n_prompt + s.n_tokens / 2 for s in trace.sequences]))
    perf = costs.perf_model(mean_context, max(policy.governor.k_max, trace.meta.k_max, 1), copy_s)
    future = None
    if policy.cache.eviction == "belady" or policy.prefetch.kind == "perfect":
        k = policy.governor.k if policy.governor.kind == "static" else 0
        future = FutureUses(static_schedule(trace, k))
    p = build_policies(policy, spec.moe_layers, spec.experts, spec.top_k, layout.cache_slots_total, perf, future)
    if cfg.warm_start:
        p.cache.preload(range(spec.moe_layers * spec.experts))
    env = simpy.Environment()
    recorder: Recorder = ListRecorder() if cfg.record else NullRecorder()
    machine = Machine(env, cfg.hardware, p.cache, spec.expert_bytes_bf16, recorder, cfg.pinned)
    stats = RunStats()
    env.process(Decoder(env, machine, p, costs, trace, system, np.random.default_rng(cfg.seed), stats, recorder).run())
    env.run()
    return SimResult(system.name, summary(stats, layout.to_dict()), policy, layout, trace.meta.routing_source, stats,
                     recorder, p.cache.counters.as_dict(), machine.h2d_bytes, spec.expert_bytes_bf16)


def simulate(trace: LookaheadTrace, cfg: SimConfig) -> SimResult:
    """Run cfg.system on the trace; the oracle runs every static k and keeps the fastest."""
    check_trace(trace)
    system = get_system(cfg.system)
    policy = cfg.policy or system.policy(trace.meta.model.name)
    policy.check_model(trace.meta.model.name)
    if system.speculative or system.k_sweep:
        trace = with_lookahead(trace, cfg.seed)
    layout = layout_for(trace, system, cfg.budget_bytes, cfg.context)
    if not system.k_sweep:
        return _run_once(trace, cfg, system, policy, layout)
    best, sweep = None, []
    for k in range(trace.meta.k_max + 1):
        # without a draft (k = 0) the oracle needs no draft memory: it gets the same-memory layout
        lay = layout if k else layout_for(trace, system, cfg.budget_bytes, cfg.context, rule_system="lru-sm")
        result = _run_once(trace, cfg, system, policy.replace(governor={"kind": "static", "k": k}), lay)
        sweep.append({"k": k, "cache_slots": lay.cache_slots_total, "tpot_ms": result.metrics["tpot_ms"]})
        if best is None or result.metrics["tpot_ms"] < best.metrics["tpot_ms"]:
            best = result
    assert best is not None
    # every k's bound, kept: whether any speculative policy could beat one without a draft at this memory
    best.metrics["k_sweep"] = sweep
    return best


def resolve_policy(system: str, policy: PolicyConfig | None) -> PolicyConfig | None:
    """The policy a system runs with, given a --policy-file (which configures only the system it names)."""
    return policy if policy is not None and policy.system == system else None


def write_per_token(results: list[SimResult], path: str | Path) -> None:
    """One row per generated token and system: sequence, token index, cycle, k, accepted, emission time."""
    import pandas as pd

    frames = []
    for r in results:
        frame = pd.DataFrame(r.stats.token_rows, columns=list(TOKEN_COLUMNS))
        frame.insert(0, "system", r.system)
        frame["latency_ms"] = frame.groupby("seq")["t_emit_s"].diff().fillna(0.0) * 1e3
        frames.append(frame)
    pd.concat(frames, ignore_index=True).to_parquet(path, index=False)


def write_timeline(results: list[SimResult], path: str | Path) -> None:
    recorders = {r.system: r.recorder for r in results if isinstance(r.recorder, ListRecorder)}
    write_chrome_trace(recorders, path)

