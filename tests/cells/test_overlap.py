"""The same cell in two overlapping fields: registration, box matching and lookalikes."""

from __future__ import annotations

import pytest

from leukoscope.cells.fields import locate_cells
from leukoscope.cells.overlap import Duplicate, field_offset, find_duplicates, grey
from tests.cells.drawing import smear

SMEAR = smear(
    (1600, 900),
    [(300, 300, 100), (700, 450, 110), (1200, 300, 100), (1400, 700, 90)],
    red_cells=150,
    red_diameter=60,
    seed=3,
)


@pytest.mark.parametrize(("x", "y"), [(550, 150), (120, 40), (700, 0)])
def test_the_offset_of_overlapping_fields_is_found(x: int, y: int) -> None:
    reference = grey(SMEAR[:700, :1000])
    moving = grey(SMEAR[y : y + 700, x : x + 700])  # another size too
    offset = field_offset(reference, moving)
    assert offset is not None
    assert offset == pytest.approx((x, y), abs=6)


def test_fields_without_a_known_overlap_have_no_offset() -> None:
    other = smear((1000, 700), [(300, 300, 100)], red_cells=80, red_diameter=60, seed=9)
    assert field_offset(grey(SMEAR[:700, :1000]), grey(other)) is None
    assert field_offset(grey(SMEAR[:700, :1000]), grey(SMEAR[:700, 960:1600])) is None  # 40 px


def test_a_cell_in_both_fields_is_the_same_and_a_lookalike_only_possibly() -> None:
    left, right = SMEAR[:700, :1000], SMEAR[150:850, 550:1550]
    left_boxes = locate_cells(left)
    right_boxes = locate_cells(right)
    found = find_duplicates(grey(right), right_boxes, [(grey(left), left_boxes)])
    (same,) = [(k, d) for k, d in enumerate(found) if d is not None]
    k, duplicate = same
    assert duplicate.kind == "same" and duplicate.field == 0
    assert left_boxes[duplicate.cell].x_min - 550 == pytest.approx(right_boxes[k].x_min, abs=6)
    other = smear((1000, 700), [(500, 350, 100)], red_cells=80, red_diameter=60, seed=9)
    assert find_duplicates(grey(other), locate_cells(other), [(grey(left), left_boxes)]) == [
        Duplicate("possible", 0, 0)
    ]
    assert find_duplicates(grey(other), [], [(grey(left), left_boxes)]) == []
