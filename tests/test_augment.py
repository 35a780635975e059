"""The distortion table and training augmentation: uint8 in and out, seeded, vectorised per sample."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kanjirec.augment import DISTORTIONS, augment_batch
from kanjirec.errors import ConfigError


def bar_images(batch: int = 4) -> torch.Tensor:
    """A horizontal bar (rows 30-33, columns 12-51) with a short vertical tick, ink 255 on 0."""
    img = torch.zeros(64, 64, dtype=torch.uint8)
    img[30:34, 12:52] = 255
    img[20:30, 20:24] = 255
    return img.expand(batch, 1, 64, 64).clone()


def principal_angle_degrees(img: torch.Tensor) -> float:
    """Orientation of the ink's main axis, 0 for horizontal, counter-clockwise on screen positive."""
    ys, xs = np.nonzero(img.numpy() > 127)
    cov = np.cov(np.stack([xs - xs.mean(), ys - ys.mean()]))
    vx, vy = np.linalg.eigh(cov)[1][:, -1]
    return math.degrees(math.atan2(-vy, vx)) % 180


def generator(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", list(DISTORTIONS))
def test_each_distortion_keeps_shape_dtype_identity_at_zero_and_is_seeded(name):
    d = DISTORTIONS[name]
    images = bar_images()
    assert len(d.severities) == 3 and all(0 < s <= 1 for s in d.severities)
    assert torch.equal(d.apply(images, 0.0, generator()), images)
    top = d.apply(images, 1.0, generator(7))
    assert top.dtype == torch.uint8 and top.shape == images.shape
    assert not torch.equal(top, images)
    assert torch.equal(top, d.apply(images, 1.0, generator(7)))


def test_rotation_turns_by_15_degrees_at_top_severity():
    images = bar_images(8)
    images[:, :, 20:30] = 0  # a plain bar, so the principal axis is the bar's
    out = DISTORTIONS["rotation"].apply(images, 1.0, generator())
    assert principal_angle_degrees(images[0, 0]) == pytest.approx(0, abs=0.5)
    angles = sorted(min(a, 180 - a) for a in (principal_angle_degrees(o[0]) for o in out))
    assert angles == pytest.approx([15.0] * 8, abs=1.0)


def test_stroke_width_distortions_change_the_ink_area():
    images = bar_images(1)
    ink = int((images > 127).sum())
    assert int((DISTORTIONS["thicken"].apply(images, 1.0, generator()) > 127).sum()) > 1.5 * ink
    assert int((DISTORTIONS["thin"].apply(images, 0.67, generator()) > 127).sum()) < 0.75 * ink


def test_invert_and_occlusion():
    images = bar_images(2)
    assert torch.equal(DISTORTIONS["invert"].apply(images, 1.0, generator()), 255 - images)
    occluded = DISTORTIONS["occlusion"].apply(images, 1.0, generator())
    assert bool((occluded <= images).all())  # occlusion only erases ink


@pytest.mark.parametrize("name", ["thicken", "thin", "blur", "contrast", "invert"])
def test_per_sample_strengths_match_one_sample_at_a_time(name):
    d = DISTORTIONS[name]
    images = bar_images(4)
    strengths = torch.tensor([0.0, 0.3, 0.6, 1.0])
    batch = d.apply(images, strengths, generator())
    for i, s in enumerate(strengths.tolist()):
        assert torch.equal(batch[i : i + 1], d.apply(images[i : i + 1], s, generator())), (name, s)


def test_augment_batch_is_reproducible_from_the_generator_and_varies_per_sample():
    images = bar_images(16)
    config = {"p": 0.8, "rotation": 1.0, "elastic": 0.5, "thicken": 0.5, "noise": 0.3}
    a = augment_batch(images, config, generator(3))
    assert torch.equal(a, augment_batch(images, config, generator(3)))
    assert not torch.equal(a, augment_batch(images, config, generator(4)))
    assert a.dtype == torch.uint8 and a.shape == images.shape
    assert len({bytes(x.numpy()) for x in a}) > 8  # each sample gets its own subset and strengths


def test_augment_batch_without_distortions_or_probability_changes_nothing():
    images = bar_images(4)
    assert torch.equal(augment_batch(images, {}, generator()), images)
    assert torch.equal(augment_batch(images, {"p": 0.0, "rotation": 1.0, "noise": 1.0}, generator()), images)


def test_augment_batch_rejects_unknown_names_and_bad_strengths():
    with pytest.raises(ConfigError, match=r"augment\.swirl: unknown distortion"):
        augment_batch(bar_images(), {"swirl": 0.5}, generator())
    with pytest.raises(ConfigError, match=r"augment\.rotation: 2\.0 is not a number in \[0, 1\]"):
        augment_batch(bar_images(), {"rotation": 2.0}, generator())
    with pytest.raises(ConfigError, match=r"augment\.p: 'often' is not a number"):
        augment_batch(bar_images(), {"p": "often"}, generator())
