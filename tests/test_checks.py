"""The declared checks of neve.models.core.checks: constraints per argument, rules across them."""

from __future__ import annotations

import pytest
import torch

from neve.models.core.checks import Int, Rule, divides, same_length, validated
from neve.models.core.data_checks import Labels, Tensor


@validated(same_length("x", "y"), divides("parts", "x", lambda d, n: f"parts={d} vs {n} items"),
           x=Tensor(), y=Labels(), parts=Int(1))
def _split(x, y, parts=2):
    return x, y, parts


def test_constraints_give_canonical_values_and_rules_pass_through():
    x, y, parts = _split(torch.zeros(4, 3), [0, 1, 1, 0], parts=torch.tensor(4))
    assert y.dtype == torch.long and y.tolist() == [0, 1, 1, 0]
    assert type(parts) is int and parts == 4


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"x": [1.0, 2.0], "y": [0, 1]}, TypeError, r"x must be a tensor \[N, \.\.\.\], got list"),
    ({"x": torch.zeros(4), "y": [0.5] * 4}, ValueError, "y must be integer class labels"),
    ({"x": torch.zeros(4), "y": [0, 1, 2]}, ValueError,
     "x and y must have the same length, got 4 and 3"),
    # the rule sees the default parts=2: 3 items are not divisible
    ({"x": torch.zeros(3), "y": [0, 1, 2]}, ValueError, "parts=2 vs 3 items"),
    ({"x": torch.zeros(4), "y": [0] * 4, "parts": 3}, ValueError, "parts=3 vs 4 items"),
    ({"x": torch.zeros(4), "y": [0] * 4, "parts": 0}, ValueError, "parts must be an integer >= 1"),
])
def test_bad_arguments_name_the_argument(kwargs, error, match):
    with pytest.raises(error, match=match):
        _split(**kwargs)


def test_rules_run_after_constraints_on_canonical_values():
    seen = []
    rule = Rule(lambda n: seen.append(type(n)) or True, lambda n: "never")

    @validated(rule, n=Int(0))
    def f(n):
        return n

    f(torch.tensor(3))
    assert seen == [int]  # the rule got the constraint's int, not the 0-d tensor
    with pytest.raises(ValueError, match="n must be an integer >= 0"):
        f(-1)
    assert seen == [int]  # a failed constraint stops before the rules


def test_a_rule_over_an_unknown_parameter_is_refused_at_declaration():
    with pytest.raises(TypeError, match=r"unknown parameters \['z'\]"):
        @validated(same_length("x", "z"))
        def f(x, y):
            return x
