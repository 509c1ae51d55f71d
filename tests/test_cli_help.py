"""Every command's --help ends with an example a newcomer can copy."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from flywheel.cli import main


def _commands(group: click.Group, path: tuple[str, ...] = ()):
    yield path
    for name, cmd in group.commands.items():
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name)


@pytest.mark.parametrize("path", list(_commands(main)), ids=lambda p: " ".join(p) or "flywheel")
def test_every_command_help_has_an_example(path):
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, result.output
    lines = [ln.strip() for ln in result.output.splitlines() if ln.strip().startswith("Example:")]
    assert lines, f"no 'Example:' line in {' '.join(path)} --help"
    # every example runs the command it documents
    for line in lines:
        assert line.removeprefix("Example: ").split("flywheel ", 1)[1].startswith(" ".join(path)), line
