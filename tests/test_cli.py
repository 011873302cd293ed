import subprocess
import sys

from policystack import cli


def test_help_lists_commands(capsys):
    assert cli.main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert name in out


def test_unknown_command_lists_valid_ones(capsys):
    assert cli.main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "frobnicate" in err and "dataset" in err


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "policystack.cli", "--help"], capture_output=True, text=True, check=True)
    assert "usage: policystack" in out.stdout


def test_every_command_module_has_main():
    import importlib

    for module, _ in cli.COMMANDS.values():
        assert callable(importlib.import_module(module).main)
