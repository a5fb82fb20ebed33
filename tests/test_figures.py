import json

import pytest

from moespeq.analysis.figures import FIGURES
from moespeq.cli import main
from moespeq.sim.systems import SYSTEMS


def test_report_then_figures(tmp_path, capsys):
    results, figs = tmp_path / "results", tmp_path / "figs"
    assert main(["report", "--out", str(results)]) == 0
    routing = json.loads((results / "routing.json").read_text())
    assert routing["summary"]["model"] == "phi-3.5-moe" and "provenance" in routing
    assert len(routing["expert_counts"]) == 32 and len(routing["expert_counts"][0]) == 16
    memory = json.loads((results / "memory.json").read_text())
    assert set(memory["layouts"]) | set(memory["skipped"]) >= {"speq", "lru-sm", "lru-sc", "hf-offload"}
    systems = json.loads((results / "systems.json").read_text())
    assert list(systems["systems"]) == list(SYSTEMS)
    capsys.readouterr()
    assert main(["simulate", "--systems", "lru-sc", "--json"]) == 0  # the report's numbers are simulate's
    assert json.loads(capsys.readouterr().out)["systems"]["lru-sc"] == systems["systems"]["lru-sc"]
    points = json.loads((results / "roofline.json").read_text())["points"]
    assert [p["k"] for p in points] == list(range(len(points))) and len(points) > 1
    assert main(["figures", "--results", str(results), "--out", str(figs)]) == 0
    for name in FIGURES:
        assert (figs / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    readme = (figs / "README.md").read_text()
    assert all(name in readme for name in FIGURES) and "routing.json" in readme


@pytest.mark.parametrize("args, message", [(["figures", "--results", "nowhere"], "moespeq report"),
                                           (["report", "--budget", "1GB", "--trace", "missing.parquet"], "no such trace")])
def test_figure_commands_bad_input(tmp_path, capsys, args, message):
    assert main(args) == 1
    assert message in capsys.readouterr().err
