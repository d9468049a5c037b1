import copy

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from skcueco.backbones import (
    BACKBONE_NAMES,
    MLP,
    GlobalPool,
    SmallCNN,
    build_backbone,
    resnet,
)


def _forward_eval(module, x):
    module.eval()
    with torch.no_grad():
        return module(x)


@pytest.mark.parametrize("size", [1, 2, 8, 28])
def test_small_cnn_shape(size):
    net = SmallCNN(in_channels=1, width=8)
    assert net.out_dim == 32
    out = _forward_eval(net, torch.randn(3, 1, size, size))
    assert out.shape == (3, 32)


@pytest.mark.parametrize("depth, side, budget", [
    (3, 8, 4e6), (4, 8, 8e6), (3, 28, 45e6), (4, 28, 90e6),
])
def test_small_cnn_is_cheap_and_trains(depth, side, budget):
    net = SmallCNN(in_channels=1, width=32, depth=depth)
    x = torch.randn(64, 1, side, side)
    # Count FLOPs rather than time them: wall-clock bounds are flaky on a
    # shared CPU. Forward + backward per sample: 3.6 MFLOP (three blocks) and
    # 7.2 MFLOP (four, the default) on 8x8 digits, 44 and 88 MFLOP on 28x28
    # images: the fourth block runs at the third one's resolution.
    with FlopCounterMode(display=False) as counter:
        out = net(x)
        out.square().mean().backward()
    assert out.shape == (64, 128)
    assert all(p.grad is not None for p in net.parameters())
    assert counter.get_total_flops() / len(x) < budget


def test_small_cnn_pools_the_maximum_by_default_or_the_mean():
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, width=4).eval()
    x = torch.rand(3, 1, 12, 12)
    with torch.no_grad():
        fmap = net.features(x)
        assert net.pool.mode == "max"
        torch.testing.assert_close(net(x), fmap.amax(dim=(2, 3)), rtol=0, atol=0)
        avg = SmallCNN(in_channels=1, width=4, pool="avg").eval()
        avg.load_state_dict(net.state_dict() | {"pool.max_pool": avg.pool.max_pool})
        torch.testing.assert_close(avg(x), fmap.mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="pool must be one of"):
        SmallCNN(pool="mean")


def test_pooling_mode_travels_with_the_state_dict():
    torch.manual_seed(0)
    x = torch.rand(2, 1, 10, 10)
    avg = SmallCNN(in_channels=1, width=4, pool="avg").eval()
    net = SmallCNN(in_channels=1, width=4).eval()  # max
    net.load_state_dict(avg.state_dict())
    assert net.pool.mode == "avg"
    with torch.no_grad():
        torch.testing.assert_close(net(x), avg(x), rtol=0, atol=0)
    # weights from before the mode was stored (no key): global average pooling
    old = {k: v for k, v in SmallCNN(in_channels=1, width=4).state_dict().items()
           if k != "pool.max_pool"}
    fresh = SmallCNN(in_channels=1, width=4)
    fresh.load_state_dict(old)  # strict: the missing key is not an error
    assert fresh.pool.mode == "avg" and int(fresh.pool.max_pool) == 0
    # a copy (the key network) keeps the mode
    assert copy.deepcopy(fresh).pool.mode == "avg"
    with pytest.raises(RuntimeError, match="must hold one boolean"):
        fresh.load_state_dict({**old, "pool.max_pool": torch.ones(3)})


def test_max_pooling_gradient_is_deterministic_with_ties():
    pool = GlobalPool("max")
    x = torch.zeros(1, 2, 3, 3, requires_grad=True)  # every position ties
    pool(x).sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, 1 / 9))


def test_small_cnn_depth_adds_blocks_that_keep_the_resolution():
    net = SmallCNN(in_channels=1, width=4, depth=5).eval()
    assert len(net.features) == 5 and net.depth == 5 and net.out_dim == 16
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert net.features[:3](x).shape == net.features(x).shape == (2, 16, 7, 7)
    for bad in (0, 2):
        with pytest.raises(ValueError, match="depth must be"):
            SmallCNN(depth=bad)


@pytest.mark.parametrize("depth, window", [(3, 9), (4, 17), (5, 25)])
def test_small_cnn_window_of_one_position_grows_by_8_per_block(depth, window):
    net = SmallCNN(in_channels=1, width=2, depth=depth).eval()
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, nn.Conv2d):
                module.weight.fill_(1.0)  # positive maps: no ReLU hides a pixel
    x = torch.rand(1, 1, 64, 64, requires_grad=True)
    net.features(x)[0, :, 8, 8].sum().backward()
    rows = x.grad[0, 0].abs().sum(dim=1).nonzero()
    cols = x.grad[0, 0].abs().sum(dim=0).nonzero()
    assert rows.max() - rows.min() + 1 == window
    assert cols.max() - cols.min() + 1 == window


def test_a_small_cnn_pickled_before_depth_existed_reads_three_blocks():
    import pickle

    old = SmallCNN(in_channels=1, width=4, depth=3)
    del old.__dict__["depth"]  # as objects pickled by the previous version
    assert pickle.loads(pickle.dumps(old)).depth == 3
    assert SmallCNN(in_channels=1, width=4).depth == 4


def test_weights_of_fewer_blocks_load_into_a_deeper_network():
    torch.manual_seed(0)
    old = SmallCNN(in_channels=1, width=4, depth=3).eval()
    net = SmallCNN(in_channels=1, width=4, depth=4)
    net.load_state_dict(old.state_dict())  # strict: nothing missing
    assert net.depth == 3 and len(net.features) == 3
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), old(x), rtol=0, atol=0)
    assert copy.deepcopy(net).depth == 3  # the key network keeps it
    # weights of more blocks than the network has are an error
    with pytest.raises(RuntimeError, match="Unexpected key"):
        SmallCNN(in_channels=1, width=4, depth=3).load_state_dict(
            SmallCNN(in_channels=1, width=4, depth=4).state_dict())


def test_mlp_shape_and_one_feature():
    net = MLP(in_features=1, hidden_dim=16, out_dim=8, n_layers=3)
    assert net.out_dim == 8
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [
        (1, 16),
        (16, 16),
        (16, 8),
    ]
    out = net(torch.randn(5, 1))
    assert out.shape == (5, 8)
    assert (out >= 0).all()  # the last block ends with ReLU


def test_mlp_rejects_bad_params():
    with pytest.raises(ValueError, match="n_layers"):
        MLP(3, n_layers=0)
    with pytest.raises(TypeError, match="in_features"):
        MLP(3.5)


def test_resnet18_cifar_stem():
    net = resnet("resnet18", cifar_stem=True)
    assert net.out_dim == 512
    assert net.conv1.kernel_size == (3, 3)
    assert net.conv1.stride == (1, 1)
    assert net.conv1.padding == (1, 1)
    assert net.conv1.bias is None
    assert isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.fc, nn.Identity)
    assert _forward_eval(net, torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_resnet18_one_channel():
    net = resnet("resnet18", in_channels=1)
    assert net.conv1.in_channels == 1
    assert net.conv1.kernel_size == (7, 7)
    assert net.conv1.stride == (2, 2)
    assert not isinstance(net.maxpool, nn.Identity)
    assert _forward_eval(net, torch.randn(2, 1, 64, 64)).shape == (2, 512)


def test_resnet50_out_dim():
    net = resnet("resnet50", cifar_stem=True)
    assert net.out_dim == 2048
    assert _forward_eval(net, torch.randn(2, 3, 16, 16)).shape == (2, 2048)


def test_resnet_unknown_name():
    with pytest.raises(ValueError, match="resnet18"):
        resnet("resnet34")


def test_build_resnet18_stem_by_size():
    module, dim = build_backbone(
        "resnet18", input_kind="image", input_shape=(3, 32, 32)
    )
    assert dim == 512
    assert module.conv1.stride == (1, 1)
    assert isinstance(module.maxpool, nn.Identity)

    module, dim = build_backbone(
        "resnet18", input_kind="image", input_shape=(3, 96, 96)
    )
    assert dim == 512
    assert module.conv1.kernel_size == (7, 7)
    assert module.conv1.stride == (2, 2)
    assert isinstance(module.maxpool, nn.MaxPool2d)
    assert _forward_eval(module, torch.randn(2, 3, 96, 96)).shape == (2, 512)


def test_build_one_channel_resnet():
    module, dim = build_backbone(
        "resnet18", input_kind="image", input_shape=(1, 32, 32)
    )
    assert module.conv1.in_channels == 1
    assert _forward_eval(module, torch.randn(2, 1, 32, 32)).shape == (2, dim)


@pytest.mark.parametrize(
    "input_kind, input_shape, expected_type, expected_dim",
    [
        ("vector", (7,), MLP, 128),
        ("image", (1, 8, 8), SmallCNN, 128),
        ("image", (1, 28, 28), SmallCNN, 128),
        ("image", (3, 32, 32), nn.Module, 512),  # ResNet-18, checked below
    ],
)
def test_auto_selection(input_kind, input_shape, expected_type, expected_dim):
    module, dim = build_backbone("auto", input_kind=input_kind, input_shape=input_shape)
    assert isinstance(module, expected_type)
    assert dim == expected_dim == module.out_dim
    if input_shape == (3, 32, 32):
        from torchvision.models import ResNet

        assert isinstance(module, ResNet)
        assert len(module.layer1) == 2  # BasicBlock x2: ResNet-18, not 50
        assert isinstance(module.maxpool, nn.Identity)
    out = _forward_eval(module, torch.randn(2, *input_shape))
    assert out.shape == (2, dim)


def test_mlp_on_images_flattens():
    module, dim = build_backbone("mlp", input_kind="image", input_shape=(1, 4, 5))
    assert isinstance(module[0], nn.Flatten)
    assert module[1].in_features == 20
    assert _forward_eval(module, torch.randn(3, 1, 4, 5)).shape == (3, dim)


@pytest.mark.parametrize("name", ["small_cnn", "resnet18", "resnet50"])
def test_image_backbone_on_vectors_raises(name):
    with pytest.raises(ValueError, match="backbone"):
        build_backbone(name, input_kind="vector", input_shape=(10,))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as info:
        build_backbone("vgg", input_kind="image", input_shape=(3, 32, 32))
    for name in BACKBONE_NAMES:
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [3, None, nn.Linear])
def test_bad_backbone_type(bad):
    with pytest.raises(TypeError, match="backbone"):
        build_backbone(bad, input_kind="vector", input_shape=(3,))


def test_bad_input_kind_and_shape():
    with pytest.raises(ValueError, match="input_kind"):
        build_backbone("auto", input_kind="text", input_shape=(3,))
    with pytest.raises(ValueError, match="input_shape"):
        build_backbone("auto", input_kind="image", input_shape=(8, 8))


def test_user_module_dim_and_not_modified():
    user = nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 6 * 6, 11),
        nn.BatchNorm1d(11),
    )
    user.train()
    user[1].eval()  # a frozen BN that the dry run must leave frozen
    before = {k: v.clone() for k, v in user.state_dict().items()}

    module, dim = build_backbone(user, input_kind="image", input_shape=(3, 8, 8))

    assert dim == 11
    assert module is not user
    assert all(p is not q for p, q in zip(module.parameters(), user.parameters()))
    after = user.state_dict()
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    # The copy keeps the caller's per-submodule train/eval flags and the dry
    # run did not touch its BatchNorm statistics.
    modes = [m.training for m in module.modules()]
    assert modes == [m.training for m in user.modules()]
    assert module[1].num_batches_tracked.item() == 0
    assert module[4].training
    assert module[4].num_batches_tracked.item() == 0
    assert torch.equal(module[4].running_mean, torch.zeros(11))
    # Training the copy leaves the caller's module alone.
    module[3].weight.data.add_(1.0)
    assert torch.equal(user[3].weight, before["3.weight"])


def test_user_module_bad_output_dim():
    user = nn.Conv2d(3, 4, 3)  # returns (N, C, H, W), not (N, d)
    with pytest.raises(ValueError, match=r"\(n_samples, n_features\)"):
        build_backbone(user, input_kind="image", input_shape=(3, 8, 8))


def test_user_module_non_tensor_output():
    class TupleOut(nn.Module):
        def forward(self, x):
            return x, x

    with pytest.raises(ValueError, match=r"\(n_samples, n_features\)"):
        build_backbone(TupleOut(), input_kind="vector", input_shape=(3,))


def test_user_module_dry_run_failure():
    user = nn.Linear(5, 2)
    user.train()
    message = r"does not accept input of shape \(N, 3\)"
    with pytest.raises(ValueError, match=message) as info:
        build_backbone(user, input_kind="vector", input_shape=(3,))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert user.training


def test_user_module_float64():
    user = nn.Linear(3, 2).double()
    module, dim = build_backbone(user, input_kind="vector", input_shape=(3,))
    assert dim == 2
    assert module.weight.dtype == torch.float64


def test_seeded_construction_is_reproducible():
    def build():
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return build_backbone("auto", input_kind="image", input_shape=(1, 8, 8))[0]

    a, b = build(), build()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("shape, depth", [
    ((1, 8, 8), 3), ((1, 9, 9), 3), ((1, 10, 10), 4), ((1, 28, 28), 4), ((3, 9, 20), 4),
])
def test_small_cnn_gets_a_fourth_block_when_the_image_exceeds_the_window(shape, depth):
    # three blocks already see 9x9: a fourth only where an image is larger
    for name in ("auto", "small_cnn"):
        module, dim = build_backbone(name, input_kind="image", input_shape=shape)
        assert isinstance(module, SmallCNN) and module.depth == depth and dim == 128
