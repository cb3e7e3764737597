"""The Architecture page's module map lists every module of the four packages, none that is gone."""

import re

from code_blocks import DOCS, ROOT

FOLDERS = ("models", "benchmarks", "plugins", "strategies")


def test_module_map_lists_every_module():
    page = (DOCS / "architecture.md").read_text()
    listed = set(re.findall(r"^\| `([\w/]+\.py)` \|", page, flags=re.M))
    modules = {p.relative_to(ROOT).as_posix() for folder in FOLDERS
               for p in (ROOT / folder).rglob("*.py")
               if p.name != "__init__.py" and "__pycache__" not in p.parts}
    assert modules, "no modules found"
    missing, gone = sorted(modules - listed), sorted(listed - modules)
    assert not missing, f"docs/architecture.md lacks {missing}"
    assert not gone, f"docs/architecture.md lists modules that do not exist: {gone}"
