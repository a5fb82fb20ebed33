import json
import subprocess
import sys

from moespeq.cli import COMMANDS, main

HEAVY = ("torch", "cupy", "transformers", "simpy")


def test_import_and_help_load_no_heavy_library():
    code = ("import sys, contextlib, io\n"
            "import moespeq\n"
            "from moespeq.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
            f"print([m for m in {HEAVY!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_the_foundation_verbs(capsys):
    try:
        main(["--help"])
    except SystemExit as exc:
        assert exc.code == 0
    text = capsys.readouterr().out
    for verb in ("models", "hardware", "budget", "inspect", "export", "synth"):
        assert verb in text
    assert set(("models", "simulate", "collect", "calibrate", "decode", "figures")) <= set(COMMANDS)


def test_every_available_verb_has_help(capsys):
    from moespeq.cli import _available_commands

    for verb in _available_commands():
        try:
            main([verb, "--help"])
        except SystemExit as exc:
            assert exc.code == 0, verb
        assert "usage: moespeq" in capsys.readouterr().out


def test_console_script_runs(tmp_path):
    out = subprocess.run(["moespeq", "budget", "--model", "olmoe-1b-7b", "--budget", "16GB", "--json"],
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out)["system"] == "speq"


def test_inspect_defaults_to_the_bundled_demo(capsys):
    assert main(["inspect", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["model"] == "phi-3.5-moe" and summary["routing_source"].startswith("synthetic:")
    assert summary["tokens"] >= 300
