"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2; bugs stay tracebacks."""

from __future__ import annotations


class SlimformerError(Exception):
    """Base class for every error caused by user input (bad path, bad data, bad option)."""


class DataError(SlimformerError):
    """The dataset cannot be found or read, or its content is unusable."""


class ModelError(SlimformerError):
    """The model folder is missing, unreadable, or does not fit the task."""


class ConfigError(SlimformerError):
    """An option or recipe value is invalid."""
