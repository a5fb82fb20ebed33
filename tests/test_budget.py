import json

import pytest

from moespeq.budget import MEMORY_RULES, BudgetConfig, plan_memory
from moespeq.cli import main
from moespeq.errors import UserError
from moespeq.spec import get_model
from moespeq.units import parse_bytes

GIB = 2**30


def layout(system, budget=40 * GIB, model="phi-3.5-moe", context=4096):
    return plan_memory(BudgetConfig(model=get_model(model), budget_bytes=budget, system=system, context=context))


@pytest.mark.parametrize("text, expected", [("40GiB", 40 * GIB), ("40GB", 40 * 10**9), ("4e10", 4 * 10**10),
                                            ("512 MiB", 512 * 2**20), ("1.5GiB", int(1.5 * GIB)), ("1000", 1000)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["forty", "40XB", "-1GB", "0"])
def test_parse_bytes_rejects(text):
    with pytest.raises(UserError):
        parse_bytes(text)


@pytest.mark.parametrize("system", sorted(MEMORY_RULES))
def test_every_layout_fits_its_budget(system):
    lay = layout(system)
    parts = lay.nonexpert_bytes + lay.shared_bytes + lay.kv_bytes + lay.workspace_bytes + lay.draft_bytes + lay.cache_bytes
    assert parts == lay.used_bytes <= lay.budget_bytes
    assert lay.cache_slots_per_layer == lay.cache_slots_total // get_model("phi-3.5-moe").moe_layers


def test_same_cache_and_same_memory_rules():
    spec = get_model("deepseek-v2-lite")
    speq, sc, sm = (layout(s, 24 * GIB, "deepseek-v2-lite") for s in ("speq", "lru-sc", "lru-sm"))
    assert sc.cache_slots_total == speq.cache_slots_total and sc.draft_bytes == 0
    assert speq.draft_bytes == spec.moe_layers * spec.experts * spec.expert_bytes_int4()
    # SM: the draft's bytes become cache slots (up to the rounding of two floors).
    extra = sm.cache_slots_total - speq.cache_slots_total
    assert abs(extra - speq.draft_bytes / spec.expert_bytes_bf16) <= 1
    assert sm.used_bytes <= sm.budget_bytes and sc.used_bytes < speq.used_bytes


def test_staging_systems_do_not_cache():
    spec = get_model("phi-3.5-moe")
    assert layout("ondemand").cache_slots_total == spec.top_k
    assert layout("hf-offload").cache_slots_total == spec.experts


def test_kv_cache_scales_with_context():
    assert layout("speq", context=8192).kv_bytes == 2 * layout("speq", context=4096).kv_bytes


def test_budget_below_minimum_names_the_minimum():
    minimum = layout("speq").min_budget_bytes
    with pytest.raises(UserError, match=f"{minimum} bytes"):
        layout("speq", budget=minimum - 1)
    assert layout("speq", budget=minimum).cache_slots_total == get_model("phi-3.5-moe").top_k


def test_budget_cli_json(capsys):
    assert main(["budget", "--model", "qwen1.5-moe-a2.7b", "--budget", "24GiB", "--system", "lru-sm", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("cache_slots_total", "cache_slots_per_layer", "cache_bytes", "draft_bytes", "kv_bytes", "nonexpert_bytes"):
        assert isinstance(data[key], int)
    assert data["draft_bytes"] == 0


def test_budget_cli_too_small_is_one_line_exit_1(capsys):
    assert main(["budget", "--model", "phi-3.5-moe", "--budget", "8GiB", "--system", "speq"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "at least" in err


def test_budget_cli_unknown_system(capsys):
    assert main(["budget", "--model", "phi-3.5-moe", "--budget", "40GiB", "--system", "vllm"]) == 1
    assert "lru-sm" in capsys.readouterr().err
