"""`slimformer auto`: the user gives a budget, slimformer finds the model (see :func:`slimformer.auto.run.auto`)."""

from slimformer.auto.config import AutoConfig

__all__ = ["AutoConfig"]
