import math

import pytest
import torch

from skcueco.augment import (
    Augmentation,
    CallableAugmentation,
    ImageAugmentation,
    NoAugmentation,
    VectorAugmentation,
    grayscale_augmentation,
    make_augmentation,
    rgb_augmentation,
)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _images(n=16, c=3, h=16, w=16, seed=0):
    return torch.rand(n, c, h, w, generator=_gen(seed))


# Only geometry: crop_scale=(1, 1) falls back to the whole image (see
# torchvision's RandomResizedCrop), so these configs isolate single operations.
NO_COLOUR = dict(color_jitter=None, jitter_p=0.0, grayscale_p=0.0)

IMAGE_CASES = [
    ("rgb", lambda: rgb_augmentation(16), (3, 16, 16)),
    ("rgb_blur", lambda: rgb_augmentation(40), (3, 40, 40)),
    ("grayscale", lambda: grayscale_augmentation(8), (1, 8, 8)),
    ("rgb_on_1ch", lambda: ImageAugmentation(), (1, 12, 12)),
    (
        "everything",
        lambda: ImageAugmentation(
            rotation=30.0, translate=0.2, blur=True, noise_std=0.1
        ),
        (3, 12, 20),
    ),
    ("four_channels", lambda: ImageAugmentation(**NO_COLOUR), (4, 10, 10)),
]


@pytest.mark.parametrize(
    "name, factory, chw", IMAGE_CASES, ids=[c[0] for c in IMAGE_CASES]
)
def test_image_views_keep_shape_dtype_range(name, factory, chw):
    for dtype in (torch.float32, torch.float64):
        x = _images(8, *chw).to(dtype)
        views = factory()(x, _gen())
        assert views.shape == x.shape
        assert views.dtype == dtype
        assert views.min() >= 0 and views.max() <= 1
        assert torch.isfinite(views).all()
        assert not torch.allclose(views, x)


@pytest.mark.parametrize(
    "aug, x",
    [
        (rgb_augmentation(40), _images(4, 3, 40, 40)),
        (
            ImageAugmentation(rotation=20.0, translate=0.1, blur=True, noise_std=0.1),
            _images(4),
        ),
        (grayscale_augmentation(8), _images(4, 1, 8, 8)),
        # Nothing enabled: the identity path must still copy.
        (ImageAugmentation(crop_scale=None, flip=False, **NO_COLOUR), _images(4)),
        (VectorAugmentation(), torch.randn(6, 5, generator=_gen())),
        (NoAugmentation(), _images(4)),
        (CallableAugmentation(lambda v: v.mul_(2)), _images(4)),
    ],
    ids=["rgb", "everything", "grayscale", "nothing", "vector", "none", "callable"],
)
def test_input_not_modified(aug, x):
    before = x.clone()
    views = aug(x, _gen())
    assert torch.equal(x, before)
    assert views.data_ptr() != x.data_ptr()


@pytest.mark.parametrize(
    "aug, x",
    [
        (rgb_augmentation(16), _images(1).expand(32, 3, 16, 16)),
        (grayscale_augmentation(8), _images(1, 1, 8, 8).expand(32, 1, 8, 8)),
        (VectorAugmentation(), torch.randn(1, 10, generator=_gen()).expand(32, 10)),
    ],
    ids=["rgb", "grayscale", "vector"],
)
def test_each_row_gets_its_own_randomness(aug, x):
    views = aug(x, _gen()).flatten(1)
    distances = torch.cdist(views, views)
    off_diagonal = distances[~torch.eye(len(views), dtype=torch.bool)]
    assert (off_diagonal > 0).all()


@pytest.mark.parametrize(
    "aug, x",
    [
        (rgb_augmentation(40), _images(8, 3, 40, 40)),
        (grayscale_augmentation(8), _images(8, 1, 8, 8)),
        (VectorAugmentation(), torch.randn(8, 10, generator=_gen())),
    ],
    ids=["rgb", "grayscale", "vector"],
)
def test_generator_controls_randomness(aug, x):
    same_a = aug(x, _gen(1))
    same_b = aug(x, _gen(1))
    assert torch.equal(same_a, same_b)
    assert not torch.equal(same_a, aug(x, _gen(2)))

    # Two consecutive calls on one generator are the two views of a step.
    g = _gen(1)
    view_1, view_2 = aug(x, g), aug(x, g)
    assert torch.equal(view_1, same_a)
    assert not torch.equal(view_1, view_2)


def test_augmentations_do_not_touch_global_rng():
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    rgb_augmentation(40)(_images(4, 3, 40, 40), _gen())
    VectorAugmentation()(torch.ones(4, 3), _gen())
    assert torch.equal(torch.rand(3), expected)


def test_flip_only_gives_image_or_mirror():
    # Distinct values everywhere, so a mirror can never pass for the image.
    image = torch.linspace(0, 1, 3 * 6 * 7).view(1, 3, 6, 7) ** 2
    x = image.expand(64, 3, 6, 7)
    aug = ImageAugmentation(crop_scale=(1.0, 1.0), flip=True, **NO_COLOUR)
    views = aug(x, _gen())
    is_same = (views - image).abs().amax(dim=(1, 2, 3)) < 1e-5
    is_mirror = (views - image.flip(-1)).abs().amax(dim=(1, 2, 3)) < 1e-5
    assert (is_same ^ is_mirror).all()
    # p = 0.5 per image: with 64 images both outcomes occur.
    assert 10 < is_mirror.sum() < 54


def test_full_crop_without_flip_is_identity():
    # Non-square, with a width / height ratio inside crop_ratio so that the
    # fallback box is the whole image.
    x = _images(8, 3, 9, 11)
    aug = ImageAugmentation(crop_scale=(1.0, 1.0), flip=False, **NO_COLOUR)
    torch.testing.assert_close(aug(x, _gen()), x, atol=1e-5, rtol=0)


def test_crop_zooms_within_scale_range():
    # On a horizontal ramp a square crop of area fraction a is again a ramp,
    # with its slope multiplied by sqrt(a).
    h = w = 32
    ramp = torch.linspace(0, 1, w).view(1, 1, 1, w).expand(200, 1, h, w)
    aug = ImageAugmentation(
        crop_scale=(0.2, 1.0), crop_ratio=(1.0, 1.0), flip=False, **NO_COLOUR
    )
    views = aug(ramp, _gen())
    slope = (views[..., 20] - views[..., 10]).mean(dim=(1, 2)) / (
        ramp[0, 0, 0, 20] - ramp[0, 0, 0, 10]
    )
    assert slope.min() > math.sqrt(0.2) - 0.02
    assert slope.max() < 1 + 1e-4
    assert slope.max() - slope.min() > 0.3


def test_grayscale_p1_gives_equal_channels():
    x = _images(8)
    aug = ImageAugmentation(crop_scale=(1.0, 1.0), flip=False, grayscale_p=1.0)
    views = aug(x, _gen())
    assert torch.equal(views[:, 0], views[:, 1])
    assert torch.equal(views[:, 1], views[:, 2])
    assert not torch.equal(x[:, 0], x[:, 1])


def test_jitter_p0_leaves_colours_and_p1_changes_every_image():
    x = _images(16)
    base = dict(crop_scale=None, flip=False, grayscale_p=0.0)
    unchanged = ImageAugmentation(jitter_p=0.0, **base)(x, _gen())
    assert torch.equal(unchanged, x)
    jittered = ImageAugmentation(jitter_p=1.0, **base)(x, _gen())
    assert ((jittered - x).abs().amax(dim=(1, 2, 3)) > 1e-3).all()


def test_one_channel_jitter_is_brightness_contrast():
    # A brightness/contrast change maps every pixel through one increasing
    # affine function per image (before clamping), so pixel order is kept.
    x = torch.linspace(0.3, 0.7, 25).view(1, 1, 5, 5).expand(16, 1, 5, 5)
    aug = ImageAugmentation(
        crop_scale=None, flip=False, color_jitter=(0.2, 0.2, 0.4, 0.5), jitter_p=1.0
    )
    views = aug(x, _gen()).flatten(1)
    assert (views.diff(dim=1) > 0).all()
    assert views.std(dim=0).max() > 0.01


def test_vector_masking_never_masks_all_and_rate_matches():
    aug = VectorAugmentation(noise_std=0.0, mask_p=0.3)
    x = torch.rand(2000, 50, generator=_gen()) + 1  # no natural zeros
    masked = aug(x, _gen()) == 0
    assert abs(masked.float().mean().item() - 0.3) < 0.01
    kept = ~masked
    torch.testing.assert_close(aug(x, _gen())[kept], x[kept], rtol=0, atol=0)

    # With two features and mask_p close to 1, most draws mask everything.
    views = VectorAugmentation(noise_std=0.0, mask_p=0.95)(torch.ones(500, 2), _gen())
    assert (views != 0).any(dim=1).all()
    single = VectorAugmentation(noise_std=0.0, mask_p=0.9)(torch.ones(100, 1), _gen())
    assert torch.equal(single, torch.ones(100, 1))


def test_vector_noise_has_requested_scale():
    x = torch.zeros(4000, 25)
    views = VectorAugmentation(noise_std=0.5, mask_p=0.0)(x, _gen())
    assert abs(views.std().item() - 0.5) < 0.01


def test_no_augmentation_is_a_copy():
    x = _images(2)
    out = NoAugmentation()(x, _gen())
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


def test_callable_augmentation_checks_output():
    x = _images(2)
    assert torch.equal(CallableAugmentation(lambda v: 1 - v)(x), 1 - x)
    with pytest.raises(ValueError, match="augmentation"):
        CallableAugmentation(lambda v: v[:, :, :4])(x)
    with pytest.raises(TypeError, match="augmentation.*Tensor"):
        CallableAugmentation(lambda v: v.numpy())(x)
    with pytest.raises(TypeError):
        CallableAugmentation("not callable")


def test_invalid_batches_and_generators_raise():
    with pytest.raises(ValueError, match="4-d"):
        ImageAugmentation()(torch.rand(3, 4), _gen())
    with pytest.raises(ValueError, match="2-d"):
        VectorAugmentation()(torch.rand(3, 4, 5), _gen())
    with pytest.raises(TypeError, match="floating"):
        ImageAugmentation()(torch.zeros(2, 3, 4, 4, dtype=torch.uint8), _gen())
    with pytest.raises(TypeError, match="generator"):
        ImageAugmentation()(_images(2), 0)


@pytest.mark.parametrize(
    "params",
    [
        dict(crop_scale=(0.5, 0.2)),
        dict(crop_scale=(0.0, 1.0)),
        dict(color_jitter=(0.4, 0.4, 0.4, 0.6)),
        dict(jitter_p=1.5),
        dict(padding_mode="wrap"),
        dict(translate=(0.1, 0.1, 0.1)),
    ],
)
def test_image_augmentation_rejects_bad_parameters(params):
    with pytest.raises(ValueError):
        ImageAugmentation(**params)


def test_make_augmentation_auto_recipes():
    vector = make_augmentation("auto", input_kind="vector")
    assert isinstance(vector, VectorAugmentation)

    gray = make_augmentation("auto", input_kind="image", n_channels=1, image_size=8)
    assert isinstance(gray, ImageAugmentation)
    assert gray.flip is False and gray.crop_scale == (0.5, 1.0)
    assert gray.rotation > 0 and gray.translate > 0 and gray.noise_std > 0
    assert gray.color_jitter[2:] == (0.0, 0.0) and gray.grayscale_p == 0

    small = make_augmentation("auto", input_kind="image", n_channels=3, image_size=32)
    assert small.flip is True and small.crop_scale == (0.2, 1.0)
    assert small.color_jitter == (0.4, 0.4, 0.4, 0.1) and small.jitter_p == 0.8
    assert small.grayscale_p == 0.2 and small.blur is False
    large = make_augmentation(
        "auto", input_kind="image", n_channels=3, image_size=(64, 48)
    )
    assert large.blur is True

    other = make_augmentation("auto", input_kind="image", n_channels=4, image_size=16)
    assert other.flip is True and other.color_jitter is None and other.grayscale_p == 0

    assert isinstance(
        make_augmentation("none", input_kind="image", n_channels=3), NoAugmentation
    )
    assert isinstance(make_augmentation("none", input_kind="vector"), NoAugmentation)
    assert isinstance(
        make_augmentation("vector", input_kind="vector"), VectorAugmentation
    )
    explicit_gray = make_augmentation(
        "grayscale", input_kind="image", n_channels=3, image_size=8
    )
    assert explicit_gray.flip is False


def test_make_augmentation_passes_objects_and_wraps_callables():
    aug = ImageAugmentation(flip=False)
    assert make_augmentation(aug, input_kind="image", n_channels=3, image_size=8) is aug

    class Custom(Augmentation):
        def __call__(self, x, generator=None):
            return x + 0

    custom = Custom()
    assert make_augmentation(custom, input_kind="vector") is custom

    wrapped = make_augmentation(torch.flipud, input_kind="vector")
    assert isinstance(wrapped, CallableAugmentation) and wrapped.func is torch.flipud


@pytest.mark.parametrize(
    "augmentation, kwargs, match",
    [
        ("rgb", dict(input_kind="vector"), "augmentation='rgb'"),
        ("grayscale", dict(input_kind="vector"), "augmentation='grayscale'"),
        (
            "vector",
            dict(input_kind="image", n_channels=3, image_size=8),
            "augmentation='vector'",
        ),
        (
            "rgb",
            dict(input_kind="image", n_channels=1, image_size=8),
            "augmentation='rgb'",
        ),
        (ImageAugmentation(), dict(input_kind="vector"), "augmentation"),
        (
            VectorAugmentation(),
            dict(input_kind="image", n_channels=3, image_size=8),
            "augmentation",
        ),
        ("auto", dict(input_kind="table"), "input_kind"),
    ],
)
def test_make_augmentation_rejects_wrong_recipe(augmentation, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_augmentation(augmentation, **kwargs)


def test_make_augmentation_unknown_values():
    with pytest.raises(
        ValueError, match="'auto'.*'rgb'.*'grayscale'.*'vector'.*'none'"
    ):
        make_augmentation("simclr", input_kind="image", n_channels=3, image_size=8)
    with pytest.raises(TypeError, match="augmentation"):
        make_augmentation(3, input_kind="vector")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cpu_generator_drives_gpu_batch():
    x = _images(8, 3, 40, 40)
    aug = ImageAugmentation(rotation=10.0, translate=0.1, blur=True, noise_std=0.05)
    on_gpu = aug(x.cuda(), _gen(3))
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), aug(x, _gen(3)), atol=1e-4, rtol=0)
    vec = VectorAugmentation()
    torch.testing.assert_close(
        vec(x.flatten(1).cuda(), _gen(3)).cpu(),
        vec(x.flatten(1), _gen(3)),
        atol=1e-5,
        rtol=0,
    )


@pytest.mark.parametrize(
    "factory, c, default",
    [(lambda **kw: grayscale_augmentation(28, **kw), 1, False),
     (lambda **kw: rgb_augmentation(28, **kw), 3, True)],
    ids=["grayscale", "rgb"],
)
def test_presets_flip_on_request_and_keep_the_rest(factory, c, default):
    # an image whose ink is all in its left half: only a mirror moves it right
    x = torch.zeros(64, c, 28, 28, dtype=torch.float32)
    x[..., 4:24, 3:11] = 1.0
    columns = torch.arange(28, dtype=torch.float32)

    def right_share(flip):
        views = factory(flip=flip)(x, _gen(3))
        mass = views.sum(dim=(1, 2))  # (n, width)
        centre = (mass * columns).sum(1) / mass.sum(1)
        return (centre > 13.5).float().mean().item()

    assert right_share(False) == 0.0
    assert 0.25 < right_share(True) < 0.75
    flipped, kept = factory(flip=True), factory(flip=False)
    assert (flipped.flip, kept.flip) == (True, False)
    assert factory().flip is default
    assert repr(flipped).replace("flip=True", "flip=False") == repr(kept)
    with pytest.raises(ValueError, match="flip must be a bool"):
        factory(flip=1)
