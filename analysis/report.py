"""Computing the data behind the figures and tables, once, into JSON files that figures only read.

Usage:
    write_report(ReportConfig(trace=demo_trace_path()), Path("results"))
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from moespeq.budget import MEMORY_RULES, BudgetConfig, plan_memory
from moespeq.errors import UserError
from moespeq.provenance import provenance
from moespeq.trace import read_trace
from moespeq.trace_stats import expert_counts, summarize

ROUTING_FILE = "routing.json"
MEMORY_FILE = "memory.json"


@dataclass(frozen=True)
class ReportConfig:
    trace: Path
    budget_bytes: int = 40 * 10**9
    context: int = 4096


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


def write_report(cfg: ReportConfig, out_dir: Path) -> list[Path]:
    """Write every data file into out_dir; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in ((ROUTING_FILE, routing_data(cfg)), (MEMORY_FILE, memory_data(cfg))):
        path = out_dir / name
        path.write_text(json.dumps({**data, "provenance": provenance()}, indent=1) + "\n")
        written.append(path)
    return written
