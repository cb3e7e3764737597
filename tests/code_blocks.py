"""The Python blocks of the README and the docs pages; running one as pasted (imports included)."""

import functools
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
FENCE = re.compile(r"^```python\n(.*?)^```", flags=re.S | re.M)


def python_blocks(path: Path) -> list[str]:
    """Every fenced ```python block of a Markdown file, in order."""
    return FENCE.findall(path.read_text())


def docs_pages() -> list[Path]:
    """The Markdown pages of the docs site (the build folder left out)."""
    return sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)


@functools.cache
def shared_cache() -> str:
    """One feature cache for all blocks of a test run: a block's first feature pass is cached, the
    others load it (the README's and the docs' blocks use the same backbone and data)."""
    return tempfile.mkdtemp(prefix="neve-blocks-")


def run_block(code: str, workdir: Path) -> subprocess.CompletedProcess:
    """Runs ``code`` in a fresh interpreter in ``workdir``, as a reader pasting it would."""
    script = workdir / "block.py"
    script.write_text(code)
    env = dict(os.environ, NEVE_CACHE=shared_cache(), PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(script)], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=300)
