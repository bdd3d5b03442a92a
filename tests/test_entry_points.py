"""The console commands pyproject installs ([project.scripts]) run the CLI they name."""

import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import REPO_ROOT

SCRIPTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("command", sorted(SCRIPTS))
def test_installed_command_prints_its_usage(command):
    path = shutil.which(command)
    assert path, f"{command} is not on PATH: reinstall with pip install -e ."
    result = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "usage:" in result.stdout

