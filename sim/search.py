"""Offline policy search: tune speq's governor and scheduler knobs on a trace, machine and budget.

Discrete knobs form a grid (eviction tie-break, cache pool, whether k = 0 is allowed); within each grid
point scipy.optimize.differential_evolution searches the rest (k_max = k_SLO, EMA factor, warm-up,
Phase II aggressiveness, frequency decay, per-layer cache tilt), with integer knobs marked integral.
Evaluations run in worker processes (each loads the trace once) and a progress bar counts them. The
objective is TPOT, or under --slo-ttft-ms TPOT subject to TTFT <= SLO, or under --slo-tpot-ms TTFT
subject to TPOT <= SLO (a violated SLO costs 1e6 plus the violation). Every evaluation is kept, so the
Pareto front of (TPOT, TTFT) comes for free. Simulations are deterministic, so the best policy file
reproduces its TPOT exactly under `moespeq simulate --policy-file`.

Usage:
    result = search(SearchConfig(trace_path="t.parquet", hardware="a100-40g-pcie4", budget_bytes=36 * 2**30))
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import multiprocessing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from moespeq.hardware import get_hardware
from moespeq.policy.config import TIE_BREAKS, PolicyConfig
from moespeq.trace import LookaheadTrace, read_trace

from .systems import get_system

SYSTEM = "speq"
PENALTY = 1e6
GRID: dict[str, tuple[Any, ...]] = {"tie_break": TIE_BREAKS, "pool": ("global", "layer"), "k_min": (0, 1)}
#: continuous knobs: name -> (section, field, low, high, integral)
KNOBS: tuple[tuple[str, str, float, float, bool], ...] = (
    ("governor", "k_max", 1, 8, True),
    ("governor", "ema", 0.02, 0.5, False),
    ("governor", "warmup", 0, 16, True),
    ("prefetch", "phase2_aggressiveness", 0.0, 4.0, False),
    ("cache", "decay", 0.0, 0.99, False),
    ("cache", "layer_split", -1.0, 1.0, False),
)


@dataclass(frozen=True)
class SearchConfig:
    trace_path: str
    hardware: str
    budget_bytes: int
    evals: int = 200
    jobs: int = 1
    seed: int = 0
    slo_tpot_ms: float | None = None
    slo_ttft_ms: float | None = None

    def __post_init__(self) -> None:
        if self.slo_tpot_ms is not None and self.slo_ttft_ms is not None:
            raise ValueError("give --slo-tpot-ms or --slo-ttft-ms, not both")
        if self.evals < 2 * len(list(itertools.product(*GRID.values()))):
            raise ValueError(f"--evals {self.evals}: need at least {2 * len(list(itertools.product(*GRID.values())))} "
                             f"(two per grid point of {', '.join(GRID)})")
        if self.jobs < 1:
            raise ValueError(f"--jobs {self.jobs} must be at least 1")


@dataclass
class Evaluation:
    grid: dict[str, Any]
    knobs: dict[str, float]
    tpot_ms: float
    ttft_ms: float
    objective: float


@dataclass
class SearchResult:
    best: PolicyConfig
    best_eval: Evaluation
    evaluations: list[Evaluation]

    def pareto(self) -> list[Evaluation]:
        """Evaluations no other one beats on both TPOT and TTFT, by TPOT."""
        front: list[Evaluation] = []
        for ev in sorted(self.evaluations, key=lambda e: (e.tpot_ms, e.ttft_ms)):
            if not front or ev.ttft_ms < front[-1].ttft_ms:
                front.append(ev)
        return front


def policy_for(model: str, grid: dict[str, Any], knobs: dict[str, float]) -> PolicyConfig:
    """speq's default policy with the grid point and knob values applied."""
    sections: dict[str, dict[str, Any]] = {"cache": {"tie_break": grid["tie_break"], "pool": grid["pool"]},
                                           "governor": {"k_min": grid["k_min"]}, "prefetch": {}}
    for section, name, _, _, integral in KNOBS:
        value = knobs[name]
        sections[section][name] = int(round(value)) if integral else float(value)
    gov = sections["governor"]
    gov["k_min"] = min(gov["k_min"], gov["k_max"])
    return get_system(SYSTEM).policy(model).replace(**sections)


# ---- worker side: one process-global context, set once per worker --------------------------------------

_CONTEXT: dict[str, Any] = {}


def _init_worker(cfg: SearchConfig, trace: LookaheadTrace | None = None) -> None:
    _CONTEXT.update(cfg=cfg, trace=trace if trace is not None else read_trace(cfg.trace_path),
                    hardware=get_hardware(cfg.hardware))


def _evaluate(task: tuple[dict[str, Any], tuple[float, ...]]) -> tuple[float, float]:
    from .run import SimConfig, simulate  # simpy only where simulations run, not for `moespeq --help`

    grid, vector = task
    cfg, trace = _CONTEXT["cfg"], _CONTEXT["trace"]
    knobs = {name: float(v) for (_, name, *_), v in zip(KNOBS, vector, strict=True)}
    policy = policy_for(trace.meta.model.name, grid, knobs)
    sim = SimConfig(system=SYSTEM, budget_bytes=cfg.budget_bytes, hardware=_CONTEXT["hardware"], policy=policy,
                    seed=cfg.seed)
    m = simulate(trace, sim).metrics
    return m["tpot_ms"], m["ttft_ms"]


def objective(cfg: SearchConfig, tpot_ms: float, ttft_ms: float) -> float:
    if cfg.slo_tpot_ms is not None:
        return ttft_ms + (PENALTY + tpot_ms - cfg.slo_tpot_ms if tpot_ms > cfg.slo_tpot_ms else 0.0)
    if cfg.slo_ttft_ms is not None:
        return tpot_ms + (PENALTY + ttft_ms - cfg.slo_ttft_ms if ttft_ms > cfg.slo_ttft_ms else 0.0)
    return tpot_ms


# ---- driver side ----------------------------------------------------------------------------------------

def _bounds(trace: LookaheadTrace) -> list[tuple[float, float]]:
    k_hi = max(1, trace.meta.k_max)
    return [(lo, min(hi, k_hi) if name == "k_max" else hi) for _, name, lo, hi, _ in KNOBS]


def search(cfg: SearchConfig, progress: Callable[[int], None] | None = None) -> SearchResult:
    """Grid x differential evolution; `progress(n)` is told of every n finished evaluations."""
    from scipy.optimize import differential_evolution

    from .run import check_trace

    trace = read_trace(cfg.trace_path)
    check_trace(trace)
    points = [dict(zip(GRID, values, strict=True)) for values in itertools.product(*GRID.values())]
    budgets = [cfg.evals // len(points) + (i < cfg.evals % len(points)) for i in range(len(points))]
    bounds = _bounds(trace)
    integrality = np.array([integral for *_, integral in KNOBS])
    evaluations: list[Evaluation] = []
    pool = multiprocessing.get_context("fork").Pool(cfg.jobs, _init_worker, (cfg,)) if cfg.jobs > 1 else None
    if pool is None:
        _init_worker(cfg, trace)
    try:
        for i, grid in enumerate(points):
            def run_batch(func: Callable, vectors: Iterable, grid: dict[str, Any] = grid) -> list[float]:
                tasks = [(grid, tuple(float(x) for x in v)) for v in vectors]
                results = pool.map(_evaluate, tasks) if pool is not None else [_evaluate(t) for t in tasks]
                out = []
                for (_, vec), (tpot, ttft) in zip(tasks, results, strict=True):
                    knobs = {name: v for (_, name, *_), v in zip(KNOBS, vec, strict=True)}
                    evaluations.append(Evaluation(grid, knobs, tpot, ttft, objective(cfg, tpot, ttft)))
                    out.append(evaluations[-1].objective)
                if progress is not None:
                    progress(len(tasks))
                return out

            _differential_evolution(differential_evolution, run_batch, bounds, integrality, budgets[i], cfg.seed + i)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    best = min(evaluations, key=lambda e: (e.objective, e.tpot_ms))
    policy = policy_for(trace.meta.model.name, best.grid, best.knobs)
    provenance = {"searched_by": "moespeq search", "trace": cfg.trace_path, "routing_source": trace.meta.routing_source,
                  "hardware": cfg.hardware, "budget_bytes": cfg.budget_bytes, "seed": cfg.seed, "evals": len(evaluations),
                  "slo_tpot_ms": cfg.slo_tpot_ms, "slo_ttft_ms": cfg.slo_ttft_ms,
                  "tpot_ms": best.tpot_ms, "ttft_ms": best.ttft_ms}
    return SearchResult(dataclasses.replace(policy, provenance=provenance), best, evaluations)


def _differential_evolution(de: Callable, run_batch: Callable, bounds: list[tuple[float, float]],
                            integrality: np.ndarray, budget: int, seed: int) -> None:
    """DE with an explicit Latin-hypercube start of m members and as many generations as `budget` allows."""
    from scipy.stats import qmc

    dims = len(bounds)
    # a population that divides the budget (so every evaluation is spent), near a third of it: >= 3 generations
    sizes = [m for m in range(5, min(5 * dims, budget // 2) + 1) if budget % m == 0]
    members = min(sizes, key=lambda m: abs(m - budget / 3)) if sizes else (budget if budget < 10 else budget // 3)
    generations = budget // members - 1
    lo, hi = np.array(bounds, dtype=np.float64).T
    init = qmc.scale(qmc.LatinHypercube(d=dims, seed=seed).random(members), lo, hi)
    init = np.where(integrality, np.round(init), init)
    if members < 5 or generations == 0:  # DE needs five members and a generation: the sample is the search
        run_batch(None, init)
        return
    de(lambda x: math.nan, bounds, init=init, maxiter=generations, popsize=members, seed=seed, polish=False,
       updating="deferred", workers=run_batch, integrality=integrality, tol=0.0, vectorized=False)
