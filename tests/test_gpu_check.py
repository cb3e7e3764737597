"""bench/gpu_check.py runs on the CPU (``--device cpu --quick``) before any GPU sees it.

The command launches examples/distributed.py three times (one process, the CPU
reference with two threads, two gloo processes as two "nodes") on Split
Fashion-MNIST with EfficientNet-Lite0 in the loop, and prints JSON; the test
reads every check and throughput of that JSON. The agreement check is also
given tensors that differ by a known amount.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("neve_gpu_check", ROOT / "bench" / "gpu_check.py")
gpu_check = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(gpu_check)
METHODS = {"analytic", "slca", "slca-finetune", "curriculum", "prototype"}


@pytest.fixture(scope="module")
def report() -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in [str(Path(sys.modules["neve"].__path__[0]).parent),
                    os.environ.get("PYTHONPATH", "")] if p)}
    done = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py"), "--device",
                           "cpu", "--quick"], capture_output=True, text=True, env=env,
                          timeout=1200)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def test_every_method_agrees_within_its_stated_tolerance(report):
    assert report["ok"] is True and report["quick"] is True and report["device"] == "cpu"
    for check, tolerances in (("cuda_vs_cpu", gpu_check.DEVICE_TOLERANCE),
                              ("two_processes_vs_one", gpu_check.PROCESS_TOLERANCE)):
        assert set(report[check]) == METHODS
        for method, entry in report[check].items():
            assert entry["tolerance"] == tolerances[method]
            assert 0 <= entry["difference"] <= entry["tolerance"], (check, method)
            assert entry["ok"] is True


def test_throughputs_and_timings_are_positive(report):
    rates = report["throughput"]
    assert rates["feature_pass_images_per_s"] > 0
    assert rates["slca_finetune_images_per_s"] > 0
    assert rates["acil_fit_seconds"] > 0 and rates["acil_buffer_size"] == 1024
    assert set(report["seconds_per_experience"]) == METHODS
    assert all(s > 0 for s in report["seconds_per_experience"].values())


def test_agreement_flags_a_difference_above_the_tolerance():
    a = {"analytic/weight": torch.tensor([3.0, 4.0]), "slca/means": torch.ones(2)}
    b = {"analytic/weight": torch.tensor([3.0, 4.5]), "slca/means": torch.ones(2)}
    res = gpu_check.agreement(a, b, {"analytic": 0.05, "slca": 0.0})
    assert res["analytic"] == {"difference": pytest.approx(0.1), "tolerance": 0.05, "ok": False}
    assert res["slca"]["ok"] is True and res["slca"]["difference"] == 0.0


def test_analytic_fit_matches_the_ridge_solution_it_times():
    # the timed fit is a real fit: the same calls give the closed-form ridge solution
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 16, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (64,), generator=gen)
    ridge = gpu_check.IncrementalRidge(16, gamma=1.0)
    ridge.partial_fit(x, y)
    onehot = torch.nn.functional.one_hot(y, 3).double()
    expected = torch.linalg.solve(x.T @ x + torch.eye(16, dtype=torch.float64), x.T @ onehot)
    torch.testing.assert_close(ridge.weight, expected)
    assert gpu_check.analytic_fit_seconds(32, torch.device("cpu"), samples=64, features=8) > 0
