"""SLCA's statistics summed over processes equal one process's (issue #14).

Two gloo workers each pass a contiguous shard (one of them empty in one case) to
``class_moments``, ``sdc_shifts`` and ``drift_jacobian`` with the process group's
reduction; the test process computes the same on the whole data without a
process group, and the stored Gaussians (means, covariances, few-sample rows) are
compared, and so is the drift fit that moves covariances. A non-finite
feature on one worker is refused on both.
"""

import torch
from gloo_harness import error_of, run_on_processes

from neve.models.class_moments import class_moments
from neve.models.core.distributed import LOCAL, default_reduction
from neve.models.drift import drift_jacobian, sdc_shifts
from neve.models.gaussians import ClassGaussianStats

D = 8


def data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """40 rows: class 0 has 34 (> D, scatter all-reduced), 2 and 5 have 3 (<= D, rows)."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.tensor([0] * 34 + [2] * 3 + [5] * 3)[torch.randperm(40, generator=gen)]
    x = torch.randn(40, D, generator=gen) * 2 + y[:, None] * 1.5
    return x, y


def parts(n: int, rank: int, uneven: bool) -> slice:
    cut = n if uneven else n // 2  # uneven: rank 1's part is empty
    return slice(0, cut) if rank == 0 else slice(cut, n)


def stored(moments_of, covariance: str, rank: int | None = None, uneven: bool = False) -> dict:
    """Two experiences into a ClassGaussianStats (classes 0 and 5 recur: 7 rows for 5), then
    SDC shifts."""
    stats = ClassGaussianStats(covariance, 1e-4)
    reduction = default_reduction() if rank is not None else LOCAL
    for group, seed in enumerate((0, 1)):
        x, y = data(seed)
        if group == 1:
            keep = y != 2
            x, y = x[keep], y[keep]
        part = parts(len(y), rank, uneven) if rank is not None else slice(None)
        stats.update_moments(moments_of(x[part], y[part], covariance, reduction), group)
    before, _ = data(2)
    after = before * 1.1 + 0.3 + 0.2 * before.sin()
    part = parts(len(before), rank, uneven) if rank is not None else slice(None)
    means = torch.stack([stats.means[c] for c in stats.classes])
    shift = sdc_shifts(before[part], after[part], means, reduction=reduction)
    jacobian = drift_jacobian(before[part], after[part], 0.5, reduction)
    return {"means": means, "jacobian": jacobian,
            "covs": torch.stack([stats.covariance_of(c) for c in stats.classes]),
            "counts": torch.tensor([stats.counts[c] for c in stats.classes]),
            "low_rank": sorted(stats.low_rank), "shift": shift,
            **{f"rows{c}": r for c, r in stats.low_rank.items()}}


def on_process(rank: int, world: int) -> dict:
    results = {f"{cov}/{uneven}": stored(class_moments, cov, rank, uneven)
               for cov in ("full", "diagonal", "shared") for uneven in (False, True)}
    x, y = data(0)
    if rank == 1:
        x[3, 1] = float("nan")
    results["refused"] = error_of(lambda: class_moments(x, y, reduction=default_reduction()))
    return results


def test_two_processes_store_one_process_gaussians(tmp_path):
    ranks = run_on_processes(on_process, tmp_path)
    for cov in ("full", "diagonal", "shared"):
        single = stored(class_moments, cov)
        if cov == "full":  # classes 2 and 5 have <= D rows: sampled from their rows
            assert single["low_rank"] == [2, 5]
        for uneven in (False, True):
            for got in ranks:
                pair = got[f"{cov}/{uneven}"]
                assert pair["low_rank"] == single["low_rank"]
                assert torch.equal(pair["counts"], single["counts"])
                rows = [f"rows{c}" for c in single["low_rank"]]
                for key in ("means", "covs", "shift", "jacobian", *rows):
                    torch.testing.assert_close(pair[key], single[key], rtol=1e-12, atol=1e-12)
    assert "NaN" in ranks[1]["refused"]
    assert "another process" in ranks[0]["refused"]


def test_moments_reduced_in_one_process_match_update():
    """Without a process group, update_moments(class_moments(...)) is update(...)."""
    x, y = data(0)
    for cov in ("full", "diagonal", "shared"):
        a, b = ClassGaussianStats(cov), ClassGaussianStats(cov)
        a.update(x, y, group=0)
        b.update_moments(class_moments(x, y, cov, default_reduction()), group=0)
        for c in a.classes:
            assert torch.equal(a.means[c], b.means[c])
            assert torch.equal(a.covariance_of(c), b.covariance_of(c))
        assert sorted(a.low_rank) == sorted(b.low_rank)


def test_update_moments_refuses_bad_moments_and_keeps_state():
    stats = ClassGaussianStats("full")
    x, y = data(0)
    stats.update(x, y, group=0)
    before = {c: m.clone() for c, m in stats.means.items()}
    good = class_moments(x, y)
    n, mean, scatter, _ = good[0]  # class 0 has more than D rows: none kept
    rows = x[y == 0].double() - mean  # its centred rows, as kept for a class of few rows
    bad_cases = [
        {0: (n, mean[:-1], scatter, rows)},           # wrong D
        {0: (0, mean, scatter, rows)},                # empty class
        {0: (n, mean * float("nan"), scatter, rows)},  # non-finite
        {-1: good[0]},                                # bad class id
        {0: (n, mean, scatter, rows[:-1])},           # rows not [n, D]
        {},                                           # nothing
    ]
    for moments in bad_cases:
        try:
            stats.update_moments({**moments}, group=1)
        except ValueError as err:
            assert "moments" in str(err)
        else:
            raise AssertionError(f"accepted {moments.keys()}")
    for c, m in before.items():
        assert torch.equal(stats.means[c], m)
