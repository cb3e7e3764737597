"""neve: continual-learning plugins for Avalanche.

The four sub-packages are :mod:`neve.models`, :mod:`neve.benchmarks`, :mod:`neve.plugins` and
:mod:`neve.strategies`; this module holds only the release number, read by ``setup.cfg``.
"""

__version__ = "0.2.0"

__all__ = ["__version__"]
