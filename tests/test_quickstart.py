"""`examples/quickstart.py --dataset digits` stays quiet and keeps its figures (issue #10)."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "quickstart.py"
# the figures before the reorganisation (naive, analytic, slca), in percent
BEFORE = {"naive": 19.3, "analytic": 94.9, "slca": 89.1}


def test_quickstart_on_digits_is_quiet_and_ends_at_the_same_accuracies(tmp_path):
    env = dict(os.environ, NEVE_CACHE=str(tmp_path))
    started = time.time() - 1
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
    assert list(tmp_path.iterdir()) == [tmp_path / "features"]  # nothing else written here
    # the figures go to the repository's git-ignored outputs/, printed on the line before last
    folder = Path(re.search(r" in (\S+)/ ", lines[-3])[1])
    assert folder == SCRIPT.parents[1] / "outputs" / "quickstart-digits"
    for method in BEFORE:
        assert (folder / f"{method}.json").stat().st_mtime >= started  # this run's
        with Image.open(folder / f"{method}_accuracy.png") as image:
            image.load()
            assert image.size[0] > 300 and image.size[1] > 300
        assert (folder / f"{method}_accuracy.svg").stat().st_size > 1000
        figures = json.loads((folder / f"{method}.json").read_text())
        assert len(figures["accuracy_matrix"]) == 5
        assert abs(100 * figures["last_accuracy"] - float(final[method])) <= 0.05, method
    assert (folder / "curves.png").stat().st_size > 1000
