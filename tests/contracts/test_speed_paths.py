"""Fast paths that must not change results: inference batching, layouts, optimisers.

Each fast path is checked against the plain computation it replaces; speed
itself is shown by ``benchmarks/throughput.py``, not asserted here.
"""

import copy

import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal
from torch import nn

from skcueco import CueCoEmbedder
from skcueco.data.loaders import INFERENCE_ROWS, encode
from skcueco.data.preprocess import Preprocess, relayout
from skcueco.data.validation import InputSpec
from skcueco.training.optim import LARS, make_optimizer
from skcueco.training.trained import use_channels_last

FAST = {"max_epochs": 1, "batch_size": 32, "hidden_dim": 32, "projection_dim": 8,
        "queue_size": 32, "n_clusters": 3, "random_state": 0, "device": "cpu"}
# a single row, a few, one more than a full inference batch, and the rows of
# a second batch of every length from 1 to the full batch
SUBSETS = [1, 2, 7, 33, INFERENCE_ROWS + 1, 2 * INFERENCE_ROWS - 1]


@pytest.fixture(scope="module")
def images():
    X = np.random.default_rng(0).integers(0, 256, size=(2 * INFERENCE_ROWS + 5, 8, 8, 3),
                                           dtype=np.uint8)
    return X, CueCoEmbedder(**FAST).fit(X[:64])


@pytest.fixture(scope="module")
def vectors():
    X = np.random.default_rng(1).normal(size=(2 * INFERENCE_ROWS + 5, 20)).astype(np.float32)
    return X, CueCoEmbedder(**FAST).fit(X[:64])


@pytest.mark.parametrize("data", ["images", "vectors"])
def test_transform_of_a_subset_is_bitwise_the_rows_of_the_whole(data, request):
    X, est = request.getfixturevalue(data)
    Z, P = est.transform(X), est._trained.project(*est._rows(X))
    for n in SUBSETS:
        for start in (0, 3):
            rows = slice(start, start + n)
            assert_array_equal(est.transform(X[rows]), Z[rows], err_msg=f"{n} rows")
            assert_array_equal(est._trained.project(*est._rows(X[rows])), P[rows], err_msg=f"{n} rows")
    assert_array_equal(est.predict(X[5:6]), est.predict(X)[5:6])


def test_inference_batches_do_not_follow_the_training_batch_size(images):
    X, est = images
    est = copy.deepcopy(est)
    # batch_size only shapes training: a huge one must not make inference
    # pad a single image to thousands of rows
    est.batch_size = 4096
    seen = []
    est.encoder_.register_forward_pre_hook(lambda module, args: seen.append(args[0].shape[0]))
    Z = est.transform(X[:3])
    assert max(seen) <= INFERENCE_ROWS
    assert seen[-1] < INFERENCE_ROWS  # the probe verified a smaller batch
    assert_array_equal(Z, images[1].transform(X[:3]))


def _row_count_dependent(rows):
    # rounds like a kernel that changes algorithm below `rows` rows
    def fn(x):
        return x.flatten(1) * (1.0 if x.shape[0] == rows else 1.0 + 1e-3)
    return fn


def test_encode_pads_to_a_full_batch_when_smaller_batches_round_differently():
    X = np.random.default_rng(2).random((11, 6)).astype(np.float32)
    fn = _row_count_dependent(8)
    module = nn.Linear(1, 1)  # stands for the weights fn uses
    out = encode(fn, torch.nn.Identity(), module, X, 8, torch.device("cpu"),
                 fixed_batch=True, check_key="test").numpy()
    # the 3-row tail ran as a full batch of 8: no 1e-3 rescaling anywhere
    assert_array_equal(out, X)
    # without the padding the tail would have been rescaled
    out = encode(fn, torch.nn.Identity(), module, X, 8, torch.device("cpu")).numpy()
    assert not np.array_equal(out[8:], X[8:])


def test_encode_skips_the_padding_for_row_independent_functions():
    X = np.random.default_rng(3).random((9, 6)).astype(np.float32)
    seen = []

    def fn(x):
        seen.append(x.shape[0])
        return x * 2.0

    module = nn.Linear(1, 1)
    out = encode(fn, torch.nn.Identity(), module, X, 8, torch.device("cpu"),
                 fixed_batch=True, check_key="double").numpy()
    assert_array_equal(out, X * 2.0)
    # full batch, the one-off probe (8 rows, then 1), and the 1-row tail
    assert seen == [8, 8, 1, 1]
    seen.clear()
    encode(fn, torch.nn.Identity(), module, X, 8, torch.device("cpu"),
           fixed_batch=True, check_key="double")
    assert seen == [8, 1]  # the verdict is kept for the same weights
    with torch.no_grad():
        module.weight.add_(1.0)  # new weights: checked again
    seen.clear()
    encode(fn, torch.nn.Identity(), module, X, 8, torch.device("cpu"),
           fixed_batch=True, check_key="double")
    assert seen == [8, 8, 1, 1]
    # what a move or a load does: new storage, same version counter
    module.weight.data = module.weight.data.clone()
    seen.clear()
    encode(fn, torch.nn.Identity(), module, X, 8, torch.device("cpu"),
           fixed_batch=True, check_key="double")
    assert seen == [8, 8, 1, 1]


@pytest.mark.parametrize("stored_channels_last", [True, False])
def test_preprocess_can_emit_channels_last_with_the_same_values(stored_channels_last):
    spec = InputSpec("image", (3, 4, 5), stored_channels_last)
    rows = torch.arange(6 * 60, dtype=torch.uint8).reshape(6, 60)
    plain = Preprocess(spec, 0.0, 1.0 / 255.0)
    fast = relayout(plain, spec, output_channels_last=True)
    a, b = plain(rows), fast(rows)
    assert a.is_contiguous()
    assert b.is_contiguous(memory_format=torch.channels_last)
    assert_array_equal(a.numpy(), b.numpy())
    if stored_channels_last:
        # H, W, C rows are already channels-last: a view, no copy
        assert b.untyped_storage().nbytes() == rows.numel() * 4
    assert relayout(fast, spec).output_channels_last


@pytest.mark.parametrize("backbone, device, expected", [
    ("auto", "cpu", True), ("small_cnn", "cpu", True), ("resnet18", "cpu", True),
    ("mlp", "cpu", False), (nn.Flatten(), "cpu", False), ("mlp", "cuda", True),
    ("small_cnn", "mps", False),
])
def test_channels_last_auto_rule(backbone, device, expected):
    image = InputSpec("image", (3, 8, 8))
    assert use_channels_last("auto", image, torch.device(device), backbone=backbone) is expected
    assert not use_channels_last("auto", InputSpec("vector", (5,)), torch.device(device),
                                 backbone=backbone)
    assert use_channels_last(False, image, torch.device(device), backbone=backbone) is False


def test_channels_last_fit_is_deterministic_and_survives_save_load(images, tmp_path):
    X, est = images
    again = CueCoEmbedder(**FAST).fit(X[:64])
    assert_array_equal(again.transform(X), est.transform(X))
    est.save(tmp_path / "m.pt")
    loaded = CueCoEmbedder.load(tmp_path / "m.pt")
    assert_array_equal(loaded.transform(X[:9]), est.transform(X[:9]))


def _lars_reference(params, grads, state, lr, momentum, weight_decay, eta):
    # the per-parameter loop LARS.step vectorises
    for i, (p, g) in enumerate(zip(params, grads)):
        update = g
        if p.ndim > 1:
            update = g + weight_decay * p
            w, u = p.norm(), update.norm()
            trust = eta * w / u if w > 0 and u > 0 else torch.tensor(1.0)
            update = update * trust
        state[i] = update.clone() if i not in state else momentum * state[i] + update
        p.sub_(lr * state[i])


def test_vectorised_lars_matches_the_per_parameter_loop():
    torch.manual_seed(0)  # test-only: the model and gradients
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(16, 5))
    with torch.no_grad():
        model[3].weight.zero_()  # ||w|| = 0: trust ratio 1
    reference = [p.detach().clone() for p in model.parameters()]
    opt = LARS(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3, eta=0.02)
    state = {}
    for _ in range(3):
        grads = [torch.randn_like(p) for p in model.parameters()]
        for p, g in zip(model.parameters(), grads):
            p.grad = g.clone()
        opt.step()
        _lars_reference(reference, grads, state, 0.3, 0.9, 1e-3, 0.02)
        for p, r in zip(model.parameters(), reference):
            torch.testing.assert_close(p.detach(), r, rtol=1e-6, atol=1e-7)


def test_parameters_without_gradient_are_left_alone_by_lars():
    a, b = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(3))
    opt = LARS([a, b], lr=0.1)
    a.grad = torch.ones(2, 2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(3)) and b not in opt.state
    assert not torch.equal(a.detach(), torch.ones(2, 2))


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_cpu_optimisers_use_the_foreach_implementation(name):
    model = nn.Linear(3, 2)
    opt = make_optimizer(name, model.parameters(), lr=0.1, weight_decay=1e-4)
    assert all(group["foreach"] for group in opt.param_groups)
    # same steps as the per-parameter loop
    loop = make_optimizer(name, nn.Linear(3, 2).parameters(), lr=0.1, weight_decay=1e-4)
    for group in loop.param_groups:
        group["foreach"] = False
    twin = loop.param_groups[0]["params"] + loop.param_groups[1]["params"]
    with torch.no_grad():
        for p, q in zip(opt.param_groups[0]["params"] + opt.param_groups[1]["params"], twin):
            q.copy_(p)
    for _ in range(3):
        for group_a, group_b in zip(opt.param_groups, loop.param_groups):
            for p, q in zip(group_a["params"], group_b["params"]):
                p.grad = torch.full_like(p, 0.5)
                q.grad = torch.full_like(q, 0.5)
        opt.step()
        loop.step()
    for group_a, group_b in zip(opt.param_groups, loop.param_groups):
        for p, q in zip(group_a["params"], group_b["params"]):
            torch.testing.assert_close(p, q)


def test_encode_restores_each_submodule_mode():
    X = np.random.default_rng(4).random((5, 6)).astype(np.float32)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model[1].eval()  # a mixed state: only the norm layer in eval mode
    modes = []
    out = encode(lambda x: (modes.append([m.training for m in model]), model(x))[1],
                 torch.nn.Identity(), model, X, 8, torch.device("cpu")).numpy()
    assert modes == [[False, False, False]]  # eval mode during the call
    assert [m.training for m in model] == [True, False, True]
    with torch.no_grad():
        assert_array_equal(out, model.eval()(torch.from_numpy(X)).numpy())


@pytest.mark.parametrize("case", ["nan", "inf", "width", "list", "float64", "int64"])
def test_transform_validation_matches_the_general_checks(images, case):
    # rows that skip scikit-learn's general checks must pass exactly the ones
    # that check would pass, and get its errors otherwise
    X, est = images
    rows = X[:3].reshape(3, -1)
    if case in ("nan", "inf"):
        bad = rows.astype(np.float32) / 255
        bad[1, 4] = np.nan if case == "nan" else np.inf
        with pytest.raises(ValueError, match="NaN" if case == "nan" else "infinity"):
            est.transform(bad)
    elif case == "width":
        with pytest.raises(ValueError, match="features"):
            est.transform(rows[:, :-1])
    elif case == "list":
        assert_array_equal(est.transform(rows.tolist()), est.transform(rows))
    else:
        # other numeric dtypes of the same pixel values: the same embeddings
        assert_array_equal(est.transform(rows.astype(case)), est.transform(rows))


def test_inference_caches_keep_no_model_alive(images):
    import gc
    import weakref

    X, est = images
    est = copy.deepcopy(est)
    est.transform(X[:3])
    est.predict(X[:3])
    refs = [weakref.ref(est.encoder_), weakref.ref(est._trained.projector)]
    del est
    gc.collect()
    assert all(r() is None for r in refs)
