"""Plot helpers: each takes an Axes and already-computed data, labels it with units, returns the artists.

They never compute results themselves (STYLE rule 14); `moespeq.analysis.figures` loads saved data and
calls them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.axes import Axes


def expert_load_heatmap(ax: Axes, counts: np.ndarray) -> object:
    """counts [L, E]: activations per layer and expert (paper Fig. 5a)."""
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    image = ax.imshow(share, aspect="auto", cmap="viridis", interpolation="nearest")
    ax.set_xlabel("expert")
    ax.set_ylabel("MoE layer")
    ax.figure.colorbar(image, ax=ax, label="share of the layer's activations")
    return image


def entropy_bars(ax: Axes, entropy_bits: Sequence[float], max_bits: float) -> list:
    """Per-layer activation entropy against the uniform maximum (paper Fig. 5b)."""
    layers = np.arange(len(entropy_bits))
    bars = ax.bar(layers, entropy_bits, color="tab:blue", label="measured")
    line = ax.axhline(max_bits, color="k", linestyle="--", label=f"uniform ({max_bits:.2f} bits)")
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("activation entropy (bits)")
    ax.legend(loc="lower right")
    return [bars, line]


def agreement_bars(ax: Axes, hard: Sequence[float], soft: Sequence[float], miss: Sequence[float]) -> list:
    """Stacked per-layer draft-vs-target top-k agreement (paper Fig. 6)."""
    layers = np.arange(len(hard))
    hard, soft, miss = (np.asarray(v) * 100 for v in (hard, soft, miss))
    artists = [ax.bar(layers, hard, color="tab:green", label="hard (same set, same order)"),
               ax.bar(layers, soft, bottom=hard, color="tab:olive", label="soft (same set, other order)"),
               ax.bar(layers, miss, bottom=hard + soft, color="tab:red", label="miss")]
    ax.set_xlabel("MoE layer")
    ax.set_ylabel("share of draft forwards (%)")
    ax.set_ylim(0, 100)
    ax.legend(loc="lower right", fontsize="small")
    return artists


def acceptance_curve(ax: Axes, acceptance: Sequence[float]) -> list:
    """P(draft token j accepted | 1..j-1 accepted) and the expected accepted length for each k."""
    positions = np.arange(1, len(acceptance) + 1)
    expected = np.cumsum(np.cumprod(acceptance))
    artists = ax.plot(positions, acceptance, "o-", label="P(accept j | accepted before)")
    ax.set_xlabel("draft position j")
    ax.set_ylabel("acceptance probability")
    ax.set_ylim(0, 1.02)
    twin = ax.twinx()
    artists += twin.plot(positions, expected, "s--", color="tab:orange", label="expected accepted tokens for k = j")
    twin.set_ylabel("expected accepted tokens per cycle")
    ax.legend(handles=artists, loc="center right", fontsize="small")
    return artists


MEMORY_PARTS = (("nonexpert_bytes", "non-expert weights"), ("shared_bytes", "shared experts"), ("kv_bytes", "KV cache"),
                ("workspace_bytes", "workspace"), ("draft_bytes", "INT4 draft experts"), ("cache_bytes", "expert cache"))


def memory_stack(ax: Axes, layouts: Mapping[str, Mapping[str, float]]) -> list:
    """One stacked bar per system: GPU bytes by component (paper Table 2), in GiB."""
    names = list(layouts)
    bottom = np.zeros(len(names))
    artists = []
    for key, label in MEMORY_PARTS:
        values = np.array([layouts[n][key] for n in names]) / 2**30
        artists.append(ax.bar(names, values, bottom=bottom, label=label))
        bottom += values
    ax.set_ylabel("GPU memory (GiB)")
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize="small")
    return artists


def system_bars(ax: Axes, names: Sequence[str], values: Sequence[float], label: str, log: bool = False) -> object:
    """One horizontal bar per system, its value written beside it (paper Fig. 13's TPOT per system)."""
    bars = ax.barh(names, values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.3g}" for v in values], padding=2, fontsize="small")
    ax.invert_yaxis()  # first system on top, in the order given
    ax.set_xlabel(label)
    if log:
        ax.set_xscale("log")
    return bars


def roofline_plot(ax: Axes, points: Sequence[Mapping[str, float]]) -> list:
    """Amortization Roofline (paper Fig. 8), log-log: each k at (I_amort, Theta), model and simulated.

    The I/O roof is I_amort x B_PCIe; each k has its own compute roof (I/O fully hidden), drawn as a
    short bar at that k's intensity.
    """
    intensity = np.array([p["i_amort_tok_per_gb"] for p in points])
    bandwidth_gb_s = points[0]["io_roof_tok_s"] / points[0]["i_amort_tok_per_gb"]
    span = np.geomspace(intensity.min() / 4, intensity.max() * 4, 50)
    artists = ax.loglog(span, span * bandwidth_gb_s, "k--", label=f"I/O roof ({bandwidth_gb_s:.3g} GB/s)")
    artists += ax.plot(intensity, [p["compute_roof_tok_s"] for p in points], "_", color="tab:red", markersize=14,
                       label="compute roof of each k")
    artists += ax.plot(intensity, [p["theta_tok_s"] for p in points], "o", color="tab:blue", label="model Θ(k)")
    artists += ax.plot(intensity, [p["simulated_tok_s"] for p in points], "x", color="tab:orange",
                       label="simulated, static k")
    for p in points:
        ax.annotate(f"{p['k']}", (p["i_amort_tok_per_gb"], p["theta_tok_s"]), textcoords="offset points",
                    xytext=(0, 6 if p["k"] % 2 else -12), fontsize="x-small", ha="center")
    ax.set_xlabel("amortization intensity I_amort (tokens per GB moved over PCIe); numbers: draft length k")
    ax.set_ylabel("throughput (tokens/s)")
    ax.legend(fontsize="small", loc="upper left")
    return artists
