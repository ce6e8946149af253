"""The predictor's command-line tools answer `--help` and a bad flag without loading numpy, pandas, pyarrow or
scikit-learn: each costs seconds to import, and a person typing --help should not wait for them."""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("numpy", "pandas", "pyarrow", "sklearn", "sqlalchemy", "skops", "kserve")


@pytest.mark.parametrize(
    ("tool", "argv", "code"),
    [
        ("predict", ["--help"], 0),
        ("predict", ["batch", "--help"], 0),
        ("predict", ["batch", "--input", "rows.csv"], 2),
        ("bundle", ["--help"], 0),
        ("bundle", ["verify", "--help"], 0),
        ("bundle", ["inspect", "--bogus"], 2),
    ],
)
def test_help_and_bad_flags_load_nothing_heavy(tool: str, argv: list[str], code: int) -> None:
    program = (
        "import sys\n"
        "from steward_predictor import cli\n"
        f"try:\n    cli.{tool}({argv!r})\nexcept SystemExit as exit_:\n    print('exit', exit_.code, file=sys.stderr)\n"
        f"print(' '.join(name for name in {HEAVY!r} if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True)
    assert f"exit {code}" in done.stderr
    assert done.stdout.splitlines()[-1] == "", f"{tool} {' '.join(argv)} loaded {done.stdout.splitlines()[-1]}"
