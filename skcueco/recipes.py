"""CueCoEmbedder settings for the data sets of the CueCo paper.

``CueCoEmbedder(**recipe("cifar10"))`` trains with the hyper-parameters of
the team's specification of the method (``CUECO.md``, which follows the paper
where it is explicit and the MoCo v2 practice it builds on elsewhere). Each
value's comment says where it comes from. Override any of them as usual:
``CueCoEmbedder(**{**recipe("cifar10"), "max_epochs": 200})``.
"""

import copy

_COMMON = {
    "backbone": "resnet18",     # the paper's backbone; CIFAR stem (3x3, no max-pool) at <= 64 px
    "projection_dim": 128,      # CUECO.md: projector ... -> D = 128
    "hidden_dim": 2048,         # CUECO.md: projector hidden width 2048
    "temperature": 0.2,         # CUECO.md: tau = 0.2 (MoCo v2)
    "key_momentum": 0.99,       # CUECO.md: EMA 0.99 -> 1.0 on a cosine (solo-learn's MoCo v2+)
    "cluster_weight": 1.0,      # CUECO.md: lambda = 1.0 (0 gives the MoCo v2 baseline)
    "cluster_warmup": 10,       # CUECO.md: clustering off for the first 10 epochs
    "cluster_update": "online",  # CUECO.md default: moving-average centroids after every step
    "cluster_loss": "pull",     # CUECO.md: squared distance to the assigned centroid
    "augmentation": "rgb",      # CUECO.md: crop 0.2-1, flip, jitter 0.4/0.4/0.4/0.1, gray 0.2
    "optimizer": "sgd",         # CUECO.md: SGD, momentum 0.9
    "lr": "auto",               # CUECO.md: 0.06 * batch_size / 256 (MoCo v2 CIFAR practice)
    "batch_size": 256,          # CUECO.md: batch 256
}

_RECIPES = {
    "cifar10": {
        **_COMMON,
        "max_epochs": 1000,     # the budget of the paper's CIFAR-10 table (solo-learn, 1000
                                # epochs; CUECO.md); the paper does not state CueCo's own
        "queue_size": 4096,     # CUECO.md: queue 4096 on CIFAR-scale data
        "n_clusters": 10,       # CUECO.md: about the number of classes
        "weight_decay": 5e-4,   # CUECO.md: weight decay 5e-4 (CIFAR-scale)
        "image_size": None,     # CIFAR arrays are 32x32 already
    },
    "cifar100": {
        **_COMMON,
        "max_epochs": 1000,     # as CIFAR-10: same table protocol
        "queue_size": 4096,     # CUECO.md: queue 4096 on CIFAR-scale data
        "n_clusters": 100,      # CUECO.md: about the number of classes
        "weight_decay": 5e-4,   # CUECO.md: weight decay 5e-4 (CIFAR-scale)
        "image_size": None,     # CIFAR arrays are 32x32 already
    },
    "imagenet100": {
        **_COMMON,
        "max_epochs": 400,      # our choice: solo-learn's ImageNet-100 budget (not in the paper)
        "queue_size": 65536,    # CUECO.md: 65536 for ImageNet-scale data (MoCo)
        "n_clusters": 100,      # CUECO.md: about the number of classes
        "weight_decay": 1e-4,   # MoCo v2 on ImageNet; CUECO.md's 5e-4 is for CIFAR scale
        "image_size": 224,      # the standard ImageNet training resolution (MoCo, solo-learn);
                                # standard ResNet stem above 64 px
        "num_workers": 8,       # JPEG decoding runs in loader workers; 8 keeps one GPU busy
    },
}


def recipe(name):
    """CueCoEmbedder parameters for one of the paper's data sets.

    Parameters
    ----------
    name : {"cifar10", "cifar100", "imagenet100"}
        Data set.

    Returns
    -------
    params : dict
        Keyword arguments for :class:`~skcueco.CueCoEmbedder`; a new dict on
        every call.

    Raises
    ------
    ValueError
        If ``name`` is not a known recipe.

    Examples
    --------
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.recipes import recipe
    >>> recipe("cifar10")["queue_size"]
    4096
    >>> emb = CueCoEmbedder(**{**recipe("cifar10"), "max_epochs": 200})
    >>> emb.n_clusters, emb.max_epochs
    (10, 200)
    """
    if name not in _RECIPES:
        raise ValueError(
            f"Unknown recipe {name!r}; available: {', '.join(sorted(_RECIPES))}."
        )
    return copy.deepcopy(_RECIPES[name])


def recipe_names():
    """Names accepted by :func:`recipe`.

    Returns
    -------
    names : list of str
    """
    return sorted(_RECIPES)
