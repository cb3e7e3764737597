"""The one place where neve checks what comes in from outside.

Public classes and functions declare their parameters' constraints once, as a
table (scikit-learn's ``_parameter_constraints`` idea), and check them once at
the public entry, with :func:`validated` (a decorator) or :func:`validate` (a
call); the functions below that entry trust their inputs and say their
preconditions in their docstrings.

Every check returns the value in canonical form or raises a ``TypeError``
(wrong kind of value) or ``ValueError`` (right kind, wrong value) whose message
names the argument and says what was expected. Booleans are not numbers, and no
value is silently truncated (``2.5`` is not an integer, ``'0.1'`` not a number).
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
import operator
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

#: Largest seed: ``seed + k`` offsets (one per experience) stay within every generator's range.
MAX_SEED = 2**63 - 1


class Constraint:
    """What one parameter must be; ``check(value, name)`` returns it canonical or raises."""

    optional = False  # subclasses that take other parameters keep the default

    def __init__(self, *, optional: bool = False) -> None:
        self.optional = optional

    def check(self, value: Any, name: str) -> Any:
        if value is None and self.optional:
            return None
        return self._check(value, name)

    def _check(self, value: Any, name: str) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def expected(self) -> str:
        return self._expected() + (" or None" if self.optional else "")

    def _expected(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _fail(self, error: type[Exception], value: Any, name: str) -> Exception:
        return error(f"{name} must be {self.expected()}, got {value!r}")


class Int(Constraint):
    """An integer (Python, numpy or a 0-d integer tensor; not a bool) in ``[min, max]``."""

    def __init__(self, min: int | None = None, max: int | None = None, *,
                 optional: bool = False) -> None:
        self.min, self.max, self.optional = min, max, optional

    def _expected(self) -> str:
        bounds = (f" >= {self.min}" if self.min is not None else "") + (
            f" <= {self.max}" if self.max is not None else "")
        return "an integer" + bounds

    def _check(self, value: Any, name: str) -> int:
        if isinstance(value, bool):
            raise self._fail(TypeError, value, name)
        try:
            out = operator.index(value)
        except TypeError:
            raise self._fail(TypeError, value, name) from None
        if (self.min is not None and out < self.min) or (self.max is not None and out > self.max):
            raise self._fail(ValueError, out, name)
        return out


class Seed(Int):
    """A seed: an integer in ``[0, MAX_SEED]``, the one rule of every seed in neve."""

    def __init__(self, *, optional: bool = False) -> None:
        super().__init__(0, MAX_SEED, optional=optional)


class Real(Constraint):
    """A finite real number (not a bool) as a ``float``, with optional bounds."""

    def __init__(self, *, gt: float | None = None, ge: float | None = None,
                 lt: float | None = None, le: float | None = None,
                 optional: bool = False) -> None:
        self.gt, self.ge, self.lt, self.le, self.optional = gt, ge, lt, le, optional

    def _expected(self) -> str:
        low = (f"({self.gt:g}" if self.gt is not None else
               f"[{self.ge:g}" if self.ge is not None else None)
        high = (f"{self.lt:g})" if self.lt is not None else
                f"{self.le:g}]" if self.le is not None else None)
        if low and high:
            return f"a finite number in {low}, {high}"
        bounds = [f"> {self.gt:g}"] if self.gt is not None else []
        bounds += [f">= {self.ge:g}"] if self.ge is not None else []
        bounds += [f"< {self.lt:g}"] if self.lt is not None else []
        bounds += [f"<= {self.le:g}"] if self.le is not None else []
        return "a finite number" + ("" if not bounds else " " + " and ".join(bounds))

    def _check(self, value: Any, name: str) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self._fail(TypeError, value, name)
        out = float(value)
        if not math.isfinite(out) or (self.gt is not None and not out > self.gt) or (
                self.ge is not None and not out >= self.ge) or (
                self.lt is not None and not out < self.lt) or (
                self.le is not None and not out <= self.le):
            raise self._fail(ValueError, value, name)
        return out


class Bool(Constraint):
    """``True`` or ``False`` (numpy's included), as a ``bool``."""

    def _expected(self) -> str:
        return "True or False"

    def _check(self, value: Any, name: str) -> bool:
        if not isinstance(value, (bool, np.bool_)):
            raise self._fail(TypeError, value, name)
        return bool(value)


class OneOf(Constraint):
    """One of a few values, compared by equality (strings, None, dtypes...); ``hints``: advice
    added to the message for a known wrong value (e.g. a name that belongs elsewhere)."""

    def __init__(self, *choices: Any, hints: Mapping[Any, str] | None = None) -> None:
        self.choices, self.hints = choices, dict(hints or {})

    def _expected(self) -> str:
        return f"one of {self.choices}"

    def _check(self, value: Any, name: str) -> Any:
        for choice in self.choices:
            if type(value) is type(choice) and value == choice:
                return value
        error = self._fail(ValueError, value, name)
        hint = self.hints.get(value) if isinstance(value, str) else None
        raise ValueError(f"{error} ({hint})") if hint else error


class Registered(Constraint):
    """A name registered in ``registry`` (a mapping), read at each check: names registered
    after the constraint was made count."""

    def __init__(self, registry: Mapping[str, Any], *, optional: bool = False) -> None:
        self.registry, self.optional = registry, optional

    def _expected(self) -> str:
        return f"one of {tuple(self.registry)}"

    def _check(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or value not in self.registry:
            raise self._fail(ValueError, value, name)
        return value


class Text(Constraint):
    """A non-empty string (e.g. the attribute name of a model part)."""

    def __init__(self, what: str = "a non-empty string", *, optional: bool = False) -> None:
        self.what, self.optional = what, optional

    def _expected(self) -> str:
        return self.what

    def _check(self, value: Any, name: str) -> str:
        if not isinstance(value, str) or not value:
            raise self._fail(ValueError, value, name)
        return value


class Instance(Constraint):
    """An instance of one of ``types`` (described as ``what``)."""

    def __init__(self, *types: type, what: str | None = None, optional: bool = False) -> None:
        self.types, self.optional = types, optional
        self.what = what or " or ".join(f"a {t.__module__}.{t.__qualname__}" for t in types)

    def _expected(self) -> str:
        return self.what

    def _check(self, value: Any, name: str) -> Any:
        if not isinstance(value, self.types):
            raise TypeError(f"{name} must be {self.expected()}, got {type(value).__name__}")
        return value


class Function(Constraint):
    """A callable."""

    def _expected(self) -> str:
        return "a callable"

    def _check(self, value: Any, name: str) -> Any:
        if not callable(value):
            raise self._fail(TypeError, value, name)
        return value


class AnyOf(Constraint):
    """The first of several constraints that accepts the value."""

    def __init__(self, *options: Constraint) -> None:
        self.options = options

    def _expected(self) -> str:
        return ", ".join(o.expected() for o in self.options[:-1]) + " or " + \
            self.options[-1].expected()

    def _check(self, value: Any, name: str) -> Any:
        for option in self.options:
            try:
                return option.check(value, name)
            except (TypeError, ValueError):
                continue
        raise self._fail(TypeError, value, name)


class Device(Constraint):
    """A ``torch.device`` (or its name) that exists on this machine.

    Refuses a string torch cannot parse, and a CUDA (or MPS) device when none is
    available or its index is past the last GPU, before anything is moved there.
    """

    def _expected(self) -> str:
        return "a str or torch.device"

    def _check(self, value: Any, name: str) -> torch.device:
        if not isinstance(value, (str, torch.device)):
            raise self._fail(TypeError, value, name)
        try:
            device = torch.device(value)
        except RuntimeError as err:
            raise ValueError(f"{name} must name a torch device ('cpu', 'cuda', 'cuda:0'...), "
                             f"got {value!r}") from err
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise ValueError(f"{name}={value!r} asks for a GPU, but torch finds no CUDA GPU "
                                 "here; use device='cpu'")
            if device.index is not None and device.index >= count:
                raise ValueError(f"{name}={value!r}: there are only {count} CUDA GPU(s) here")
        elif device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"{name}={value!r} asks for MPS, which is not available here")
        return device


class Tensor(Constraint):
    """A ``torch.Tensor`` with at least ``min_dim`` dimensions (``[N, ...]`` by default)."""

    def __init__(self, min_dim: int = 1, *, optional: bool = False) -> None:
        self.min_dim, self.optional = min_dim, optional

    def _expected(self) -> str:
        return {0: "a tensor", 1: "a tensor [N, ...]"}.get(
            self.min_dim, f"a tensor of at least {self.min_dim} dimensions")

    def _check(self, value: Any, name: str) -> torch.Tensor:
        if not isinstance(value, torch.Tensor) or value.dim() < self.min_dim:
            raise TypeError(f"{name} must be {self.expected()}, got {type(value).__name__}")
        return value


class Labels(Constraint):
    """Integer class labels: :func:`check_labels`, a 1-d int64 tensor of values ``>= 0``."""

    def _expected(self) -> str:
        return "integer class labels [N], >= 0"

    def _check(self, value: Any, name: str) -> torch.Tensor:
        return check_labels(value, name)


class Rule:
    """A relation between arguments, declared beside their constraints and checked after them.

    ``holds`` and ``message`` take the arguments it relates by name (their parameter
    names are the arguments'), canonical already; when ``holds`` is false the call
    raises ``ValueError(message(...))``.
    """

    def __init__(self, holds: Callable[..., bool], message: Callable[..., str]) -> None:
        self.holds, self.message = holds, message
        self.names = tuple(inspect.signature(holds).parameters)

    def check(self, values: Mapping[str, Any]) -> None:
        args = [values[name] for name in self.names]
        if not self.holds(*args):
            raise ValueError(self.message(*args))


def same_length(a: str, b: str) -> Rule:
    """Arguments ``a`` and ``b`` have the same length (first dimension)."""
    def message(x, y):
        return f"{a} and {b} must have the same length, got {len(x)} and {len(y)}"
    return Rule(_named(lambda x, y: len(x) == len(y), a, b), _named(message, a, b))


def divides(divisor: str, dividend: str, message: Callable[[int, int], str]) -> Rule:
    """Argument ``divisor`` divides argument ``dividend`` (an integer, or the length of a
    sequence); ``message(divisor, dividend)`` gets the two integers."""
    def size(value: Any) -> int:
        return value if isinstance(value, int) else len(value)
    return Rule(_named(lambda d, n: size(n) % d == 0, divisor, dividend),
                _named(lambda d, n: message(d, size(n)), divisor, dividend))


def _named(function: Callable, *names: str) -> Callable:
    """``function`` of positional arguments, its signature naming them ``names``."""
    function.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    return function


#: The name of an Avalanche stream ("test", "train"...).
STREAM = Instance(str, what="a stream name (str)")

Constraints = Mapping[str, Constraint]


def validate(constraints: Constraints, values: Mapping[str, Any]) -> dict[str, Any]:
    """Each value of ``values`` named in ``constraints``, checked and canonical.

    Names of ``values`` without a constraint are returned as they are.
    """
    return {name: constraints[name].check(value, name) if name in constraints else value
            for name, value in values.items()}


def validated(*rules: Rule, **constraints: Constraint) -> Callable:
    """Decorate a public function or ``__init__``: check its arguments once, on entry.

    ``constraints``: one per parameter; ``rules``: relations between parameters,
    checked after every constraint. The function receives the canonical values
    (``Int`` gives an ``int``, ``Real`` a ``float``, ``Device`` a ``torch.device``);
    its ``__signature__`` is kept.
    """

    def decorate(function: Callable) -> Callable:
        signature = inspect.signature(function)
        unknown = (set(constraints) | {n for r in rules for n in r.names}) - set(
            signature.parameters)
        if unknown:
            raise TypeError(f"constraints for unknown parameters {sorted(unknown)}")
        defaults = {n: p.default for n, p in signature.parameters.items()}  # what rules see

        @functools.wraps(function)
        def checked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            for name, value in list(bound.arguments.items()):
                if name in constraints:
                    bound.arguments[name] = constraints[name].check(value, name)
            if rules:
                values = {**defaults, **bound.arguments}
                for rule in rules:
                    rule.check(values)
            return function(*bound.args, **bound.kwargs)

        checked.constraints, checked.rules = dict(constraints), rules
        return checked

    return decorate


# ------------------------------------------------------------------ the checks by name
def check_int(value: Any, name: str, *, minimum: int | None = None,
              optional: bool = False) -> int | None:
    """``value`` as an ``int`` (``None`` passes when ``optional``); at least ``minimum``."""
    return Int(minimum, optional=optional).check(value, name)


def check_seed(value: Any, name: str = "seed") -> int:
    """A seed, see :class:`Seed`."""
    return Seed().check(value, name)


def check_bool(value: Any, name: str) -> bool:
    """``value`` as a ``bool``; only ``True``/``False`` (numpy's included) are accepted."""
    return Bool().check(value, name)


def check_number(value: Any, name: str, *, positive: bool) -> float:
    """``value`` as a finite ``float``, ``> 0`` when ``positive`` else ``>= 0``."""
    return (Real(gt=0.0) if positive else Real(ge=0.0)).check(value, name)


def check_fraction(value: Any, name: str) -> float:
    """A real number in ``[0, 1]`` (NaN refused) as a ``float``."""
    return Real(ge=0.0, le=1.0).check(value, name)


def check_device(value: Any, name: str = "device") -> torch.device:
    """``value`` as a ``torch.device`` that exists here, see :class:`Device`."""
    return Device().check(value, name)


def check_labels(targets: Any, name: str = "targets", *, n: int | None = None,
                 below: int | None = None, cap: str | None = None) -> torch.Tensor:
    """``targets`` as a 1-d int64 tensor of integer class labels ``>= 0``: neve's one label rule.

    Labels must have an integer dtype (Python ints, numpy or torch integers): float
    labels are refused, whole or not, so nothing is ever truncated. ``n``: the length
    they must have; ``below``: the bound every label must be under (a class cap),
    ``cap`` its name (e.g. ``"max_classes"``) for the message.
    """
    if isinstance(targets, (str, bytes)):
        raise TypeError(f"{name} must be integer class labels, got {targets!r}")
    try:
        if not isinstance(targets, (torch.Tensor, np.ndarray, list, tuple)):
            targets = list(targets)  # e.g. an Avalanche DataAttribute
        t = torch.as_tensor(targets)
    except (TypeError, ValueError, RuntimeError) as err:
        kind = type(targets).__name__
        raise TypeError(f"{name} must be integer class labels, got {kind}") from err
    if t.dim() != 1 or (n is not None and t.shape[0] != n):
        want = "[N]" if n is None else f"[{n}]"
        raise ValueError(f"{name} must be 1-d {want}, got shape {tuple(t.shape)}")
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must be integer class labels, got dtype {t.dtype}")
    if t.is_floating_point():
        whole = bool(torch.isfinite(t).all()) and bool((t == t.round()).all())
        raise ValueError(f"{name} must be integer class labels, got dtype {t.dtype}"
                         + (" (whole numbers: convert them with .long())" if whole
                            else " with non-integer values"))
    t = t.long()
    if t.numel() and int(t.min()) < 0:
        raise ValueError(f"{name} must hold class labels >= 0, got {int(t.min())}")
    if below is not None and t.numel() and int(t.max()) >= below:
        bound = f"{cap}={below}" if cap else str(below)
        raise ValueError(f"{name} must hold class labels < {bound}, got {int(t.max())}: labels "
                         f"are class indices{f' (raise {cap} for more classes)' if cap else ''}")
    return t


def check_labelled(dataset: Any, name: str) -> torch.Tensor:
    """The labels of a dataset with ``.targets``: a 1-d int64 tensor of integer values >= 0."""
    if not hasattr(dataset, "targets"):
        raise TypeError(f"{name} must be a dataset with .targets, got {type(dataset).__name__}")
    return check_labels(dataset.targets, f"{name}.targets")


def check_features(x: Any, name: str = "x", *, dim: int | None = None,
                   dim_name: str | None = None) -> torch.Tensor:
    """``x`` as ``[n, dim]`` finite floating-point features (any ``dim`` when None).

    ``dim_name``: the argument that set ``dim`` (e.g. ``"in_features"``), for the message.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 2 or (dim is not None and x.shape[1] != dim):
        want = "[n, D]" if dim is None else f"[n, {dim}]" + (
            f" ({dim_name}={dim})" if dim_name else "")
        raise ValueError(f"{name} must have shape {want}, got {tuple(x.shape)}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    # one cheap reduction unless the sum is not finite (finite but huge values overflow it)
    if x.numel() and not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} (features) contains NaN or inf values")
    return x
