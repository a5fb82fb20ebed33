"""The figures: each a function of saved data files, drawn with the helpers in `plots`.

FIGURES maps a file name to the data files it reads and the function that draws it; `moespeq figures`
draws every figure whose inputs exist and writes paper_figs/README.md naming each figure's inputs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from moespeq.analysis import plots
from moespeq.analysis.report import MEMORY_FILE, ROOFLINE_FILE, ROUTING_FILE, SYSTEMS_FILE


def _expert_load(fig: Any, data: dict[str, Any]) -> str:
    routing = data[ROUTING_FILE]
    ax_map, ax_entropy = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    plots.expert_load_heatmap(ax_map, np.array(routing["expert_counts"]))
    layers = routing["summary"]["layers"]
    plots.entropy_bars(ax_entropy, [r["entropy_bits"] for r in layers], layers[0]["max_entropy_bits"])
    return f"Expert activation by layer and its entropy ({routing['summary']['model']}; paper Fig. 5)"


def _agreement(fig: Any, data: dict[str, Any]) -> str:
    layers = data[ROUTING_FILE]["summary"]["layers"]
    plots.agreement_bars(fig.subplots(), *([r[k] for r in layers] for k in ("hard", "soft", "miss")))
    return "INT4 draft vs target top-k agreement per layer (paper Fig. 6)"


def _acceptance(fig: Any, data: dict[str, Any]) -> str:
    plots.acceptance_curve(fig.subplots(), data[ROUTING_FILE]["summary"]["acceptance_by_position"])
    return "Draft acceptance by position and expected accepted tokens per cycle"


def _memory(fig: Any, data: dict[str, Any]) -> str:
    memory = data[MEMORY_FILE]
    plots.memory_stack(fig.subplots(), memory["layouts"])
    return f"GPU memory by component at {memory['budget_bytes'] / 2**30:.0f} GiB for {memory['model']} (paper Table 2)"


def _setting(data: dict[str, Any]) -> str:
    return f"{data['hardware']}, {data['budget_bytes'] / 2**30:.0f} GiB"


def _systems(fig: Any, data: dict[str, Any]) -> str:
    sims = data[SYSTEMS_FILE]
    names = list(sims["systems"])
    ax_tpot, ax_hit = fig.subplots(1, 2)
    plots.system_bars(ax_tpot, names, [sims["systems"][n]["tpot_ms"] for n in names], "TPOT (ms per token, log)",
                      log=True)
    plots.system_bars(ax_hit, names, [100 * sims["systems"][n]["hit_rate"] for n in names],
                      "per-step expert cache hit rate (%)")
    return f"Simulated decoding per system ({_setting(sims)}; paper Fig. 13, Table 3)"


def _roofline(fig: Any, data: dict[str, Any]) -> str:
    roof = data[ROOFLINE_FILE]
    plots.roofline_plot(fig.subplots(), roof["points"])
    return f"Amortization Roofline of draft lengths k ({_setting(roof)}; paper Fig. 8)"


FIGURES: dict[str, tuple[tuple[str, ...], Callable[[Any, dict[str, Any]], str]]] = {
    "expert_load.png": ((ROUTING_FILE,), _expert_load),
    "draft_agreement.png": ((ROUTING_FILE,), _agreement),
    "acceptance.png": ((ROUTING_FILE,), _acceptance),
    "memory.png": ((MEMORY_FILE,), _memory),
    "systems.png": ((SYSTEMS_FILE,), _systems),
    "roofline.png": ((ROOFLINE_FILE,), _roofline),
}


def make_figures(results_dir: Path, out_dir: Path) -> list[tuple[str, str, tuple[str, ...]]]:
    """Draw every figure whose inputs exist; returns (file, caption, inputs) for each one drawn."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    out_dir.mkdir(parents=True, exist_ok=True)
    cache: dict[str, Any] = {}
    drawn = []
    for name, (inputs, draw) in FIGURES.items():
        if not all((results_dir / i).is_file() for i in inputs):
            continue
        for i in inputs:
            cache.setdefault(i, json.loads((results_dir / i).read_text()))
        fig = Figure(figsize=(10, 4.5), layout="constrained")
        caption = draw(fig, cache)
        fig.suptitle(caption, fontsize="medium")
        fig.savefig(out_dir / name, dpi=110)
        drawn.append((name, caption, inputs))
    return drawn
