"""SupervisedTemplate subclasses of neve."""

from neve.strategies.slca import SLCA

__all__: list[str] = ["SLCA"]
