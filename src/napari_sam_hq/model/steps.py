"""``exhaust``: run a step generator to its end. No torch here, so engine modules that must load
without torch (the session, the annotator, measurements) use it too; ``model.common``
re-exports it."""

from __future__ import annotations

from collections.abc import Generator
from typing import TypeVar

T = TypeVar("T")


def exhaust(gen: Generator[object, None, T]) -> T:
    """Run a step generator to the end and return its return value."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value
