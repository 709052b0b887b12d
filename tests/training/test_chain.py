from __future__ import annotations

import pytest
import torch

from leukoscope.models import create_model, list_archs
from leukoscope.training.chain import ModelChain


@pytest.mark.parametrize("arch", list_archs())
def test_chain_reproduces_every_backbone_and_cuts_at_stage_starts(arch: str) -> None:
    torch.manual_seed(0)
    model = create_model(arch, 3, weights="none")
    chain = ModelChain(model)
    chain.check(96)
    n = len(model.stages)
    assert chain.cut(0) == len(chain.layers) - 1
    assert chain.cut(None) == chain.cut(n) == chain.stage_starts[0]
    assert chain.cut(1) == chain.stage_starts[-1]
    # The trainable part above a cut holds exactly the parameters of the trainable blocks.
    for stages in (0, 1, 2, None):
        top = chain.part(chain.cut(stages), len(chain.layers))
        blocks = chain.trainable_blocks(stages)
        assert {id(p) for p in top.parameters()} == {
            id(p) for block in blocks for p in block.parameters()
        }


def test_frozen_and_trainable_parts_compose_to_the_model() -> None:
    torch.manual_seed(0)
    model = create_model("squeezenet1_1", 4, weights="none").eval()
    chain = ModelChain(model)
    x = torch.randn(2, 3, 64, 64)
    cut = chain.cut(2)
    with torch.no_grad():
        composed = chain.part(cut, len(chain.layers))(chain.part(0, cut)(x))
        torch.testing.assert_close(composed, model(x))
