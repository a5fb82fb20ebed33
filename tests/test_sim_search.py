"""Policy search: budget accounting, the objective under SLOs, the Pareto front."""

import pytest

from moespeq.sim.search import PENALTY, Evaluation, SearchConfig, SearchResult, objective, policy_for, search
from moespeq.spec import get_model
from moespeq.trace import write_trace
from moespeq.traces.synth import SynthConfig, synthesize


def test_objective_follows_the_slo():
    free = SearchConfig(trace_path="t", hardware="h", budget_bytes=1)
    assert objective(free, 100.0, 900.0) == 100.0
    ttft = SearchConfig(trace_path="t", hardware="h", budget_bytes=1, slo_ttft_ms=800.0)
    assert objective(ttft, 100.0, 700.0) == 100.0
    assert objective(ttft, 100.0, 900.0) == 100.0 + PENALTY + 100.0
    tpot = SearchConfig(trace_path="t", hardware="h", budget_bytes=1, slo_tpot_ms=50.0)
    assert objective(tpot, 40.0, 900.0) == 900.0
    with pytest.raises(ValueError, match="not both"):
        SearchConfig(trace_path="t", hardware="h", budget_bytes=1, slo_tpot_ms=1.0, slo_ttft_ms=1.0)
    with pytest.raises(ValueError, match="--evals 3"):
        SearchConfig(trace_path="t", hardware="h", budget_bytes=1, evals=3)


def test_pareto_front_keeps_only_undominated_points():
    evs = [Evaluation({}, {}, tpot, ttft, tpot) for tpot, ttft in [(10, 50), (12, 40), (11, 60), (13, 40), (20, 10)]]
    front = SearchResult(None, evs[0], evs).pareto()
    assert [(e.tpot_ms, e.ttft_ms) for e in front] == [(10, 50), (12, 40), (20, 10)]


def test_policy_for_applies_grid_and_rounds_integer_knobs():
    knobs = {"k_max": 3.4, "ema": 0.3, "warmup": 2.6, "phase2_aggressiveness": 1.5, "decay": 0.5, "layer_split": 0.2}
    p = policy_for("phi-3.5-moe", {"tie_break": "recency-freq", "pool": "layer", "k_min": 1}, knobs)
    assert (p.governor.k_max, p.governor.warmup, p.governor.k_min) == (3, 3, 1)
    assert (p.cache.tie_break, p.cache.pool, p.cache.layer_split) == ("recency-freq", "layer", 0.2)
    assert p.prefetch.phase2_aggressiveness == 1.5 and p.system == "speq"


@pytest.mark.parametrize("evals", [16, 21])
def test_search_spends_exactly_its_budget(tmp_path, evals):
    path = tmp_path / "t.parquet"
    write_trace(synthesize(SynthConfig(model=get_model("phi-3.5-moe"), seqs=1, tokens=16, prompt_len=4, k_max=2)), path)
    seen = []
    result = search(SearchConfig(trace_path=str(path), hardware="a100-40g-pcie4", budget_bytes=36 * 2**30,
                                 evals=evals), progress=seen.append)
    assert len(result.evaluations) == sum(seen) == evals
    assert result.best_eval.objective == min(e.objective for e in result.evaluations)
    assert result.best.provenance["tpot_ms"] == result.best_eval.tpot_ms
    assert result.best.governor.k_max <= 2  # bounded by the trace's k_max
