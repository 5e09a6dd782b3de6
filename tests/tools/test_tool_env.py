"""Every tool that trains or runs a model imports tools/_tool_env.py before torch, so that
OMP_WAIT_POLICY is set in time (libgomp reads it once, when torch loads it)."""

import ast
import os
import subprocess
import sys

import pytest

from . import TOOLS

# The benchmarks time torch as a user runs it, with libgomp's own wait policy.
BENCHMARKS = {"benchmark_layer", "benchmark_model"}
TOOLS_WITH_ENV = sorted(
    p.stem for p in TOOLS.glob("*.py") if not p.stem.startswith("_") and p.stem not in BENCHMARKS
)


def test_the_list_holds_the_tools():
    assert {"compare_twins", "demo", "train_net"} <= set(TOOLS_WITH_ENV)


@pytest.mark.parametrize("name", TOOLS_WITH_ENV)
def test_the_environment_module_is_the_first_import(name):
    tree = ast.parse((TOOLS / f"{name}.py").read_text())
    imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    assert isinstance(imports[0], ast.Import) and imports[0].names[0].name == "_tool_env"


def test_the_policy_is_set_before_torch_loads_and_a_users_value_is_kept():
    code = (
        "import sys; sys.path.insert(0, %r); import _tool_env, os, sys; "
        "assert 'torch' not in sys.modules; print(os.environ['OMP_WAIT_POLICY'])" % str(TOOLS)
    )
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "PASSIVE", out.stderr
    env["OMP_WAIT_POLICY"] = "ACTIVE"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "ACTIVE", out.stderr
