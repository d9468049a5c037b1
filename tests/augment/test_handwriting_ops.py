"""Shear, elastic displacement and stroke thickness in ImageAugmentation."""

import numpy as np
import pytest
import torch

from skcueco.augment import ImageAugmentation

PLAIN = dict(crop_scale=None, flip=False, color_jitter=None, grayscale_p=0.0)


def _bar(n=6, side=28, width=3):
    x = torch.zeros(n, 1, side, side)
    c = side // 2
    x[:, :, 4:side - 4, c - width // 2:c - width // 2 + width] = 1.0
    return x


def _column_centre(img):
    """Centre of mass along x of each row (NaN for empty rows)."""
    cols = torch.arange(img.shape[-1], dtype=img.dtype)
    mass = img.sum(-1)
    return (img * cols).sum(-1) / mass


def test_shear_slants_a_vertical_bar_by_the_drawn_angle():
    x = _bar()
    y = ImageAugmentation(shear=30.0, **PLAIN)(x, torch.Generator().manual_seed(0))
    slopes = []
    for img in y[:, 0]:
        centre = _column_centre(img)
        rows = torch.arange(8, 20)
        slope = np.polyfit(rows.numpy(), centre[rows].numpy(), 1)[0]
        slopes.append(slope)
        # the middle row stays where it was
        assert abs(centre[14] - _column_centre(x[0, 0])[14]) < 0.6
    slopes = np.abs(slopes)
    assert slopes.max() <= np.tan(np.radians(30.0)) + 0.05
    assert slopes.max() > 0.1  # six draws from [-30, 30] degrees: one is sizeable
    # no shear, no change
    same = ImageAugmentation(shear=0.0, **PLAIN)(x, torch.Generator().manual_seed(0))
    assert torch.equal(same, x)


def test_elastic_displacement_is_smooth_and_has_the_requested_size():
    aug = ImageAugmentation(elastic=2.0, **PLAIN)
    x = torch.rand(16, 1, 32, 32)
    field = aug._displacement(torch.Generator().manual_seed(0), 16, 32, 32, x)
    pixels = field * torch.tensor([32 / 2, 32 / 2])  # back to pixels
    std = pixels.std().item()
    assert 0.8 < std < 2.4
    # neighbouring pixels move almost alike: a wobble, not noise
    step = (pixels[:, 1:] - pixels[:, :-1]).abs().mean().item()
    assert step < 0.25 * pixels.abs().mean().item()
    # larger setting, larger displacement; the view differs from the image
    big = ImageAugmentation(elastic=4.0, **PLAIN)._displacement(
        torch.Generator().manual_seed(0), 16, 32, 32, x)
    assert torch.allclose(big, 2 * field)
    y = aug(_bar(), torch.Generator().manual_seed(1))
    assert not torch.equal(y, _bar())


def test_elastic_views_are_reproducible_with_the_generator():
    aug = ImageAugmentation(elastic=1.0, shear=10.0, thickness=0.5, **PLAIN)
    x = torch.rand(5, 1, 20, 20)
    a = aug(x, torch.Generator().manual_seed(3))
    b = aug(x, torch.Generator().manual_seed(3))
    c = aug(x, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_thickness_makes_each_chosen_stroke_thicker_or_thinner():
    x = _bar(n=64)
    y = ImageAugmentation(thickness=1.0, **PLAIN)(x, torch.Generator().manual_seed(0))
    ink_before = x.sum((1, 2, 3))
    ink_after = y.sum((1, 2, 3))
    thicker, thinner = ink_after > ink_before + 1, ink_after < ink_before - 1
    # every image changes, some each way
    assert thicker.sum() > 10 and thinner.sum() > 10
    assert int(thicker.sum() + thinner.sum()) >= 60
    # a blend with the 3x3 dilation or erosion: never beyond them
    grown = torch.nn.functional.max_pool2d(x, 3, 1, 1)
    shrunk = -torch.nn.functional.max_pool2d(-x, 3, 1, 1)
    assert (y <= grown + 1e-6).all() and (y >= shrunk - 1e-6).all()
    # probability 0: untouched
    none = ImageAugmentation(thickness=0.0, **PLAIN)(x, torch.Generator().manual_seed(0))
    assert torch.equal(none, x)


def test_new_operations_off_draw_as_before():
    # the recipe's random draws do not move when the new operations are off,
    # so existing recipes give the same views as before they existed
    x = torch.rand(7, 3, 16, 16)
    base = ImageAugmentation()
    off = ImageAugmentation(shear=0.0, elastic=0.0, thickness=0.0)
    assert torch.equal(base(x, torch.Generator().manual_seed(0)),
                       off(x, torch.Generator().manual_seed(0)))
    assert base._plan(3)[0].keys() == off._plan(3)[0].keys()
    assert base._plan(3)[0]["shear"] == 0 and base._plan(3)[0]["thickness"] == 0


@pytest.mark.parametrize("params, match", [
    ({"shear": 90.0}, "shear"),
    ({"shear": -1.0}, "shear"),
    ({"elastic": -0.5}, "elastic"),
    ({"thickness": 1.5}, "thickness"),
])
def test_bad_values_are_named(params, match):
    with pytest.raises(ValueError, match=match):
        ImageAugmentation(**params)
