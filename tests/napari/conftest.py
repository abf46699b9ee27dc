"""Fixtures for the widget tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def checkpoint(small_checkpoint) -> str:
    """The small seeded model as an official-format checkpoint, for the widget's model box."""
    return small_checkpoint
