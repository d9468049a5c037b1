"""Backbone networks that map an input batch to the feature ``h`` that
``transform`` returns: a small CNN, an MLP, torchvision ResNets and user modules.

Every builder here constructs freshly initialised weights with PyTorch's own
initialisers, which draw from the global torch RNG. Library code makes no
global RNG calls of its own: a caller that needs reproducible weights builds
the backbone inside ``torch.random.fork_rng()`` after ``torch.manual_seed``.
"""

import copy
from numbers import Integral

import torch
from torch import nn

__all__ = ["BACKBONE_NAMES", "MLP", "GlobalPool", "SmallCNN", "build_backbone", "resnet"]

BACKBONE_NAMES = ("auto", "small_cnn", "mlp", "resnet18", "resnet50")

_RESNET_OUT_DIMS = {"resnet18": 512, "resnet50": 2048}
_IMAGE_ONLY = ("small_cnn", "resnet18", "resnet50")
_INPUT_KINDS = ("image", "vector")

# ResNet-18 on 32x32 input with the ImageNet stem leaves a 1x1 map after
# layer4; below this size the small CNN is both faster and better suited.
_MIN_RESNET_SIZE = 32
# Up to this size the ImageNet stem (7x7 stride 2 + max-pool, a 4x reduction)
# throws away too much resolution, so the CIFAR stem is used instead.
_MAX_CIFAR_STEM_SIZE = 64
# An output position of the small CNN's third block sees a 9x9 window: images
# up to this size fit in it, larger ones get a fourth block (a 17x17 window).
_SMALL_CNN_WINDOW = 9


def _check_positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}.")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}.")
    return int(value)


def _conv_bn_relu(in_channels, out_channels, stride):
    # No conv bias: the following BatchNorm has its own shift.
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


_POOL_MODES = ("max", "avg")


class GlobalPool(nn.Module):
    """Global max or average pooling of ``(N, C, H, W)`` maps to ``(N, C, 1, 1)``.

    The mode is stored in the state dict (buffer ``max_pool``), so weights
    saved, checkpointed or resumed keep the pooling they were trained with. A
    state dict without that key comes from a network that had no state in its
    pooling layer, which was global average pooling; loading it selects
    ``"avg"``.

    Parameters
    ----------
    mode : {"max", "avg"}, default="max"
        Maximum or mean over the spatial positions.

    Notes
    -----
    The maximum is taken with :meth:`torch.Tensor.amax`, whose gradient is
    spread evenly over tied positions and computed without atomics, so it is
    deterministic on every device (unlike the index-based
    :class:`torch.nn.AdaptiveMaxPool2d` backward on CUDA).
    """

    def __init__(self, mode="max"):
        super().__init__()
        if mode not in _POOL_MODES:
            raise ValueError(f"pool must be one of {list(_POOL_MODES)}, got {mode!r}.")
        self.mode = mode
        # uint8 rather than bool: every collective backend broadcasts it
        self.register_buffer("max_pool", torch.tensor(int(mode == "max"), dtype=torch.uint8))

    def forward(self, x):
        """Pool every map to one value.

        Parameters
        ----------
        x : Tensor of shape (n_samples, channels, height, width)
            Feature maps.

        Returns
        -------
        pooled : Tensor of shape (n_samples, channels, 1, 1)
            The maximum or the mean of each map.
        """
        # a Python attribute, not the buffer: reading a tensor here would
        # synchronise with a GPU on every forward
        if self.mode == "max":
            return x.amax(dim=(2, 3), keepdim=True)
        return x.mean(dim=(2, 3), keepdim=True)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        key = prefix + "max_pool"
        if key not in state_dict:
            # weights from before the pooling kept a state: average pooling
            state_dict = {**state_dict, key: torch.tensor(0, dtype=torch.uint8)}
        elif (not isinstance(state_dict[key], torch.Tensor)
              or state_dict[key].numel() != 1):
            error_msgs.append(f"{key} must hold one boolean, got {state_dict[key]!r}.")
            return
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)
        self.mode = "max" if bool(state_dict[key].item()) else "avg"

    def extra_repr(self):
        return f"mode={self.mode!r}"


class SmallCNN(nn.Module):
    """Small convolutional network for small images (8x8 digits, 28x28 MNIST).

    Three conv3x3-BatchNorm-ReLU blocks of widths ``width``, ``2 * width`` and
    ``4 * width``, the last two of stride 2, then ``depth - 3`` more blocks of
    width ``4 * width`` and stride 1, followed by global max pooling
    (``pool="max"``) or global average pooling (``pool="avg"``).

    Parameters
    ----------
    in_channels : int, default=1
        Number of input channels.

    width : int, default=32
        Number of channels of the first block; the later blocks double it.

    pool : {"max", "avg"}, default="max"
        Global pooling of the last feature map. Each output position of the
        third block sees a 9x9 window, so on a 28x28 image of a small object
        average pooling mixes the few windows on the object with many on the
        background; the maximum keeps the strongest response wherever the
        object is (docs/method_results.rst measures both). The mode is kept in
        the state dict; weights saved before it existed load as ``"avg"``.

    depth : int, default=4
        Number of blocks, at least 3. Each block of stride 1 after the third
        keeps the resolution and widens the window each output position sees
        by 8 pixels (9x9 after three blocks, 17x17 after four), so that on a
        28x28 image one position can see a whole centred object
        (docs/method_results.rst measures 3 and 4; ``backbone="auto"`` uses
        3 for images of at most 9 pixels, which the window already covers). Loading a state dict
        with fewer blocks (down to 3) removes the extra ones, so weights
        saved with three blocks, the default before ``depth`` existed, keep
        their network.

    Attributes
    ----------
    out_dim : int
        Dimension of the output features, ``4 * width``.

    See Also
    --------
    MLP : Backbone for vector input.
    resnet : Torchvision ResNets for larger images.

    Notes
    -----
    The second and third blocks use stride 2. A 3x3 convolution with padding 1
    and stride 2 maps any spatial size ``s >= 1`` to ``ceil(s / 2) >= 1``, so
    the network accepts every input size, down to 1x1; global pooling
    makes the output size independent of the input size.

    Weights use PyTorch's default initialisation, drawn from the global torch
    RNG; seed it inside ``torch.random.fork_rng()`` for reproducible weights.

    Examples
    --------
    >>> import torch
    >>> from skcueco.backbones import SmallCNN
    >>> net = SmallCNN(in_channels=1, width=8)
    >>> net(torch.zeros(4, 1, 8, 8)).shape
    torch.Size([4, 32])
    """

    # what a SmallCNN pickled before ``depth`` existed reads: it had three blocks
    depth = 3

    def __init__(self, in_channels=1, width=32, pool="max", depth=4):
        super().__init__()
        in_channels = _check_positive_int(in_channels, "in_channels")
        width = _check_positive_int(width, "width")
        depth = _check_positive_int(depth, "depth")
        if depth < 3:
            raise ValueError(f"depth must be at least 3, got {depth}.")
        self.in_channels = in_channels
        self.width = width
        self.depth = depth
        # Full resolution in the first block keeps detail on 8x8 inputs; the
        # later strides keep the cost low on 28x28 and larger images.
        self.features = nn.Sequential(
            _conv_bn_relu(in_channels, width, stride=1),
            _conv_bn_relu(width, 2 * width, stride=2),
            _conv_bn_relu(2 * width, 4 * width, stride=2),
            *(_conv_bn_relu(4 * width, 4 * width, stride=1) for _ in range(depth - 3)),
        )
        self.pool = GlobalPool(pool)
        self.out_dim = 4 * width

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # Called before the blocks load theirs: weights of a network with
        # fewer blocks (three, before ``depth`` existed) drop the extra ones,
        # as GlobalPool takes its mode from the weights.
        n_blocks = 0
        while f"{prefix}features.{n_blocks}.0.weight" in state_dict:
            n_blocks += 1
        if 3 <= n_blocks < len(self.features):
            del self.features[n_blocks:]
            self.depth = n_blocks
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def forward(self, x):
        """Compute features.

        Parameters
        ----------
        x : Tensor of shape (n_samples, in_channels, height, width)
            Input images.

        Returns
        -------
        h : Tensor of shape (n_samples, out_dim)
            Pooled features.
        """
        x = self.features(x)  # (N, 4w, H', W')
        return self.pool(x).flatten(1)  # (N, 4w)


class MLP(nn.Module):
    """Multi-layer perceptron backbone for vector input.

    ``n_layers`` Linear-BatchNorm-ReLU blocks; the output of the last block is
    the feature.

    Parameters
    ----------
    in_features : int
        Number of input features.

    hidden_dim : int, default=256
        Width of every block but the last.

    out_dim : int, default=128
        Width of the last block, that is the feature dimension.

    n_layers : int, default=2
        Number of Linear-BatchNorm-ReLU blocks.

    Attributes
    ----------
    out_dim : int
        Dimension of the output features.

    See Also
    --------
    SmallCNN : Backbone for small images.

    Notes
    -----
    BatchNorm needs more than one sample per batch in training mode, so train
    with batches of at least two samples (for example ``drop_last=True``).

    Weights use PyTorch's default initialisation, drawn from the global torch
    RNG; seed it inside ``torch.random.fork_rng()`` for reproducible weights.

    Examples
    --------
    >>> import torch
    >>> from skcueco.backbones import MLP
    >>> net = MLP(in_features=5, hidden_dim=16, out_dim=8)
    >>> net(torch.zeros(4, 5)).shape
    torch.Size([4, 8])
    """

    def __init__(self, in_features, hidden_dim=256, out_dim=128, n_layers=2):
        super().__init__()
        in_features = _check_positive_int(in_features, "in_features")
        hidden_dim = _check_positive_int(hidden_dim, "hidden_dim")
        out_dim = _check_positive_int(out_dim, "out_dim")
        n_layers = _check_positive_int(n_layers, "n_layers")
        self.in_features = in_features
        self.hidden_dim = hidden_dim
        self.n_layers = n_layers
        dims = [in_features] + [hidden_dim] * (n_layers - 1) + [out_dim]
        blocks = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            blocks += [
                # No bias: the following BatchNorm has its own shift.
                nn.Linear(d_in, d_out, bias=False),
                nn.BatchNorm1d(d_out),
                nn.ReLU(inplace=True),
            ]
        self.layers = nn.Sequential(*blocks)
        self.out_dim = out_dim

    def forward(self, x):
        """Compute features.

        Parameters
        ----------
        x : Tensor of shape (n_samples, in_features)
            Input vectors.

        Returns
        -------
        h : Tensor of shape (n_samples, out_dim)
            Features.
        """
        return self.layers(x)


def resnet(name, in_channels=3, cifar_stem=False):
    """Build a randomly initialised torchvision ResNet without its classifier.

    Parameters
    ----------
    name : {"resnet18", "resnet50"}
        Architecture.

    in_channels : int, default=3
        Number of input channels. When different from 3, ``conv1`` is
        replaced by a convolution with the same geometry that accepts
        ``in_channels`` channels.

    cifar_stem : bool, default=False
        If True, replace the ImageNet stem (7x7 stride-2 ``conv1`` and
        max-pool) by a 3x3 stride-1 ``conv1`` without max-pool, the usual
        choice for 32x32 images.

    Returns
    -------
    model : torchvision.models.ResNet
        The network, with ``fc`` replaced by :class:`torch.nn.Identity`, so it
        returns pooled features of shape (n_samples, out_dim). Its ``out_dim``
        attribute is 512 for ResNet-18 and 2048 for ResNet-50.

    Notes
    -----
    No pretrained weights are ever downloaded (``weights=None``). Weights are
    drawn from the global torch RNG; seed it inside ``torch.random.fork_rng()``
    for reproducible weights.

    Examples
    --------
    >>> import torch
    >>> from skcueco.backbones import resnet
    >>> net = resnet("resnet18", cifar_stem=True)
    >>> net.out_dim
    512
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 512])
    """
    # Imported here: only ResNets need torchvision, and it is slow to import.
    from torchvision import models

    if name not in _RESNET_OUT_DIMS:
        raise ValueError(
            f"name must be one of {sorted(_RESNET_OUT_DIMS)}, got {name!r}."
        )
    in_channels = _check_positive_int(in_channels, "in_channels")
    model = getattr(models, name)(weights=None)
    if cifar_stem:
        model.conv1 = nn.Conv2d(
            in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False
        )
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(
            in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False
        )
    if cifar_stem or in_channels != 3:
        # Same initialisation torchvision gives every other conv of the net.
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.fc = nn.Identity()
    model.out_dim = _RESNET_OUT_DIMS[name]
    return model


def _check_input(input_kind, input_shape):
    if input_kind not in _INPUT_KINDS:
        raise ValueError(
            f"input_kind must be one of {list(_INPUT_KINDS)}, got {input_kind!r}."
        )
    expected_len = 3 if input_kind == "image" else 1
    expected = "(C, H, W)" if input_kind == "image" else "(n_features,)"
    try:
        input_shape = tuple(input_shape)
    except TypeError:
        raise TypeError(
            f"input_shape must be a tuple {expected}, got {input_shape!r}."
        ) from None
    if len(input_shape) != expected_len or not all(
        isinstance(s, Integral) and not isinstance(s, bool) and s >= 1
        for s in input_shape
    ):
        raise ValueError(
            f"input_shape for input_kind={input_kind!r} must be {expected} with "
            f"positive ints, got {input_shape!r}."
        )
    return tuple(int(s) for s in input_shape)


def _output_dim(module, input_shape):
    """Infer the feature dimension of ``module`` by a dry run on zeros."""
    tensors = [*module.parameters(), *module.buffers()]
    floats = [t for t in tensors if t.is_floating_point()]
    # Match the module's device and dtype so a CUDA or float64 module works.
    device = floats[0].device if floats else torch.device("cpu")
    dtype = floats[0].dtype if floats else torch.get_default_dtype()
    # Two samples, not one: BatchNorm and similar layers reject a batch of one.
    x = torch.zeros((2, *input_shape), device=device, dtype=dtype)
    # Per-submodule flags, because a user may keep parts (e.g. frozen BN) in
    # eval mode while the rest trains; module.train(flag) would erase that.
    modes = {m: m.training for m in module.modules()}
    module.eval()  # eval mode: the dry run must not update BatchNorm statistics
    try:
        with torch.no_grad():
            out = module(x)
    except Exception as exc:
        raise ValueError(
            f"The backbone module does not accept input of shape "
            f"(N, {', '.join(map(str, input_shape))}): {type(exc).__name__}: {exc}"
        ) from exc
    finally:
        for m, training in modes.items():
            m.training = training
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 2:
        got = (
            f"a tensor of shape {tuple(out.shape)}"
            if isinstance(out, torch.Tensor)
            else f"an object of type {type(out).__name__}"
        )
        raise ValueError(
            "The backbone module must return a tensor of shape "
            f"(n_samples, n_features); on 2 samples of shape {input_shape} it "
            f"returned {got}. Add pooling and flattening at its end."
        )
    if out.shape[1] < 1:
        raise ValueError("The backbone module returned features of dimension 0.")
    return int(out.shape[1])


def build_backbone(backbone, *, input_kind, input_shape):
    """Build the backbone for inputs of a given kind and shape.

    Parameters
    ----------
    backbone : {"auto", "small_cnn", "mlp", "resnet18", "resnet50"} or \
            torch.nn.Module
        Backbone to build.

        - ``"auto"``: :class:`MLP` for vectors; for images, :class:`SmallCNN`
          when ``min(H, W) < 32``, otherwise ResNet-18.
        - ``"small_cnn"``, ``"resnet18"``, ``"resnet50"``: image backbones.
          The small CNN has three blocks when ``max(H, W) <= 9`` (the window
          one position of its third block sees) and four otherwise. ResNets
          use the CIFAR stem when ``max(H, W) <= 64``.
        - ``"mlp"``: :class:`MLP`; images are flattened first.
        - a :class:`torch.nn.Module` mapping a batch of shape
          ``(n_samples, *input_shape)`` to features of shape
          ``(n_samples, n_features)``. It is deep-copied, so the caller's
          module is never modified.

    input_kind : {"image", "vector"}
        Kind of input.

    input_shape : tuple of int
        Shape of one sample: ``(C, H, W)`` for images, ``(n_features,)`` for
        vectors.

    Returns
    -------
    module : torch.nn.Module
        The backbone, freshly initialised for a named backbone.

    out_dim : int
        Dimension of the features the backbone returns.

    Raises
    ------
    TypeError
        If ``backbone`` is neither a str nor a :class:`torch.nn.Module`.

    ValueError
        If ``backbone`` is an unknown name, an image backbone for vector
        input, or a module that does not map ``(N, *input_shape)`` to a 2-D
        output.

    Notes
    -----
    For a user module, the output dimension is found by a dry run on two
    zero samples under :func:`torch.no_grad` in eval mode, so BatchNorm
    statistics are left untouched; the train/eval flags of the copy are
    restored afterwards.

    Named backbones draw their weights from the global torch RNG; seed it
    inside ``torch.random.fork_rng()`` for reproducible weights.

    Examples
    --------
    >>> from skcueco.backbones import build_backbone
    >>> module, out_dim = build_backbone("auto", input_kind="image",
    ...                                  input_shape=(1, 8, 8))
    >>> type(module).__name__, out_dim
    ('SmallCNN', 128)
    """
    input_shape = _check_input(input_kind, input_shape)

    if isinstance(backbone, nn.Module):
        module = copy.deepcopy(backbone)
        return module, _output_dim(module, input_shape)
    if not isinstance(backbone, str):
        raise TypeError(
            "backbone must be a str or a torch.nn.Module instance, got "
            f"{type(backbone).__name__}."
        )
    if backbone not in BACKBONE_NAMES:
        raise ValueError(
            f"backbone must be one of {list(BACKBONE_NAMES)} or a torch.nn.Module "
            f"instance, got {backbone!r}."
        )

    if input_kind == "vector":
        if backbone in _IMAGE_ONLY:
            raise ValueError(
                f"backbone={backbone!r} needs image input of shape (C, H, W), but "
                f"the input is vectors of shape {input_shape}. Use backbone='mlp' "
                "or 'auto', or pass a torch.nn.Module."
            )
        module = MLP(input_shape[0])
        return module, module.out_dim

    c, h, w = input_shape
    if backbone == "auto":
        backbone = "small_cnn" if min(h, w) < _MIN_RESNET_SIZE else "resnet18"
    if backbone == "mlp":
        mlp = MLP(c * h * w)
        return nn.Sequential(nn.Flatten(), mlp), mlp.out_dim
    if backbone == "small_cnn":
        module = SmallCNN(in_channels=c, depth=3 if max(h, w) <= _SMALL_CNN_WINDOW else 4)
        return module, module.out_dim
    module = resnet(
        backbone, in_channels=c, cifar_stem=max(h, w) <= _MAX_CIFAR_STEM_SIZE
    )
    return module, module.out_dim
