"""Argument checks for neve's strategies: re-exported from :mod:`neve.models.arguments`."""

from ..models.arguments import (  # noqa: F401
    check_bool,
    check_device,
    check_int,
    check_number,
)
