"""The generated CLI reference must match the CLI it documents."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_cli_reference_is_up_to_date():
    result = subprocess.run([sys.executable, str(REPO / "docs" / "gen_cli_reference.py"), "--check"],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, ("docs/cli.md is out of date: run `python docs/gen_cli_reference.py`\n"
                                    + result.stdout + result.stderr)
