"""Single-process shuffled BatchNorm (``distributed_bn="split"``): the keys of
a shuffled batch are encoded in groups with their own BatchNorm statistics."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from numpy.testing import assert_array_equal
from torch import nn

from skcueco import CueCoEmbedder
from skcueco.nn.model import CueCoModel
from skcueco.training.parallel import TrainingEncoders

N_FEATURES, FEATURE_DIM = 12, 16


def _model():
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Linear(N_FEATURES, FEATURE_DIM), nn.BatchNorm1d(FEATURE_DIM),
                             nn.ReLU())
    model = CueCoModel(backbone, FEATURE_DIM, projection_dim=8, hidden_dim=32, queue_size=16,
                       n_clusters=3, generator=torch.Generator().manual_seed(0))
    return model.train()


def _groups(n, splits, seed):
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return torch.tensor_split(perm, splits)


def test_each_key_is_encoded_with_its_own_groups_statistics():
    model = _model()
    encoders = TrainingEncoders(model, split_bn=4, seed=3)
    x = torch.randn(16, N_FEATURES, generator=torch.Generator().manual_seed(1))
    keys = encoders.encode_key(x)
    for idx in _groups(16, 4, seed=3):
        with torch.no_grad():
            alone = F.normalize(model.projector_k(model.backbone_k(x[idx])), dim=1)
        torch.testing.assert_close(keys[idx], alone)  # in the caller's order
    # the whole batch's statistics give other keys
    with torch.no_grad():
        whole = F.normalize(model.projector_k(model.backbone_k(x)), dim=1)
    assert not torch.allclose(keys, whole)


def test_a_key_does_not_depend_on_images_outside_its_group():
    model = _model()
    encoders = TrainingEncoders(model, split_bn=4, seed=3)
    state = encoders.generator.get_state()
    x = torch.randn(16, N_FEATURES, generator=torch.Generator().manual_seed(1))
    before = encoders.encode_key(x)
    first, second = _groups(16, 4, seed=3)[:2]
    changed = x.clone()
    changed[second[0]] += 5.0
    encoders.generator.set_state(state)
    after = encoders.encode_key(changed)
    assert torch.equal(after[first], before[first])
    assert not torch.allclose(after[second[1:]], before[second[1:]])


def test_small_batches_keep_two_images_per_group_and_one_group_is_plain():
    model = _model()
    x = torch.randn(6, N_FEATURES, generator=torch.Generator().manual_seed(1))
    keys = TrainingEncoders(model, split_bn=8, seed=0).encode_key(x)  # 3 groups of 2
    for idx in _groups(6, 3, seed=0):
        with torch.no_grad():
            alone = F.normalize(model.projector_k(model.backbone_k(x[idx])), dim=1)
        torch.testing.assert_close(keys[idx], alone)
    plain = TrainingEncoders(model, split_bn=1)
    assert plain.generator is None and plain.state_dict() == {}
    with torch.no_grad():
        whole = F.normalize(model.projector_k(model.backbone_k(x)), dim=1)
    assert torch.equal(plain.encode_key(x), whole)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).integers(0, 256, (96, 8, 8), dtype=np.uint8)


def _fit(images, **params):
    est = CueCoEmbedder(max_epochs=2, batch_size=32, hidden_dim=32, projection_dim=16,
                        n_clusters=3, device="cpu", random_state=0, **params)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(images)


def test_split_is_reproducible_and_differs_from_the_plain_keys(images):
    a, b = _fit(images, distributed_bn="split"), _fit(images, distributed_bn="split")
    assert_array_equal(a.transform(images), b.transform(images))
    plain = _fit(images)
    assert not np.array_equal(a.transform(images), plain.transform(images))
    # the permutations' random state is part of the training state (resume)
    assert "shuffle_rng" in a._trained.train_state["task"]
    assert "shuffle_rng" not in plain._trained.train_state["task"]


def test_unknown_batchnorm_mode_is_a_clear_error(images):
    with pytest.raises(ValueError, match="distributed_bn"):
        _fit(images, distributed_bn="splits")
