"""The test suite's own layout: helpers shared by several suites live in fixtures modules
(tests/*_fixtures.py, tests/fixtures.py), and no module (test, script or benchmark) imports a
test module: that would tie one suite's changes to another's, and run its module-level code.
"""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("tests", "scripts", "benchmarks")


def imported_test_modules(tree: ast.Module) -> set[str]:
    """The test modules (tests.test_*) that a module's imports name (a relative import is taken
    as one from tests/)."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = ".".join(filter(None, ("tests" if node.level else "", node.module)))
            names.add(module)
            if module == "tests":
                names.update(f"tests.{alias.name}" for alias in node.names)
    return {n for n in names if n.startswith("tests.test_")}


def test_no_module_imports_a_test_module() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(found)
        for folder in SOURCES
        for path in sorted((ROOT / folder).rglob("*.py"))
        if (found := imported_test_modules(ast.parse(path.read_text(), str(path))))
    }
    assert not offenders, f"import these helpers from a fixtures module instead: {offenders}"
