"""The one place where neve checks the arguments that come in from outside.

Public classes and functions declare their parameters' constraints once, as a
table (scikit-learn's ``_parameter_constraints`` idea), and check them once at
the public entry, with :func:`validated` (a decorator) or :func:`validate` (a
call); the functions below that entry trust their inputs and say their
preconditions in their docstrings.

Every check returns the value in canonical form or raises a ``TypeError``
(wrong kind of value) or ``ValueError`` (right kind, wrong value) whose message
names the argument and says what was expected. Booleans are not numbers, and no
value is silently truncated (``2.5`` is not an integer, ``'0.1'`` not a number).
Checks of data (labels, features, tensors) and their constraints are in
:mod:`neve.models.core.data_checks`.
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
