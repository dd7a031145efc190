"""The CLI reference (docs/cli.md) is generated from the CLI by typer's own documentation command and
must match the CLI it documents."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
GENERATE = [sys.executable, "-m", "typer", "teachclip.cli", "utils", "docs", "--name", "teach"]


def test_cli_reference_is_up_to_date(tmp_path):
    out = tmp_path / "cli.md"
    # run in the checkout: the CLI documented is this one, whichever teachclip is installed
    result = subprocess.run([*GENERATE, "--output", str(out)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert out.read_text() == (REPO / "docs" / "cli.md").read_text(), (
        "docs/cli.md is out of date: run `python -m typer teachclip.cli utils docs --name teach --output docs/cli.md`")
