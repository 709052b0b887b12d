from __future__ import annotations

import numpy as np
import pytest
import torch

from leukoscope.data.augment import (
    ChannelGain,
    HEDJitter,
    RandomGamma,
    RandomNoise,
    RandomRot90,
    RandomScale,
    hed_to_rgb,
    rgb_to_hed,
)
from leukoscope.data.preprocess import Augmentation, Preprocessing, create_transform
from leukoscope.training.profiles import LAB_ROBUST


def test_hed_conversion_matches_skimage_on_stain_colours() -> None:
    color = pytest.importorskip("skimage.color")
    stains = np.random.default_rng(0).uniform(0.0, 0.1, (8, 9, 3))
    rgb = color.hed2rgb(stains)
    ours = rgb_to_hed(torch.from_numpy(rgb).permute(2, 0, 1).float())
    np.testing.assert_allclose(ours.permute(1, 2, 0).numpy(), color.rgb2hed(rgb), atol=1e-5)
    back = hed_to_rgb(torch.from_numpy(stains).permute(2, 0, 1).float())
    np.testing.assert_allclose(back.permute(1, 2, 0).numpy(), rgb, atol=1e-5)


def test_hed_jitter_without_strength_is_identity_and_with_strength_changes_colour() -> None:
    image = torch.rand(3, 16, 16) * 0.9 + 0.05
    torch.testing.assert_close(HEDJitter(0.0)(image), image, atol=1e-4, rtol=0)
    torch.manual_seed(1)
    jittered = HEDJitter(0.2)(image)
    assert jittered.shape == image.shape
    assert (jittered - image).abs().mean() > 0.01
    with pytest.raises(TypeError):
        HEDJitter(0.1)(torch.zeros(3, 4, 4, dtype=torch.uint8))


def test_rot90_is_exact_and_reaches_all_four_rotations() -> None:
    image = torch.arange(3 * 4 * 4, dtype=torch.uint8).reshape(3, 4, 4)
    expected = {torch.rot90(image, k, dims=(1, 2)).numpy().tobytes() for k in range(4)}
    torch.manual_seed(0)
    seen = {RandomRot90()(image).numpy().tobytes() for _ in range(40)}
    assert seen == expected


def test_train_augmentation_is_seeded_and_normalises() -> None:
    augment = create_transform(
        Preprocessing(24, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        Augmentation(colour_jitter=0.1, hed_sigma=0.05),
    )
    image = torch.randint(0, 256, (3, 24, 24), dtype=torch.uint8)
    torch.manual_seed(3)
    first = augment(image)
    torch.manual_seed(3)
    second = augment(image)
    assert first.dtype == torch.float32 and first.shape == (3, 24, 24)
    torch.testing.assert_close(first, second)
    assert float(first.min()) >= -2.1 and float(first.max()) <= 2.1


def test_random_scale_zooms_out_onto_the_border_colour_and_in_by_cropping() -> None:
    image = torch.full((3, 40, 40), 0.8)
    image[:, 10:30, 10:30] = 0.2  # a dark square "cell" on a pale background
    out = RandomScale(0.0, shift=0.0).transform(image, {"factor": 0.5, "offset": torch.zeros(2)})
    assert out.shape == image.shape
    assert torch.allclose(out[:, :5, :], torch.tensor(0.8))  # padding is the background
    dark = (out[0] < 0.5).sum().item()
    assert 80 <= dark <= 120  # the square's area shrank four-fold (400 -> 100 pixels)
    zoomed = RandomScale(0.0, shift=0.0).transform(image, {"factor": 2.0, "offset": torch.zeros(2)})
    assert zoomed.shape == image.shape and (zoomed[0] < 0.5).all()  # the centre fills the frame


def test_colour_transforms_stay_in_range_and_do_what_they_say() -> None:
    image = torch.rand(3, 16, 16)
    gained = ChannelGain(0.3).transform(image, {"gain": torch.tensor([1.0, 1.0, 0.5])})
    torch.testing.assert_close(gained[2], image[2] * 0.5)
    torch.testing.assert_close(gained[:2], image[:2])
    darker = RandomGamma(0.5).transform(image, {"gamma": 2.0})
    torch.testing.assert_close(darker, image**2)
    noisy = RandomNoise(0.1).transform(image, {"sigma": 0.05})
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1
    assert 0.02 < float((noisy - image).std()) < 0.06


def test_lab_robust_augmentation_is_seeded_varied_and_keeps_the_image_size() -> None:
    config = Preprocessing(32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    augment = create_transform(config, LAB_ROBUST)
    image = torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8)
    torch.manual_seed(5)
    views = [augment(image) for _ in range(6)]
    torch.manual_seed(5)
    torch.testing.assert_close(augment(image), views[0])
    for view in views:
        assert view.shape == (3, 32, 32) and view.dtype == torch.float32
        assert float(view.min()) >= 0 and float(view.max()) <= 1
    spread = torch.stack([view.mean(dim=(1, 2)) for view in views]).std(dim=0)
    assert float(spread.max()) > 0.02  # the colour really changes from view to view
