"""`examples/quickstart.py --dataset digits` stays quiet and keeps its figures (issue #10)."""

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
# the figures before the reorganisation (naive, analytic, slca), in percent
BEFORE = {"naive": 19.3, "analytic": 94.9, "slca": 89.1}


def test_quickstart_on_digits_is_quiet_and_ends_at_the_same_accuracies(tmp_path):
    env = dict(os.environ, NEVE_CACHE=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--dataset", "digits"], cwd=tmp_path, env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:]
    lines = out.splitlines()
    assert len(lines) <= 60, f"{len(lines)} lines"
    assert "Warning" not in out and "warn" not in out.lower(), out
    final = dict(re.findall(r"(\w+) ([\d.]+)%", lines[-1]))
    for method, before in BEFORE.items():
        assert abs(float(final[method]) - before) <= 1.0, (method, final)
    assert list(tmp_path.iterdir()) == [tmp_path / "features"]  # nothing else written
