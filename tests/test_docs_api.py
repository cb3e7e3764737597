"""The API reference declares every public name: each package's ``__all__`` equals the names
listed on its page docs/api/<package>.rst (autosummary entries and autodata directives)."""

import importlib
import re

import pytest
from code_blocks import DOCS

PACKAGES = ("neve.models", "neve.benchmarks", "neve.benchmarks.results", "neve.plugins",
            "neve.strategies")


def declared_names(page: str) -> list[str]:
    """Names under the page's ``.. autosummary::`` directives and its ``.. autodata::`` lines."""
    names, in_summary = [], False
    for line in page.splitlines():
        if line.startswith(".. autosummary::"):
            in_summary = True
            continue
        if in_summary:
            if line.strip().startswith(":") or not line.strip():
                continue
            if line.startswith("   "):
                names.append(line.strip())
                continue
            in_summary = False
        match = re.match(r"\.\. auto(?:data|function|class):: (\w+)$", line)
        if match:
            names.append(match.group(1))
    return names


def test_declared_names_reads_a_page():
    page = (".. autosummary::\n   :toctree: generated\n\n   A\n   b\n\nText\n"
            ".. autodata:: C\n   :no-value:\n")
    assert declared_names(page) == ["A", "b", "C"]


@pytest.mark.parametrize("package", PACKAGES)
def test_api_page_lists_exactly_the_public_names(package):
    page = DOCS / "api" / f"{package}.rst"
    declared = declared_names(page.read_text())
    public = importlib.import_module(package).__all__
    assert len(declared) == len(set(declared)), f"{page.name} lists a name twice"
    missing, extra = sorted(set(public) - set(declared)), sorted(set(declared) - set(public))
    assert not missing and not extra, (
        f"{page.name}: add {missing} (in {package}.__all__), remove {extra} (not public)")


def test_api_index_links_every_package_page():
    index = (DOCS / "api" / "index.md").read_text()
    for package in PACKAGES:
        assert f"\n{package}\n" in index
