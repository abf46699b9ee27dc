"""Errors of the model package, importable without torch."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why and what to do."""
