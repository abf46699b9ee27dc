"""``exhaust``: run a step generator to its end; ``scaled``: run one as part of a longer one.
No torch here, so engine modules that must load without torch (the session, the annotator,
measurements) use them too; ``model.common`` re-exports ``exhaust``."""

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


def scaled(
    gen: Generator[object, None, T], start: float, end: float, message: str
) -> Generator[tuple[float, str], None, T]:
    """``yield from gen`` as the part ``start``..``end`` of a longer run: ``gen`` yields
    fractions (or ``(fraction, message)``), this yields ``(fraction, message)`` with the
    fraction mapped onto that part and ``message`` for gen's own (or none). Returns gen's value."""
    while True:
        try:
            step = next(gen)
        except StopIteration as stop:
            return stop.value
        fraction, own = step if isinstance(step, tuple) else (step, None)
        yield start + (end - start) * fraction, own or message
