import json

import pytest

from moespeq.cli import main
from moespeq.errors import UserError
from moespeq.hardware import HARDWARE_PRESETS, get_hardware, load_hardware, save_hardware

MIB = 2**20


def test_h200_profile_holds_the_measured_points():
    hw = get_hardware("h200-pcie5")
    assert hw.h2d_gbps(MIB) == pytest.approx(38.6)
    assert hw.h2d_gbps(16 * MIB) == pytest.approx(53.4)
    assert hw.h2d_gbps(256 * MIB) == pytest.approx(55.0)
    assert 8.4 <= hw.h2d_gbps(64 * MIB, pinned=False) <= 12.9
    assert hw.hbm_gbps == 4300 and hw.bf16_tflops == 790


@pytest.mark.parametrize("name", sorted(HARDWARE_PRESETS))
def test_copy_time_grows_with_size_and_slows_during_d2h(name):
    hw = get_hardware(name)
    sizes = [2**k for k in range(12, 32)]
    times = [hw.h2d_time_s(s) for s in sizes]
    assert all(a < b for a, b in zip(times, times[1:], strict=False))
    assert hw.h2d_time_s(64 * MIB, during_d2h=True) >= hw.h2d_time_s(64 * MIB)
    assert hw.h2d_time_s(64 * MIB, pinned=False) > hw.h2d_time_s(64 * MIB)
    assert hw.source


def test_json_round_trip(tmp_path):
    hw = get_hardware("a100-40g-pcie4")
    save_hardware(hw, tmp_path / "hw.json")
    assert load_hardware(tmp_path / "hw.json") == hw
    assert get_hardware(str(tmp_path / "hw.json")) == hw


def test_bad_profiles_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown hardware"):
        get_hardware("h100")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="not a JSON"):
        load_hardware(bad)
    data = get_hardware("a100-40g-pcie4").to_dict()
    data["pcie_lanes"] = 16
    bad.write_text(json.dumps(data))
    with pytest.raises(UserError, match="pcie_lanes"):
        load_hardware(bad)


def test_hardware_cli(capsys):
    assert main(["hardware", "--json"]) == 0
    assert [p["name"] for p in json.loads(capsys.readouterr().out)] == list(HARDWARE_PRESETS)
