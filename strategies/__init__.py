"""SupervisedTemplate subclasses of neve."""

__all__: list[str] = []
