from leukoscope.evaluation.ood import ood_catch_rates, synthetic_ood_images
from leukoscope.inference.predictor import Predictor
from tests.inference.tiny import Tiny


def test_unfamiliar_inputs_are_flagged(tiny: Tiny) -> None:
    predictor = Predictor.load(tiny.model_dir)
    rates = ood_catch_rates(predictor, synthetic_ood_images(n=8, size=96))
    assert set(rates) == {"noise", "blank", "photo"}
    for kind, rate in rates.items():
        assert rate["rate"] >= 0.85, (kind, rate)
