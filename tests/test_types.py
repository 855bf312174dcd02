"""The type check: mypy over agents/ and schemas/, configured in pyproject.toml
([tool.mypy]), as part of `make test`."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> str:
    """One mypy cache for this module's runs (the standard library is read once)."""
    return str(tmp_path_factory.mktemp("mypy-cache"))


def test_mypy_is_clean_on_agents_and_schemas(cache):
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", cache],
                       cwd=REPO, capture_output=True, text=True, timeout=600,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout + r.stderr
    m = re.search(r"Success: no issues found in (\d+) source files", r.stdout)
    assert m, r.stdout
    wanted = [p for d in ("agents", "schemas") for p in (REPO / d).rglob("*.py")]
    assert int(m.group(1)) == len(wanted), (m.group(1), wanted)


def test_the_type_check_would_catch_a_mistake(tmp_path, cache):
    # the same configuration rejects a plain type error in a file of its own
    bad = tmp_path / "bad.py"
    bad.write_text("def f(x: int) -> str:\n    return x\n")
    r = subprocess.run([sys.executable, "-m", "mypy", "--cache-dir", cache,
                        "--config-file", str(REPO / "pyproject.toml"), str(bad)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 1 and 'Incompatible return value type (got "int", expected "str")' in r.stdout, r.stdout
