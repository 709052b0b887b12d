import json

import pytest

from leukoscope.classes import PBC8, WBC5
from leukoscope.reports import differential
from leukoscope.reports.differential import (
    DISCLAIMER,
    REFERENCE_RANGES,
    CellCall,
    compute_differential,
    render_html,
    render_markdown,
    wilson_interval,
)
from tests.conftest import imported_packages

NORMAL = {"neutrophil": 60, "lymphocyte": 30, "monocyte": 6, "eosinophil": 3, "basophil": 1}


def calls(counts: dict[str, int], uncertain: dict[str, int] | None = None) -> list[CellCall]:
    cells = [CellCall(label) for label, n in counts.items() for _ in range(n)]
    flagged = [CellCall(label, True) for label, n in (uncertain or {}).items() for _ in range(n)]
    return cells + flagged


def codes(differential: dict) -> set[str]:
    return {flag["code"] for flag in differential["flags"]}


def test_a_normal_differential_raises_no_flag() -> None:
    differential = compute_differential(calls(NORMAL), WBC5)
    assert codes(differential) == set()
    assert {row["status"] for row in differential["rows"]} == {"normal"}


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        (
            {"neutrophil": 85, "lymphocyte": 10, "monocyte": 3, "eosinophil": 2},
            {"neutrophilia", "lymphopenia"},
        ),
        (
            {"neutrophil": 30, "lymphocyte": 60, "monocyte": 6, "eosinophil": 3, "basophil": 1},
            {"neutropenia", "lymphocytosis"},
        ),
        (
            {"neutrophil": 55, "lymphocyte": 25, "monocyte": 15, "eosinophil": 4, "basophil": 1},
            {"monocytosis"},
        ),
        (
            {"neutrophil": 55, "lymphocyte": 30, "monocyte": 4, "eosinophil": 10, "basophil": 1},
            {"eosinophilia"},
        ),
        (
            {"neutrophil": 60, "lymphocyte": 28, "monocyte": 5, "eosinophil": 3, "basophil": 4},
            {"basophilia"},
        ),
    ],
)
def test_range_flags(counts: dict[str, int], expected: set[str]) -> None:
    assert codes(compute_differential(calls(counts), WBC5)) == expected


def test_values_on_the_reference_limits_are_not_flagged() -> None:
    counts = {"neutrophil": 80, "lymphocyte": 20, "monocyte": 0, "eosinophil": 0, "basophil": 0}
    # monocytes and eosinophils below their ranges raise no flag: there is none for low counts
    assert codes(compute_differential(calls(counts), WBC5)) == set()


def test_presence_flags_need_an_eight_class_model_and_a_cell() -> None:
    assert codes(compute_differential(calls(NORMAL), PBC8)) == set()
    flagged = compute_differential(calls(NORMAL | {"ig": 2, "erythroblast": 3}), PBC8)
    assert codes(flagged) == {"immature_granulocytes", "erythroblasts"}
    uncertain_only = calls(NORMAL, {"ig": 2, "erythroblast": 1})
    assert codes(compute_differential(uncertain_only, PBC8)) == set()


def test_platelets_and_erythroblasts_stay_out_of_the_white_cell_percentages() -> None:
    differential = compute_differential(calls(NORMAL | {"platelet": 40, "erythroblast": 5}), PBC8)
    assert differential["white_cells_counted"] == 100
    assert differential["platelets"] == {"count": 40}
    assert differential["erythroblasts"] == {"count": 5, "per_100_white_cells": 5.0}
    assert {row["class"] for row in differential["rows"]} == set(PBC8) - {
        "platelet",
        "erythroblast",
    }
    assert sum(row["percent"] for row in differential["rows"]) == pytest.approx(100.0)


def test_uncertain_cells_are_counted_apart() -> None:
    differential = compute_differential(calls(NORMAL, {"neutrophil": 7, "monocyte": 3}), WBC5)
    assert differential["white_cells_counted"] == 100
    assert differential["cells_total"] == 110
    assert differential["for_review"] == {
        "total": 10,
        "by_predicted_class": {"neutrophil": 7, "monocyte": 3},
    }
    neutrophils = next(r for r in differential["rows"] if r["class"] == "neutrophil")
    assert neutrophils["count"] == 60 and neutrophils["percent"] == pytest.approx(60.0)


def test_intervals_contain_the_estimate_and_narrow_with_more_cells() -> None:
    small = compute_differential(calls({k: v // 10 for k, v in NORMAL.items()}), WBC5)
    large = compute_differential(calls({k: v * 10 for k, v in NORMAL.items()}), WBC5)
    for row in small["rows"] + large["rows"]:
        assert 0 <= row["ci_low"] <= row["percent"] <= row["ci_high"] <= 100
    small_n = next(r for r in small["rows"] if r["class"] == "neutrophil")
    large_n = next(r for r in large["rows"] if r["class"] == "neutrophil")
    assert large_n["ci_high"] - large_n["ci_low"] < small_n["ci_high"] - small_n["ci_low"]
    assert any("Only 9 white cells" in note for note in small["notes"])


@pytest.mark.parametrize(
    ("count", "total"), [(0, 1), (1, 1), (0, 9), (3, 9), (60, 100), (999, 1000), (12, 2037)]
)
def test_the_interval_is_scipys_wilson_score_interval(count: int, total: int) -> None:
    from scipy.stats import binomtest

    ci = binomtest(count, total).proportion_ci(confidence_level=0.95, method="wilson")
    low, high = wilson_interval(count, total)
    assert (low, high) == pytest.approx((100 * ci.low, 100 * ci.high), rel=1e-12, abs=1e-12)


@pytest.mark.usefixtures("without_scipy")
def test_the_differential_does_not_import_scipy() -> None:
    # scipy.stats took 1-2 s to import: more than the rest of a small differential's start-up.
    assert compute_differential([CellCall("neutrophil")] * 3, ["neutrophil", "monocyte"])
    assert "scipy" not in imported_packages(differential)


def test_definite_only_when_the_interval_clears_the_limit() -> None:
    few = compute_differential(calls({"neutrophil": 9, "lymphocyte": 1}), WBC5)
    many = compute_differential(calls({"neutrophil": 900, "lymphocyte": 100}), WBC5)
    assert [f["definite"] for f in few["flags"] if f["code"] == "neutrophilia"] == [False]
    assert [f["definite"] for f in many["flags"] if f["code"] == "neutrophilia"] == [True]


def test_no_white_cells_gives_empty_percentages() -> None:
    differential = compute_differential(calls({}, {"neutrophil": 3}), WBC5)
    assert differential["white_cells_counted"] == 0
    assert all(row["percent"] is None for row in differential["rows"])
    assert codes(differential) == set()
    assert "–" in render_markdown(differential)


def test_unknown_labels_are_refused() -> None:
    with pytest.raises(ValueError, match="platelet"):
        compute_differential([CellCall("platelet")], WBC5)


def test_reports_carry_the_disclaimer_flags_and_reference() -> None:
    differential = compute_differential(calls(NORMAL | {"neutrophil": 150}), WBC5)
    differential["sample"] = "smear <7>"
    json.dumps(differential)  # JSON-ready
    markdown, page = render_markdown(differential), render_html(differential)
    for text in (markdown, page):
        assert DISCLAIMER in text
        assert "not a diagnosis" in text
        assert "Dacie and Lewis" in text
        assert "neutrophilia" in text
    assert "smear &lt;7&gt;" in page and "<script" not in page
    assert "| neutrophil | 150 |" in markdown
    assert REFERENCE_RANGES["neutrophil"] == (40.0, 80.0)


def test_a_shifted_sample_withholds_its_flags_and_every_rendering_warns() -> None:
    from leukoscope.inference.shift import check_shift
    from leukoscope.reports.differential import render_html, render_markdown

    classes = ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")
    cells = [CellCall("eosinophil")] * 30 + [CellCall("neutrophil", uncertain=True)] * 20
    plain = compute_differential(cells, classes)
    assert plain["flags"] and plain["shift"] is None and plain["withheld_flags"] == []
    shift = check_shift([c.uncertain for c in cells], 0.05)
    shifted = compute_differential(cells, classes, shift)
    assert shifted["flags"] == [] and shifted["withheld_flags"] == plain["flags"]
    assert shifted["shift"]["shifted"] is True
    for text in (render_markdown(shifted), render_html(shifted)):
        assert "look unlike the model" in text
        assert "withheld until a person has reviewed every cell" in text
    assert "unlike" not in render_markdown(plain)
    reviewed = compute_differential(cells, classes, shift, reviewed=True)
    assert reviewed["flags"] == plain["flags"] and reviewed["withheld_flags"] == []
    assert "look unlike the model" in render_markdown(reviewed)  # the warning stays
