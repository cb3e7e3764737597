"""Argument checks for the benchmark builders: re-exported from :mod:`neve.models.arguments`."""

from ..models.arguments import (  # noqa: F401
    check_bool,
    check_fraction,
    check_int,
    check_labelled,
    check_labels,
    check_number,
    check_seed,
)
