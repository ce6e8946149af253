"""The pure modules load nothing that talks to the API server or to a metrics system, checked as Python runs them:
import-linter's contract follows imports, but not what a package's __init__ imports when one of its modules is."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from typing import Any

import pytest

from tests.conftest import REPOSITORY


def _contract() -> dict[str, Any]:
    contracts = tomllib.loads((REPOSITORY / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    found: list[dict[str, Any]] = [
        contract for contract in contracts if contract["name"].startswith("Pure planning and decisions")
    ]
    return found[0]


CONTRACT = _contract()


def test_the_contract_is_checked_through_indirect_imports_too() -> None:
    assert CONTRACT["allow_indirect_imports"] == "false"


@pytest.mark.parametrize("module", CONTRACT["source_modules"])
def test_a_pure_module_loads_none_of_the_forbidden_modules(module: str) -> None:
    forbidden = CONTRACT["forbidden_modules"]
    code = f"import sys, {module}; print(' '.join(name for name in {forbidden!r} if name in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert loaded.stdout.strip() == "", f"importing {module} loads {loaded.stdout.strip()}"
