"""Every script of examples/reproduce runs its paper's protocol with --smoke (issue #15.3).

FakeData in the dataset's shape and random weights: the test checks that each
protocol runs end to end and reports its metrics beside the paper's figures as
JSON, not the paper's figures: the values are checked against what each script's
protocol fixes (the summary of its per-step accuracies, accuracy ranges, the number of
class orders, a clean instance test of exact copies at 100%). The five scripts run as
parallel subprocesses.
"""

import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = {
    "slca": {"last_acc", "inc_acc"},
    "acil": {"average_acc", "last_acc"},
    "gacil": {"a_last"},
    "instance_test": set(),
    "curriculum": {"spearman_cd_vs_f", "top_quartile_overlap"},
}


def test_every_reproduce_script_runs_with_smoke(tmp_path):
    procs = {}
    for name in SCRIPTS:
        out = tmp_path / f"{name}.json"
        cmd = [sys.executable, str(ROOT / "examples" / "reproduce" / f"{name}.py"), "--smoke",
               "--seed", "1", "--device", "cpu", "--out", str(out)]
        procs[name] = (subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True), out)
    for name, (proc, out) in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{name} --smoke failed:\n{log[-3000:]}"
        result = json.loads(out.read_text())
        assert result["script"] == name and result["smoke"] is True and result["seed"] == 1
        assert result["weights"] == "None"  # random weights under --smoke
        assert "source" in result["paper"] and result["metrics"]
        assert SCRIPTS[name] <= set(result["paper"]), name
        printed = json.loads(log[log.index("{\n"):])  # the same JSON on stdout
        assert printed["metrics"] == result["metrics"]
        VALUES[name](result["metrics"])


def _mean(values):
    return sum(values) / len(values)


def _accuracies(values, steps):
    assert len(values) == steps and all(0.0 <= v <= 100.0 for v in values), values


def _slca(m):
    _accuracies(m["per_task"], 2)  # --smoke: 2 tasks
    assert m["last_acc"] == m["per_task"][-1]
    assert math.isclose(m["inc_acc"], _mean(m["per_task"]), rel_tol=1e-12)


def _acil(m):
    _accuracies(m["per_phase"], 3)  # --smoke: a base phase and 2 incremental phases
    assert m["last_acc"] == m["per_phase"][-1]
    assert math.isclose(m["average_acc"], _mean(m["per_phase"]), rel_tol=1e-12)


def _gacil(m):
    points = m["seen_class_accuracies"]
    _accuracies(points, 2)  # --smoke: 60 samples, a point every 20 (the last one is A_last's)
    assert math.isclose(m["a_auc"], _mean(points), rel_tol=1e-12)
    assert 0.0 <= m["a_last"] <= 100.0 and 0.0 <= m["all_test_classes"] <= 100.0


def _instance_test(m):
    assert m, "no presentation was run"
    for key, by_condition in m.items():
        assert set(by_condition) == {"clean", "occlusion r=0.3", "noise p=0.4"}, key
        assert all(0.0 <= v <= 100.0 for v in by_condition.values()), key
        if key.endswith("/nearest_prototype"):  # exact copies are nearest to their own mean
            assert by_condition["clean"] == 100.0, (key, by_condition)
    prototypes = [v for k, v in m.items() if k.endswith("/nearest_prototype")]
    assert len(prototypes) == 5  # 1x20 ... 20x1
    assert all(p == prototypes[0] for p in prototypes), "class sums do not depend on the order"


def _curriculum(m):
    assert m["orders_scored"] == math.factorial(5)  # every order of the 5 classes
    assert m["orders_trained"] == 6  # --smoke trains 6 orders
    naive = m["naive"]
    rho = naive["spearman_cd_vs_f"]  # None (NaN) when every F is the same
    assert rho is None or -1.0 <= rho <= 1.0
    hits, of = naive["top_quartile_overlap"].split(" of ")
    assert of == str(max(1, 6 // 4)) and 0 <= int(hits) <= int(of)
    assert math.isfinite(naive["mean_f_cd_best_quartile"]) and math.isfinite(naive["mean_f_all"])


VALUES = {"slca": _slca, "acil": _acil, "gacil": _gacil, "instance_test": _instance_test,
          "curriculum": _curriculum}
