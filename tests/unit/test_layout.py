"""The admin commands stay thin: they parse, call an operation and print (README, Architecture).

Read from the source, so a command that starts talking SQL or Redis itself, or an exit code
written as a bare number instead of a name from facusync/errors.py, fails here, not in review.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "facusync"
COMMANDS = sorted((PACKAGE / "commands").glob("*.py"))
# The drivers and the owners of the two protocols (stream.py's Stream, control.py, the lock):
# a command that needs them has an operation to call instead.
SERVER_MODULES = ("psycopg2", "redis", "pymssql", "facusync.control", "facusync.lock")
SERVER_CALLS = {"execute", "executemany", "cursor", "pipeline", "xadd", "xrange", "hset", "Stream"}


def _imports(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _called(node: ast.Call) -> str:
    func = node.func
    return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: p.name)
def test_a_command_speaks_to_no_server_itself(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    imported = [n for n in _imports(tree)
                if any(n == m or n.startswith(m + ".") for m in SERVER_MODULES)]
    calls = sorted({_called(n) for n in ast.walk(tree) if isinstance(n, ast.Call)} & SERVER_CALLS)
    assert not imported and not calls, f"{path.name}: imports {imported}, calls {calls}"


@pytest.mark.parametrize("path", [*COMMANDS, PACKAGE / "cli.py"], ids=lambda p: p.name)
def test_a_command_returns_exit_codes_by_name(path: Path) -> None:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    literal = [n.lineno for n in ast.walk(tree)
               if isinstance(n, ast.Return) and isinstance(n.value, ast.Constant)
               and isinstance(n.value.value, int) and not isinstance(n.value.value, bool)]
    literal += [n.value.lineno for n in ast.walk(tree)
                if isinstance(n, ast.keyword) and n.arg == "failure_code"
                and isinstance(n.value, ast.Constant)]
    assert not literal, f"{path.name}: exit codes as bare numbers on line(s) {literal}"


def test_errors_carry_exit_codes_by_name() -> None:
    """Every ``exit_code = …`` outside errors.py names one of its constants."""
    bare = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "errors.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and any(
                    isinstance(t, ast.Name) and t.id == "exit_code" for t in node.targets):
                bare.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert not bare, f"exit codes as bare numbers: {bare}"
