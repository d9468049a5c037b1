"""Size-aware defaults, the clustering-weight ramp, centroid refinement and collapse warnings."""

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder
from skcueco.training.run import (
    TrainingCollapseWarning,
    check_collapse,
    resolve_epochs_fraction,
    resolve_queue_size,
)
from skcueco.training.task import CueCoTask


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(return_X_y=True)
    return X[:400], y[:400]


def _small(**params):
    defaults = dict(hidden_dim=32, projection_dim=16, batch_size=64, max_epochs=3,
                    n_clusters=4, random_state=0, device="cpu")
    return CueCoEmbedder(**{**defaults, **params})


# ------------------------------------------------------------------- resolution


@pytest.mark.parametrize("n_samples, expected", [
    (3, 0), (400, 100), (1347, 336), (16384, 4096), (50_000, 4096),
    (499_999, 4096), (500_000, 65536), (1_281_167, 65536),
])
def test_auto_queue_is_a_quarter_of_the_data_capped(n_samples, expected):
    assert resolve_queue_size("auto", n_samples) == expected


@pytest.mark.parametrize("setting, n_samples, expected", [
    (4096, 1347, 1347), (100, 1347, 100), (0, 1347, 0), (65536, 10**6, 65536),
])
def test_explicit_queue_wins_capped_at_n_samples(setting, n_samples, expected):
    assert resolve_queue_size(setting, n_samples) == expected


@pytest.mark.parametrize("setting, max_epochs, expected", [
    ("auto", 40, 6), ("auto", 100, 15), ("auto", 1000, 150), ("auto", 6, 0),
    (10, 40, 10), (0, 40, 0), (50, 20, 50),
])
def test_epoch_fractions_auto_and_explicit(setting, max_epochs, expected):
    assert resolve_epochs_fraction(setting, max_epochs, 0.15) == expected


def test_fitted_attributes_publish_the_resolved_defaults(digits):
    X, _ = digits
    auto = _small(max_epochs=7, cluster_ramp="auto").fit(X)
    assert auto.get_params()["queue_size"] == "auto"  # the parameter is untouched
    assert auto.queue_size_ == len(X) // 4 == 100
    assert auto.cluster_warmup_ == int(0.15 * 7) == 1
    assert auto.cluster_ramp_ == int(0.1 * 7) == 0
    assert auto._trained.train_state["task"]["model"]["queue.keys"].shape[0] == 100
    explicit = _small(max_epochs=4, queue_size=4096, cluster_warmup=2, cluster_ramp=1).fit(X)
    assert explicit.queue_size_ == len(X)
    assert explicit.cluster_warmup_ == 2
    assert explicit.cluster_ramp_ == 1
    # warm-up 2 epochs, then half the weight, then the full weight
    assert explicit.history_["cluster_weight"].tolist() == [0.0, 0.0, 0.5, 1.0]


def test_recipes_stay_explicit():
    from skcueco.recipes import recipe

    for name in ("cifar10", "cifar100", "imagenet100"):
        params = recipe(name)
        assert isinstance(params["queue_size"], int)
        assert isinstance(params["cluster_warmup"], int)


# ------------------------------------------------------------------- ramp


def _task(cluster_weight=2.0, cluster_warmup=3, cluster_ramp=0):
    return CueCoTask(
        None, None, None, None, total_steps=10, key_momentum=0.99,
        cluster_weight=cluster_weight, cluster_warmup=cluster_warmup,
        cluster_ramp=cluster_ramp, cluster_update="online", key_features=None,
        reseed_after=50,
    )


def test_ramp_zero_is_a_step():
    task = _task(cluster_ramp=0)
    assert [task.weight_at(e) for e in range(6)] == [0, 0, 0, 2.0, 2.0, 2.0]


def test_ramp_rises_linearly_after_the_warmup():
    task = _task(cluster_ramp=3)
    weights = [task.weight_at(e) for e in range(9)]
    assert weights == pytest.approx([0, 0, 0, 0.5, 1.0, 1.5, 2.0, 2.0, 2.0])


def test_ramp_with_zero_weight_stays_zero():
    task = _task(cluster_weight=0.0, cluster_ramp=3)
    assert [task.weight_at(e) for e in range(8)] == [0.0] * 8


# ------------------------------------------------------------------- refinement


def _kmeans_objective(Z, centers):
    return (Z @ centers.T).max(axis=1).sum()


def test_refined_centroids_fit_the_final_projections_better(digits):
    X, _ = digits
    # the refined centroids are predict's clusters without the graph read-out
    online = _small(max_epochs=4, cluster_warmup=1, refine_centroids=0, cluster_graph=0).fit(X)
    refined = _small(max_epochs=4, cluster_warmup=1, refine_centroids=10,
                     cluster_graph=0).fit(X)
    # refinement runs after training: the networks are bitwise the same
    np.testing.assert_array_equal(online.transform(X), refined.transform(X))
    Z = refined._trained.project(*refined._rows(X))
    assert not np.array_equal(online.cluster_centers_, refined.cluster_centers_)
    assert _kmeans_objective(Z, refined.cluster_centers_) > _kmeans_objective(
        Z, online.cluster_centers_)
    np.testing.assert_allclose(np.linalg.norm(refined.cluster_centers_, axis=1), 1, rtol=1e-5)
    assert np.array_equal(refined.predict(X), (Z @ refined.cluster_centers_.T).argmax(1))
    # the training state keeps the online centroids, for a warm start
    np.testing.assert_array_equal(
        refined._trained.train_state["task"]["model"]["centroids"].numpy(), online.cluster_centers_)


def test_refinement_is_reproducible(digits):
    X, _ = digits
    a = _small(max_epochs=2, cluster_warmup=0).fit(X)
    b = _small(max_epochs=2, cluster_warmup=0).fit(X)
    np.testing.assert_array_equal(a.cluster_centers_, b.cluster_centers_)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))


# ------------------------------------------------------------------- sinkhorn


@pytest.mark.filterwarnings(  # a short run: its online centroids have not separated
    "ignore::skcueco.training.run.TrainingCollapseWarning")
def test_sinkhorn_assignments_train_and_are_reproducible(digits):
    X, _ = digits
    a = _small(cluster_warmup=1).fit(X)
    b = _small(cluster_warmup=1).fit(X)
    argmax = _small(cluster_balance=0.0, cluster_warmup=1).fit(X)
    np.testing.assert_array_equal(a.transform(X), b.transform(X))
    assert not np.array_equal(a.transform(X), argmax.transform(X))
    assert np.isfinite(a.history_["clustering"]).all()


@pytest.mark.filterwarnings(  # a short run: its online centroids have not separated
    "ignore::skcueco.training.run.TrainingCollapseWarning")
def test_default_training_assignments_are_balanced(digits):
    # the estimator's default trains exactly as the explicit balanced setting
    X, _ = digits
    default = _small(cluster_warmup=1).fit(X)
    balanced = _small(cluster_balance=0.5, cluster_warmup=1).fit(X)
    argmax = _small(cluster_balance=0.0, cluster_warmup=1).fit(X)
    np.testing.assert_array_equal(default.transform(X), balanced.transform(X))
    assert not np.array_equal(default.transform(X), argmax.transform(X))


@pytest.mark.filterwarnings(  # a short run: its online centroids have not separated
    "ignore::skcueco.training.run.TrainingCollapseWarning")
def test_cluster_balance_zero_trains_as_argmax_and_between_differs(digits):
    X, _ = digits
    free = _small(cluster_balance=0.0, cluster_warmup=1).fit(X)
    with pytest.warns(FutureWarning, match="cluster_assign is deprecated.*cluster_balance=0"):
        argmax = _small(cluster_assign="argmax", cluster_warmup=1).fit(X)
    half = _small(cluster_balance=0.5, cluster_warmup=1).fit(X)
    strict = _small(cluster_balance=1.0, cluster_warmup=1).fit(X)
    np.testing.assert_array_equal(free.transform(X), argmax.transform(X))
    assert not np.array_equal(half.transform(X), strict.transform(X))
    assert not np.array_equal(half.transform(X), argmax.transform(X))


@pytest.mark.filterwarnings(  # a short run: its online centroids have not separated
    "ignore::skcueco.training.run.TrainingCollapseWarning")
def test_deprecated_cluster_assign_sinkhorn_keeps_the_balance(digits):
    X, _ = digits
    default = _small(cluster_warmup=1).fit(X)
    with pytest.warns(FutureWarning, match="cluster_assign"):
        sinkhorn = _small(cluster_assign="sinkhorn", cluster_warmup=1).fit(X)
    np.testing.assert_array_equal(default.transform(X), sinkhorn.transform(X))


def test_cluster_balance_out_of_range_is_rejected(digits):
    X, _ = digits
    for bad in (-0.5, 1.01):
        with pytest.raises(ValueError, match="cluster_balance"):
            _small(cluster_balance=bad).fit(X)


def test_recipes_keep_the_papers_unbalanced_assignment():
    from skcueco.recipes import recipe

    for name in ("cifar10", "cifar100", "imagenet100"):
        assert recipe(name)["cluster_balance"] == 0.0
        # and the paper's InfoNCE: every queue key a negative
        assert recipe(name)["cluster_negatives"] == "keep"


# ------------------------------------------------------------------- collapse


def test_check_collapse_loss_at_chance_warns():
    chance = math.log(1 + 100)
    with pytest.warns(TrainingCollapseWarning, match="chance value.*smaller lr"):
        check_collapse([{"contrastive": chance - 1e-3}], 100, 64, None, 4, 0.999)
    with pytest.warns(TrainingCollapseWarning, match=r"log\(64\)"):
        check_collapse([{"contrastive": math.log(64)}], 0, 64, None, 4, 0.999)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_collapse([{"contrastive": 0.9 * chance}], 100, 64, None, 4, 0.999)
        # early in training the loss rises past chance while the projections
        # are still spread: no collapse
        check_collapse([{"contrastive": chance + 0.01}], 100, 64, None, 4, 0.8)


def test_check_collapse_reads_the_chance_value_the_run_logged():
    # cluster_negatives="drop" leaves each query fewer negatives than the
    # queue holds: its chance value is the one the history records
    logged = [{"contrastive": 2.0, "contrastive_chance": 2.0}]
    with pytest.warns(TrainingCollapseWarning, match="negatives of each query"):
        check_collapse(logged, 100, 64, None, 4, 0.999)
    # every negative left out: a loss of 0 is the chance value
    with pytest.warns(TrainingCollapseWarning, match="chance value 0.000"):
        check_collapse([{"contrastive": 0.0, "contrastive_chance": 0.0}], 100, 64, None, 4, 0.999)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_collapse([{"contrastive": 1.5, "contrastive_chance": 2.0}], 100, 64, None, 4, 0.999)
        check_collapse(logged, 100, 64, None, 4, 0.8)


def test_a_collapsed_fit_warns_whether_it_keeps_or_drops_the_negatives(digits):
    X, _ = digits
    for negatives in ("keep", "drop"):
        with pytest.warns(TrainingCollapseWarning, match="chance value"):
            est = _small(lr=50.0, max_epochs=5, cluster_negatives=negatives).fit(X)
        history = est.history_
        last = history.iloc[-1]
        assert last["contrastive"] >= 0.995 * last["contrastive_chance"]
        if negatives == "keep":  # log(1 + queue size) at every epoch
            np.testing.assert_allclose(history["contrastive_chance"],
                                       np.log1p(est.queue_size_), rtol=1e-6)
        else:  # fewer negatives once they are dropped
            assert last["contrastive_chance"] < np.log1p(est.queue_size_) - 0.1


def test_check_collapse_one_cluster_warns():
    labels = torch.tensor([0] * 91 + [1] * 9)
    with pytest.warns(TrainingCollapseWarning, match="91% of the training samples"):
        check_collapse([{"contrastive": 1.0}], 100, 64, labels, 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_collapse([{"contrastive": 1.0}], 100, 64, torch.tensor([0] * 89 + [1] * 11), 2)
        # a single cluster cannot collapse
        check_collapse([{"contrastive": 1.0}], 100, 64, torch.zeros(10, dtype=torch.long), 1)


def test_huge_learning_rate_warns_of_collapse(digits):
    X, _ = digits
    with pytest.warns(TrainingCollapseWarning, match="smaller lr"):
        _small(lr=50.0, max_epochs=5).fit(X)


def test_healthy_fit_does_not_warn(digits):
    X, _ = digits
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrainingCollapseWarning)
        _small(max_epochs=8, hidden_dim=64).fit(X)


@pytest.mark.parametrize("n_samples, expected", [
    (10, 10), (100, 64), (1347, 64), (2250, 64), (3840, 64), (9000, 64), (15_359, 64),
    (15_360, 128), (30_719, 128), (30_720, 256), (50_000, 256),
])
def test_auto_batch_gives_small_data_enough_steps(n_samples, expected):
    from skcueco.training.run import resolve_batch_size

    assert resolve_batch_size("auto", n_samples) == expected  # vectors
    assert resolve_batch_size("auto", n_samples, shorter_side=8) == expected


@pytest.mark.parametrize("n_samples, expected", [
    (10, 10), (40, 32), (1347, 32), (2250, 32), (7679, 32), (7680, 64), (15_359, 64),
    (15_360, 128), (30_720, 256),
])
@pytest.mark.parametrize("side", [16, 28, 224])
def test_auto_batch_goes_down_to_32_on_images_of_16_pixels(n_samples, expected, side):
    from skcueco.training.run import resolve_batch_size

    assert resolve_batch_size("auto", n_samples, shorter_side=side) == expected
    assert resolve_batch_size("auto", n_samples, shorter_side=15) == max(
        expected, min(64, n_samples))


def test_auto_batch_of_a_partial_fit_chunk_and_explicit_values():
    from skcueco.training.run import resolve_batch_size

    assert resolve_batch_size("auto", 100, partial=True) == 100  # one step per chunk
    assert resolve_batch_size("auto", 1000, partial=True) == 256
    assert resolve_batch_size(512, 1347) == 512
    assert resolve_batch_size(512, 300) == 300


@pytest.mark.filterwarnings(  # a short run: its online centroids have not separated
    "ignore::skcueco.training.run.TrainingCollapseWarning")
def test_fitted_batch_size_and_the_learning_rate_follow_it(digits):
    X, _ = digits
    est = _small(max_epochs=1).set_params(batch_size="auto").fit(X)
    assert est.get_params()["batch_size"] == "auto"
    assert est.batch_size_ == 64  # 400 samples
    assert est.history_["lr"].iloc[0] <= 0.06 * 64 / 256 + 1e-12  # lr="auto" follows it
    assert _small(max_epochs=1).set_params(batch_size=100).fit(X).batch_size_ == 100


@pytest.mark.filterwarnings("ignore::skcueco.training.run.TrainingCollapseWarning")
def test_fitted_auto_batch_reads_the_shorter_image_side(digits):
    X, _ = digits
    X16 = np.repeat(np.repeat(X.reshape(-1, 8, 8)[:96], 2, axis=1), 2, axis=2)  # 16x16
    est = _small(max_epochs=1).set_params(batch_size="auto").fit(X16)
    assert est.batch_size_ == 32
    assert est.history_["lr"].iloc[0] <= 0.06 * 32 / 256 + 1e-12
    tall = np.repeat(X.reshape(-1, 8, 8)[:96], 4, axis=1)  # 32x8: the shorter side counts
    assert _small(max_epochs=1).set_params(batch_size="auto").fit(tall).batch_size_ == 64
