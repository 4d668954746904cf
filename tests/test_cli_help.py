"""Every sub-command has ``--help`` with an example line."""

from __future__ import annotations

import pytest

from crosslayer.cli import _register, main
from crosslayer.cli.app import app

_register()
COMMANDS = sorted(c.name for c in app.registered_commands if c.name)


def test_commands_are_registered() -> None:
    assert {"run", "report", "layers", "contrast", "interpret"} <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_has_an_example(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([name, "--help"]) == 0
    text = capsys.readouterr().out
    assert "Example" in text, f"`crosslayer {name} --help` has no 'Example' line"


def test_bad_flag_value_is_a_usage_error_not_a_traceback(capsys: pytest.CaptureFixture[str]):
    assert main(["run", "--width", "abc", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "Invalid value for '--width'" in err
    assert "Traceback" not in err
