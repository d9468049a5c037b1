"""The generated image families of the benchmark: shapes, handwriting-like strokes, scenes."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

from skcueco._synthetic import (
    GLYPH_NAMES, SHAPE_NAMES, make_scenes, make_shapes, make_strokes,
)

GENERATORS = {
    "strokes": (make_strokes, (16, 16), len(GLYPH_NAMES)),
    "scenes": (make_scenes, (16, 16, 3), 8),
    "shapes": (make_shapes, (16, 16), 8),
}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_seed_same_images_and_balanced_classes(name):
    make, shape, n_classes = GENERATORS[name]
    X, y = make(101, image_size=16, random_state=3)
    X2, y2 = make(101, image_size=16, random_state=3)
    X3, _ = make(101, image_size=16, random_state=4)
    assert X.shape == (101, *shape) and X.dtype == np.uint8 and y.dtype == np.int64
    assert np.array_equal(X, X2) and np.array_equal(y, y2)
    assert not np.array_equal(X, X3)
    counts = np.bincount(y, minlength=n_classes)
    assert len(counts) == n_classes and counts.max() - counts.min() <= 1
    # images use the intensity range and are not constant
    assert X.reshape(len(X), -1).std(axis=1).min() > 2


@pytest.mark.parametrize("name", ["strokes", "scenes"])
def test_images_of_one_class_differ_from_each_other(name):
    make, _, _ = GENERATORS[name]
    X, y = make(60, image_size=20, random_state=0)
    same = X[y == 0].reshape(int((y == 0).sum()), -1).astype(float)
    # every pair of images of class 0 differs in many pixels (random pen, pose, light)
    diffs = np.abs(same[:, None] - same[None]).mean(-1)
    assert diffs[np.triu_indices(len(same), 1)].min() > 5


def test_stroke_glyphs_are_learnable_from_pixels_but_not_trivially():
    X, y = make_strokes(600, image_size=20, random_state=0)
    flat = X.reshape(len(X), -1) / 255.0
    acc = cross_val_score(LogisticRegression(max_iter=300), flat, y, cv=3).mean()
    # above chance (0.1) by far, below a perfect score: pose and pen are nuisances
    assert 0.3 < acc < 0.97


def test_scene_colours_say_nothing_about_the_class():
    X, y = make_scenes(800, image_size=16, random_state=0)
    mean_colour = X.reshape(len(X), -1, 3).mean(axis=1) / 255.0
    acc = cross_val_score(LogisticRegression(max_iter=300), mean_colour, y, cv=3).mean()
    assert acc < 0.25  # chance is 1/8


def test_scene_objects_are_lighter_or_darker_than_the_background():
    X, y = make_scenes(200, image_size=24, random_state=1)
    grey = X.mean(axis=-1)
    centre, border = grey[:, 8:16, 8:16].mean((1, 2)), grey[:, :3].mean((1, 2))
    lighter = (centre > border).mean()
    assert 0.25 < lighter < 0.75


@pytest.mark.parametrize("make, kwargs, match", [
    (make_strokes, {"n_classes": len(GLYPH_NAMES) + 1}, "n_classes must be <="),
    (make_strokes, {"n_classes": 1}, "n_classes must be an integer"),
    (make_strokes, {"image_size": 4}, "image_size must be an integer >= 8"),
    (make_scenes, {"n_classes": len(SHAPE_NAMES) + 1}, "n_classes must be <="),
    (make_scenes, {"image_size": 7.5}, "image_size must be an integer"),
    (make_scenes, {"n_samples": 0}, "n_samples must be an integer >= 1"),
    (make_strokes, {"n_samples": True}, "n_samples must be an integer"),
])
def test_bad_arguments_are_named(make, kwargs, match):
    args = {"n_samples": 10, **kwargs}
    n = args.pop("n_samples")
    with pytest.raises(ValueError, match=match):
        make(n, **args)


def test_fewer_classes_take_the_first_glyphs():
    _, y = make_strokes(30, image_size=12, n_classes=3, random_state=0)
    assert set(y) == {0, 1, 2}


def test_two_forms_change_about_half_the_glyphs_and_one_form_changes_nothing():
    X1, y1 = make_strokes(200, image_size=20, random_state=5)
    Xd, yd = make_strokes(200, image_size=20, n_forms=1, random_state=5)
    X2, y2 = make_strokes(200, image_size=20, n_forms=2, random_state=5)
    np.testing.assert_array_equal(X1, Xd)
    # the pen, pose and classes are the same draws; only the form (and the pixel noise) differ
    np.testing.assert_array_equal(y1, y2)
    moved = np.abs(X1.astype(int) - X2.astype(int)).reshape(len(X1), -1).max(axis=1)
    other_form = moved > 100          # pixel noise alone moves a pixel by far less
    assert 0.35 < other_form.mean() < 0.65
    for c in range(len(GLYPH_NAMES)):   # every class is written both ways
        assert 0 < other_form[y2 == c].mean() < 1


def test_the_two_forms_of_a_glyph_are_closer_than_other_glyphs():
    # a form shares most strokes with its class: the mean image of the second
    # forms of a class is nearer its class's first forms than any other class's
    X1, y = make_strokes(1000, image_size=20, random_state=1)
    X2, _ = make_strokes(1000, image_size=20, n_forms=2, random_state=1)
    second = np.abs(X1.astype(int) - X2.astype(int)).reshape(len(X1), -1).max(axis=1) > 100
    first = X1.reshape(len(X1), -1).astype(float)
    other = X2.reshape(len(X2), -1).astype(float)
    means_first = np.stack([first[y == c].mean(0) for c in range(len(GLYPH_NAMES))])
    for c in range(len(GLYPH_NAMES)):
        m = other[(y == c) & second].mean(0)
        assert np.argmin(((means_first - m) ** 2).sum(1)) == c


@pytest.mark.parametrize("n_forms", [0, 3, 1.5, True, "2"])
def test_bad_number_of_forms_is_named(n_forms):
    with pytest.raises(ValueError, match="n_forms must be 1 or 2"):
        make_strokes(10, image_size=12, n_forms=n_forms)
