from __future__ import annotations

import pytest

from leukoscope.inference import shift
from leukoscope.inference.shift import ADAPT, ShiftCheck, advice, check_shift
from tests.conftest import imported_packages


def test_an_in_domain_share_of_uncertain_cells_is_not_a_shift() -> None:
    # 12 of 200 flagged (6%) against 5% expected: what the demo sees on PBC images.
    check = check_shift([True] * 12 + [False] * 188, 0.05)
    assert not check.shifted and check.p_value > 0.1
    assert "12 of 200" in check.message


def test_a_sample_mostly_flagged_is_a_shift_with_a_clear_message() -> None:
    check = check_shift([True] * 40 + [False] * 60, 0.05)
    assert check.shifted and check.p_value < 1e-10
    assert check.share == pytest.approx(0.4)
    assert "unlike the model's training data" in check.message
    assert "review every cell" in check.message
    assert check.to_dict()["share"] == 0.4


def test_a_significant_but_small_excess_is_not_called_a_shift() -> None:
    # 8% of 5,000 cells is significantly above 5%, but less than twice it.
    check = check_shift([True] * 400 + [False] * 4600, 0.05)
    assert check.p_value < 1e-3 and not check.shifted


def test_few_cells_need_strong_evidence_and_no_cells_is_no_shift() -> None:
    assert not check_shift([True, False], 0.05).shifted
    assert check_shift([True] * 4, 0.05).shifted
    assert check_shift([], 0.05) == ShiftCheck(0, 0, 0.05, 1.0, False)
    with pytest.raises(ValueError, match="expected_share"):
        check_shift([True], 0.0)


@pytest.mark.parametrize(
    ("flagged", "cells"),
    [(0, 10), (1, 1), (12, 200), (300, 2109), (7, 7), (40, 100), (400, 5000), (3, 20000)],
)
def test_the_p_value_is_the_one_sided_binomial_test(flagged: int, cells: int) -> None:
    from scipy.stats import binomtest

    expected = binomtest(flagged, cells, 0.05, alternative="greater").pvalue
    uncertain = [True] * flagged + [False] * (cells - flagged)
    assert check_shift(uncertain, 0.05).p_value == pytest.approx(expected, rel=1e-9, abs=1e-300)


def test_cells_on_a_fields_edge_are_left_out() -> None:
    flags, edges = [True] * 30 + [False] * 70, [True] * 28 + [False] * 72
    check = check_shift(flags, 0.05, on_edge=edges)
    assert (check.cells, check.uncertain, check.shifted) == (72, 2, False)
    assert check_shift(flags, 0.05).shifted
    with pytest.raises(ValueError):
        check_shift(flags, 0.05, on_edge=edges[:-1])


def test_the_advice_names_the_adaptation_left_to_try() -> None:
    assert advice(renormalisable=False, renormalised=False) == ADAPT
    assert "adapt --unlabelled` on these images" in advice(renormalisable=True, renormalised=False)
    already = advice(renormalisable=False, renormalised=True)
    assert "already adapted without labels" in already and "--unlabelled" not in already
    check = check_shift([True] * 40 + [False] * 60, 0.05, already)
    assert check.message.endswith(already) and check.to_dict()["advice"] == already
    assert not check_shift([False] * 100, 0.05, already).message.endswith(already)


@pytest.mark.usefixtures("without_scipy")
def test_the_shift_check_does_not_import_scipy() -> None:
    # scipy.special alone took 0.35 s: a fifth of a one-image predict of a flagged cell.
    assert check_shift([True] * 3 + [False] * 5, 0.05).p_value < 0.01
    assert "scipy" not in imported_packages(shift)
