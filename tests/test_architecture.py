"""The module map of issue #10 holds: one-way imports, no library file over 400 lines."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("models", "benchmarks", "plugins", "strategies")
# which other neve folders each folder may import
ALLOWED = {
    "models": set(),
    "benchmarks": {"models"},
    "plugins": {"models"},
    "strategies": {"models", "plugins"},
}


def _neve_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 2 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 0 and node.module and node.module.startswith("neve."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("neve.")}
    return found


@pytest.mark.parametrize("folder", FOLDERS)
def test_imports_run_one_way(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        wrong = _neve_imports(path) - ALLOWED[folder] - {folder}
        assert not wrong, f"{path.relative_to(ROOT)} imports {sorted(wrong)}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_no_library_file_over_400_lines(folder):
    for path in sorted((ROOT / folder).glob("*.py")):
        lines = len(path.read_text().splitlines())
        assert lines <= 400, f"{path.relative_to(ROOT)} has {lines} lines"
