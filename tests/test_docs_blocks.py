"""Every Python block of every docs page runs as pasted, on small data; blocks that train set a
batch size (Avalanche's default of 1 makes them take minutes)."""

import re

import pytest
from code_blocks import README, ROOT, docs_pages, python_blocks, run_block

README_BLOCKS = set(python_blocks(README))
ALL_BLOCKS = [(page.relative_to(ROOT).as_posix(), i, code)
              for page in docs_pages() for i, code in enumerate(python_blocks(page))]
# a block identical to a README block already runs in test_readme.py
BLOCKS = [b for b in ALL_BLOCKS if b[2] not in README_BLOCKS]
STRATEGY = re.compile(r"\b(Naive|SLCA|AnalyticCIL|NearestPrototype|Replay|EWC|LwF|Cumulative)\(")


def test_docs_have_python_blocks():
    pages = {page for page, _, _ in ALL_BLOCKS}
    assert len(ALL_BLOCKS) >= 8
    for method in ("curriculum", "slca", "analytic", "instance-test"):
        assert f"docs/methods/{method}.md" in pages, f"docs/methods/{method}.md has no example"


def call_text(code: str, start: int) -> str:
    """The text of the call that starts at ``code[start]``, up to its closing parenthesis."""
    depth = 0
    for position in range(start, len(code)):
        depth += {"(": 1, ")": -1}.get(code[position], 0)
        if depth == 0 and code[position] == ")":
            return code[start:position + 1]
    return code[start:]


def test_call_text_stops_at_the_closing_parenthesis():
    assert call_text("x = Naive(a, f(b), c=1)\nNaive(d)", 4) == "Naive(a, f(b), c=1)"


@pytest.mark.parametrize("page, index, code", ALL_BLOCKS,
                         ids=[f"{p}:{i}" for p, i, _ in ALL_BLOCKS])
def test_strategies_in_blocks_set_the_batch_size(page, index, code):
    for match in STRATEGY.finditer(code):
        call = call_text(code, match.start())
        assert "train_mb_size" in call, f"{page} block {index}: {match.group(1)} without a batch"


@pytest.mark.parametrize("page, index, code", BLOCKS, ids=[f"{p}:{i}" for p, i, _ in BLOCKS])
def test_docs_block_runs_as_pasted(page, index, code, tmp_path):
    proc = run_block(code, tmp_path)
    assert proc.returncode == 0, f"{page} block {index}:\n{code}\n{proc.stderr[-3000:]}"
