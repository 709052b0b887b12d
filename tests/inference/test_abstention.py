import numpy as np
import pytest
import safetensors.numpy

from leukoscope.errors import LeukoscopeError
from leukoscope.inference.abstention import (
    STATS_NAME,
    Abstainer,
    confidence_scores,
    fit_threshold,
    pack_stats,
    unpack_stats,
)
from leukoscope.inference.predictor import Predictor
from tests.inference.tiny import Tiny


@pytest.mark.parametrize("target", [0.5, 0.8, 0.95, 0.99, 1.0])
def test_threshold_keeps_the_target_coverage(target: float) -> None:
    scores = np.random.default_rng(1).normal(size=1000)
    threshold = fit_threshold(scores, target)
    coverage = (scores >= threshold).mean()
    assert target <= coverage <= target + 1 / 1000


def test_threshold_rejects_impossible_coverage() -> None:
    with pytest.raises(LeukoscopeError):
        fit_threshold(np.ones(3), 0.0)


def test_energy_and_msp_rank_confident_logits_higher() -> None:
    logits = np.array([[8.0, 0.0, 0.0], [1.0, 0.9, 0.8]])
    for score in ("msp", "energy"):
        high, low = confidence_scores(logits, 1.0, score)
        assert high > low


def test_abstainer_flags_features_far_from_every_class() -> None:
    rng = np.random.default_rng(0)
    means = np.array([[0.0] * 8, [5.0] * 8])
    labels = np.repeat([0, 1], 200)
    features = means[labels] + rng.normal(size=(400, 8))
    logits = np.stack([-((features - m) ** 2).sum(1) for m in means], axis=1) / 10
    abstainer = Abstainer.fit(features, labels, logits, features, temperature=1.0)
    abstainer.threshold = fit_threshold(abstainer.scores(logits, features), 0.95)
    far = np.full((5, 8), 40.0)
    far_logits = np.tile([0.0, 50.0], (5, 1))  # confidently class 1, but nowhere near it
    assert (abstainer.scores(far_logits, far) < abstainer.threshold).all()
    fitted = Abstainer.fit(
        features, labels, logits, features, temperature=1.0, target_coverage=0.95
    )
    assert fitted.threshold == abstainer.threshold  # the threshold fitted with the rule


def test_familiar_cells_are_mostly_kept(tiny: Tiny) -> None:
    predictor = Predictor.load(tiny.model_dir)
    test = tiny.split("test")
    predictions = predictor.predict_paths([p for p, _ in test], workers=0)
    assert sum(p.uncertain for p in predictions) <= len(test) // 4
    right = sum(p.label == label for p, (_, label) in zip(predictions, test, strict=True))
    assert right >= 0.75 * len(test)


def test_packed_statistics_restore_the_very_file(tiny: Tiny) -> None:
    data = (tiny.model_dir / STATS_NAME).read_bytes()
    packed = pack_stats(data)
    assert len(packed) < 0.8 * len(data)  # the whitening matrix's upper triangle is all zeros
    assert unpack_stats(packed) == data
    square = safetensors.numpy.save({"whitening": np.ones((3, 3), np.float32)})
    assert pack_stats(square) == square == unpack_stats(square)  # not triangular: kept whole
