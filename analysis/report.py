"""Computing the data behind the figures and tables, once, into JSON files that figures only read.

Usage:
    write_report(ReportConfig(trace=demo_trace_path(), hardware=get_hardware("a100-40g-pcie4"),
                              budget_bytes=36 * 2**30), Path("results"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moespeq.budget import MEMORY_RULES, BudgetConfig, plan_memory
from moespeq.errors import UserError
from moespeq.hardware import HardwareProfile
from moespeq.provenance import provenance
from moespeq.trace import read_trace
from moespeq.trace_stats import expert_counts, summarize

ROUTING_FILE = "routing.json"
MEMORY_FILE = "memory.json"
SYSTEMS_FILE = "systems.json"
ROOFLINE_FILE = "roofline.json"


@dataclass(frozen=True)
class ReportConfig:
    trace: Path
    hardware: HardwareProfile
    budget_bytes: int
    context: int = BudgetConfig.context  # tokens of KV cache the layouts reserve
    seed: int = 0


def routing_data(cfg: ReportConfig) -> dict[str, Any]:
    trace = read_trace(cfg.trace)
    return {"trace": str(cfg.trace), "summary": summarize(trace), "expert_counts": expert_counts(trace).tolist()}


def memory_data(cfg: ReportConfig) -> dict[str, Any]:
    """The layout of every system that fits the budget, for the trace's model."""
    model = read_trace(cfg.trace).meta.model
    layouts, skipped = {}, {}
    for system in MEMORY_RULES:
        try:
            layouts[system] = plan_memory(BudgetConfig(model=model, budget_bytes=cfg.budget_bytes, system=system,
                                                       context=cfg.context)).to_dict()
        except UserError as exc:
            skipped[system] = str(exc)
    return {"model": model.name, "budget_bytes": cfg.budget_bytes, "context": cfg.context, "layouts": layouts,
            "skipped": skipped}


def systems_data(cfg: ReportConfig) -> dict[str, Any]:
    """Every system simulated on the trace: the metrics of `moespeq simulate --json`."""
    from moespeq.sim.run import SimConfig, simulate
    from moespeq.sim.systems import SYSTEMS

    trace = read_trace(cfg.trace)
    systems = {name: simulate(trace, SimConfig(system=name, budget_bytes=cfg.budget_bytes, hardware=cfg.hardware,
                                               context=cfg.context, seed=cfg.seed)).to_dict() for name in SYSTEMS}
    return {"trace": str(cfg.trace), "hardware": cfg.hardware.name, "budget_bytes": cfg.budget_bytes,
            "systems": systems}


def roofline_data(cfg: ReportConfig) -> dict[str, Any]:
    """The Amortization Roofline operating points of `moespeq roofline --json`."""
    from moespeq.sim.roofline import roofline_points

    points = roofline_points(read_trace(cfg.trace), cfg.hardware, cfg.budget_bytes, cfg.seed)
    return {"trace": str(cfg.trace), "hardware": cfg.hardware.name, "budget_bytes": cfg.budget_bytes,
            "points": points}


REPORT_FILES = ((ROUTING_FILE, routing_data), (MEMORY_FILE, memory_data), (SYSTEMS_FILE, systems_data),
                (ROOFLINE_FILE, roofline_data))


def write_report(cfg: ReportConfig, out_dir: Path) -> list[Path]:
    """Write every data file into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, compute in REPORT_FILES:
        data = compute(cfg)
        path = out_dir / name
        path.write_text(json.dumps({**data, "provenance": provenance()}, indent=1) + "\n")
        written.append(path)
    return written
