"""Step generators: run to the end, and run as part of a longer run."""

from __future__ import annotations

from napari_sam_hq.model.steps import exhaust, scaled


def _steps(*yields, value="done"):
    yield from yields
    return value


def test_scaled_maps_fractions_onto_its_part_and_keeps_the_value():
    steps = []
    gen = scaled(_steps(0.0, 0.5, (1.0, "own words")), 0.3, 0.7, "working")
    try:
        while True:
            steps.append(next(gen))
    except StopIteration as stop:
        value = stop.value
    assert steps == [(0.3, "working"), (0.5, "working"), (0.7, "own words")]
    assert value == "done"
    assert exhaust(scaled(_steps(), 0.0, 1.0, "x")) == "done"
