"""Whether a sample as a whole looks unlike the images a model was trained on.

A model flags each cell it is unsure of (low calibrated confidence or features far from every
class, see :mod:`leukoscope.inference.abstention`), and its abstention threshold is set so that
a known share of in-domain cells is flagged (5% for the released models). One cell more or less
says little; a sample with far more flagged cells than that says the images differ from the
training lab's (microscope, camera, stain, crop), and then the confident calls are suspect too:
on a third lab's images the first released models kept 23% of the cells as confident, and 5% of
those were right. :func:`check_shift` tests the flagged share against the expected one, so that
every consumer (CLI, reports, web app) can warn and hold back the differential's flags until a
person has reviewed the cells, and :func:`renormalised_or_why` decides whether such a sample is
classified again by its model renormalised on its cells (without importing the training code
when it cannot be).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from leukoscope.errors import LeukoscopeError

if TYPE_CHECKING:
    from leukoscope.inference.predictor import Predictor

SIGNIFICANCE = 1e-3
"""One-sided binomial p-value below which the flagged share is called too high."""
MIN_RATIO = 2.0
"""And the flagged share must be at least this multiple of the expected one: in a large
sample a share only a little above the expectation is significant yet harmless."""
MIN_RENORMALISE_CELLS = 32
"""Unlabelled cells :func:`~leukoscope.training.adapt.renormalise` needs: the statistics of
fewer are too noisy."""
SAMPLE_CELLS = 256
"""Most cells of one sample :func:`~leukoscope.training.adapt.renormalised_for_sample`
re-estimates the statistics on, spread evenly through it: eight times the fewest it accepts,
and a bound on the extra time a large sample costs (the statistics are averaged over cells,
so more add little)."""


ADAPT = "A model adapted to this lab's images (`leukoscope adapt`) may help."
"""What a shifted sample's message advises, unless the caller knows better (:func:`advice`)."""


@dataclass(frozen=True)
class ShiftCheck:
    """The result of :func:`check_shift` (JSON-ready through :meth:`to_dict`)."""

    cells: int
    uncertain: int
    expected_share: float
    p_value: float
    shifted: bool
    advice: str = ADAPT
    """The last sentence of a shifted sample's message: what may help."""

    @property
    def share(self) -> float:
        return self.uncertain / self.cells if self.cells else 0.0

    @property
    def message(self) -> str:
        """One sentence for a person, naming the shares."""
        if not self.shifted:
            return (
                f"{self.uncertain} of {self.cells} cells flagged uncertain ({self.share:.0%}; "
                f"about {self.expected_share:.0%} expected on images like the training data)."
            )
        return (
            f"These images look unlike the model's training data: {self.uncertain} of "
            f"{self.cells} cells are flagged uncertain ({self.share:.0%}, about "
            f"{self.expected_share:.0%} expected). Confident calls may be wrong too: review "
            f"every cell. {self.advice}"
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"share": round(self.share, 4), "message": self.message}


def advice(renormalisable: bool, renormalised: bool) -> str:
    """What may help a model whose sample looks shifted.

    Parameters
    ----------
    renormalisable:
        The model carries an abstention rule for renormalised models (an EfficientNet):
        unlabelled adaptation is open to it, and needs nothing but the sample's own images (on
        tecom's rapid stain it took the 5-class EfficientNet from 13% to 64%).
    renormalised:
        The model already is adapted so, without labels: labelled cells are what is left.

    Returns
    -------
    str
        One sentence naming the command.
    """
    if renormalised:
        return (
            "This model is already adapted without labels: adapting it with labelled cells of "
            "this lab (`leukoscope adapt`, e.g. on reviewed cells) may help."
        )
    if renormalisable:
        return (
            "A model adapted to this lab's images may help: `leukoscope adapt --unlabelled` on "
            "these images, or `leukoscope adapt` on labelled cells of this lab."
        )
    return ADAPT


def check_shift(
    uncertain: Sequence[bool],
    expected_share: float,
    advice: str = ADAPT,
    on_edge: Sequence[bool] | None = None,
) -> ShiftCheck:
    """Test whether a sample's share of uncertain cells exceeds what the model expects.

    Parameters
    ----------
    uncertain:
        One entry per readable cell of the sample: whether the model flagged it.
    expected_share:
        The share of in-domain cells the model flags (``1 - target_coverage`` of its
        abstention threshold).
    advice:
        The last sentence of the message of a shifted sample (:func:`advice`).
    on_edge:
        Whether each cell may be cut by its field's edge (:mod:`leukoscope.inference.fields`).
        Those cells are left out: they are flagged for being cut, which says nothing about the
        images being unlike the training data.

    Returns
    -------
    ShiftCheck
        ``shifted`` is true when the one-sided binomial test rejects ``expected_share`` at
        :data:`SIGNIFICANCE` and the observed share is at least :data:`MIN_RATIO` times it.
    """
    if not 0 < expected_share < 1:
        raise ValueError(f"expected_share must lie in (0, 1), not {expected_share}")
    if on_edge is not None:
        uncertain = [u for u, edge in zip(uncertain, on_edge, strict=True) if not edge]
    cells, flagged = len(uncertain), sum(bool(u) for u in uncertain)
    if not cells:
        return ShiftCheck(0, 0, expected_share, 1.0, False, advice)
    p_value = binomial_tail(flagged, cells, expected_share)
    shifted = p_value < SIGNIFICANCE and flagged / cells >= MIN_RATIO * expected_share
    return ShiftCheck(cells, flagged, expected_share, p_value, shifted, advice)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p): the one-sided p-value of ``scipy.stats.binomtest``
    (``alternative="greater"``), summed term by term in log space.

    Parameters
    ----------
    k, n : int
        Flagged cells and cells, ``0 <= k <= n``.
    p : float
        The expected share, in (0, 1).

    Returns
    -------
    float

    SciPy is not imported for it: ``scipy.special`` alone took 0.35 s, a fifth of a
    one-image ``predict`` of a cell the model flags (a larger sample imports SciPy anyway, to
    locate its cells). ``tests/inference/test_shift.py`` checks it against ``binomtest``.
    """
    if k <= 0:
        return 1.0
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    logs: list[float] = []
    top = -math.inf
    for i in range(k, n + 1):
        log_choose = log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1)
        logs.append(log_choose + i * log_p + (n - i) * log_q)
        top = max(top, logs[-1])
        # Past the mean the terms only fall: once one is under e^-60 of the largest, the
        # rest (fewer than a million) add less than 1e-20 of the sum.
        if i > n * p and logs[-1] < top - 60:
            break
    return min(1.0, math.exp(top) * math.fsum(math.exp(x - top) for x in logs))


def renormalised_or_why(
    predictor: Predictor,
    cells: int,
    renormalised: Callable[[], Predictor],
    on_start: Callable[[int], None] = lambda cells: None,
) -> Predictor | str:
    """``predictor``'s model renormalised on a shifted sample, or why not.

    Parameters
    ----------
    predictor
        The loaded model.
    cells
        How many of the sample's cells could be read (or were found in its fields).
    renormalised
        Makes the renormalised predictor:
        :func:`~leukoscope.training.adapt.renormalised_for_sample` or
        :func:`~leukoscope.training.adapt.renormalised_for_fields` on the sample. Called only
        when the model can be renormalised, so that a caller imports the training code (torch,
        about 7 s on two cores) only then.
    on_start
        Called with the number of cells renormalised on, before the work starts (a few
        seconds), so that a console can say what is happening.

    Returns
    -------
    Predictor or str
        The renormalised predictor; or why not: the model has no normalisation statistics,
        too few cells, or renormalising failed (say, the files changed since they were
        classified). ``predict``, ``differential`` and ``evaluate`` then keep the calls of the
        model as it is: a sample they cannot renormalise never ends the command.
    """
    if not predictor.renormalisable:
        return "this model has no normalisation statistics to re-estimate"
    if cells < MIN_RENORMALISE_CELLS:
        return f"fewer than {MIN_RENORMALISE_CELLS} readable cells"
    on_start(min(cells, SAMPLE_CELLS))
    try:
        return renormalised()
    except LeukoscopeError as exc:
        return str(exc)
