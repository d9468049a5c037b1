"""CueCoEmbedder settings for the data sets of the CueCo paper.

``CueCoEmbedder(**recipe("cifar10"))`` trains with the hyper-parameters of
the method as specified in ``docs/method.rst`` (which follows the paper
where it is explicit and the MoCo v2 practice it builds on elsewhere). Each
value's comment says where it comes from. Override any of them as usual:
``CueCoEmbedder(**{**recipe("cifar10"), "max_epochs": 200})``.
"""

import copy

_COMMON = {
    "backbone": "resnet18",     # the paper's backbone; CIFAR stem (3x3, no max-pool) at <= 64 px
    "projection_dim": 128,      # docs/method.rst: projector ... -> D = 128
    "hidden_dim": 2048,         # docs/method.rst: projector hidden width 2048
    "temperature": 0.2,         # docs/method.rst: tau = 0.2 (MoCo v2)
    "key_momentum": 0.99,       # docs/method.rst: EMA 0.99 -> 1.0 on a cosine (solo-learn's MoCo v2+)
    "cluster_weight": 1.0,      # docs/method.rst: lambda = 1.0 (0 gives the MoCo v2 baseline)
    "cluster_warmup": 10,       # docs/method.rst: clustering off for the first 10 epochs
    "cluster_update": "online",  # docs/method.rst default: moving-average centroids after every step
    "cluster_loss": "pull",     # docs/method.rst: squared distance to the assigned centroid
    "cluster_balance": 0.0,  # docs/method.rst: a = argmax_k k . M_k (not balanced)
    "cluster_negatives": "keep",  # docs/method.rst: every queue key is a negative (eq. 1)
    "cluster_positives": "view",  # docs/method.rst: the other view's key is the positive (eq. 1)
    "overclustering": 0,        # docs/method.rst: one set of K centroids
    "augmentation": "rgb",      # docs/method.rst: crop 0.2-1, flip, jitter 0.4/0.4/0.4/0.1, gray 0.2
    "optimizer": "sgd",         # docs/method.rst: SGD, momentum 0.9
    "lr": "auto",               # docs/method.rst: 0.06 * batch_size / 256 (MoCo v2 CIFAR practice)
    "batch_size": 256,          # docs/method.rst: batch 256
}

_RECIPES = {
    "cifar10": {
        **_COMMON,
        "max_epochs": 1000,     # the budget of the paper's CIFAR-10 table (solo-learn, 1000
                                # epochs; docs/method.rst); the paper does not state CueCo's own
        "queue_size": 4096,     # docs/method.rst: queue 4096 on CIFAR-scale data
        "n_clusters": 10,       # docs/method.rst: about the number of classes
        "weight_decay": 5e-4,   # docs/method.rst: weight decay 5e-4 (CIFAR-scale)
        "image_size": None,     # CIFAR arrays are 32x32 already
    },
    "cifar100": {
        **_COMMON,
        "max_epochs": 1000,     # as CIFAR-10: same table protocol
        "queue_size": 4096,     # docs/method.rst: queue 4096 on CIFAR-scale data
        "n_clusters": 100,      # docs/method.rst: about the number of classes
        "weight_decay": 5e-4,   # docs/method.rst: weight decay 5e-4 (CIFAR-scale)
        "image_size": None,     # CIFAR arrays are 32x32 already
    },
    "imagenet100": {
        **_COMMON,
        "max_epochs": 400,      # our choice: solo-learn's ImageNet-100 budget (not in the paper)
        "queue_size": 65536,    # docs/method.rst: 65536 for ImageNet-scale data (MoCo)
        "n_clusters": 100,      # docs/method.rst: about the number of classes
        "weight_decay": 1e-4,   # MoCo v2 on ImageNet; docs/method.rst's 5e-4 is for CIFAR scale
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
        The recipe names, sorted.
    """
    return sorted(_RECIPES)
