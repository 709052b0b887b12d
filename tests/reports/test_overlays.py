"""Grad-CAM overlay names stay unique when images of different folders share a name."""

from __future__ import annotations

from leukoscope.reports.overlays import _unique


def test_repeated_names_get_a_counter() -> None:
    used: set[str] = set()
    assert [_unique("cell_gradcam", used) for _ in range(3)] == [
        "cell_gradcam",
        "cell_gradcam_2",
        "cell_gradcam_3",
    ]
    assert _unique("other_gradcam", used) == "other_gradcam"
