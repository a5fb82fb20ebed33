"""PolicyConfig: strict JSON, round trip, and the model it was made for."""

import json

import pytest

from moespeq.errors import UserError
from moespeq.policy import build_policies
from moespeq.policy.config import GovernorConfig, PolicyConfig, load_policy, save_policy


def test_round_trip(tmp_path):
    cfg = PolicyConfig(model="phi-3.5-moe", governor=GovernorConfig(kind="roofline", ema=0.3),
                       provenance={"searched": True})
    save_policy(cfg, tmp_path / "p.json")
    assert load_policy(tmp_path / "p.json", model="phi-3.5-moe") == cfg


@pytest.mark.parametrize("patch,needle", [
    ({"colour": 1}, "unknown keys ['colour']"),
    ({"governor": {"kind": "roofline", "ema": "fast"}}, "governor.ema='fast': expected float"),
    ({"governor": {"k": 2.5}}, "governor.k=2.5: expected int"),
    ({"governor": {"k": True}}, "governor.k=True: expected int"),
    ({"cache": {"eviction": "fifo"}}, "CacheConfig.eviction='fifo'"),
    ({"cache": {"size": 3}}, "unknown keys ['size']"),
])
def test_bad_files_are_one_line_errors(tmp_path, patch, needle):
    data = {**PolicyConfig(model="phi-3.5-moe").to_dict(), **patch}
    (tmp_path / "p.json").write_text(json.dumps(data))
    with pytest.raises(UserError) as err:
        load_policy(tmp_path / "p.json")
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_policy_for_another_model_is_rejected(tmp_path):
    save_policy(PolicyConfig(model="mixtral-8x7b"), tmp_path / "p.json")
    with pytest.raises(UserError, match="made for model 'mixtral-8x7b', not 'phi-3.5-moe'"):
        load_policy(tmp_path / "p.json", model="phi-3.5-moe")


def test_replace_sections_and_build():
    cfg = PolicyConfig(model="m").replace(cache={"eviction": "lfru", "pool": "global"}, governor={"kind": "static"})
    p = build_policies(cfg, layers=4, experts=8, top_k=2, slots=10)
    assert p.cache.capacity == [10] and p.cache.eviction.name == "lfru" and p.governor.name == "static"
    layered = build_policies(PolicyConfig(model="m"), layers=4, experts=8, top_k=2, slots=10)
    assert layered.cache.capacity == [3, 3, 2, 2]


def test_elb_prefetch_needs_a_draft():
    with pytest.raises(ValueError, match="needs a draft"):
        PolicyConfig(model="m").replace(prefetch={"kind": "elb"})
