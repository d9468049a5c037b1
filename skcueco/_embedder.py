"""CueCoEmbedder: the scikit-learn transformer that trains CueCo."""

import dataclasses
import numbers
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.validation import check_is_fitted

from ._base import restored_on_error
from ._readout import readout, readout_rows, uses_views
from ._persistence import TorchStateMixin, load_embedder, save_embedder, trained_from_pickle
from .backbones import BACKBONE_NAMES
from .callbacks import Callback, ProgressBar
from .data.preprocess import input_statistics
from .data.validation import check_input, image_format, spec_from_image_shape
from .training.checkpoint import (LOADED_BEFORE, RunRecord, check_checkpoint_fits,
                                  read_checkpoint)
from .training.run import Seeds, fit_cueco, untrained_cueco
from .training.specs import RunSpec, Start
from .training.trained import EMBEDDING_SPACES

_HISTORY_COLUMNS = ["epoch", "loss", "contrastive", "clustering", "contrastive_chance", "lr",
                    "cluster_weight", "seconds"]


class CueCoEmbedder(
    TorchStateMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin, BaseEstimator
):
    """Learn image embeddings without labels with Cluster Contrast (CueCo).

    ``fit`` trains a query network by gradient and a key network as its
    exponential moving average, with a symmetric InfoNCE loss against a queue
    of keys (spreading images apart) plus a clustering loss that pulls each
    projection towards the centroid its other view's key is assigned to.
    ``transform`` returns the backbone features of the query network,
    standardised with their training-set mean and standard deviation (so
    that cosine similarities and distances weigh every feature alike), and
    the unit projections, side by side (``embedding_space``).

    The parameters come in groups, in this order: the networks and the
    contrastive term (``backbone`` to ``embedding_space``); the clusters
    (``n_clusters`` to ``cluster_positives``); the input and its views
    (``augmentation``, ``image_shape``, ``image_size``); the optimisation
    (``batch_size`` to ``optimizer``); and how and where the run computes
    (``amp`` to ``verbose``), which never changes what is learned beyond
    floating-point rounding. docs/method_results.rst has the measurements
    behind each default.

    Parameters
    ----------
    backbone : {"auto", "small_cnn", "mlp", "resnet18", "resnet50"} or torch.nn.Module, \
            default="auto"
        Feature extractor. ``"auto"`` picks an MLP for plain vectors, a small
        CNN (:class:`~skcueco.backbones.SmallCNN`, global max pooling) for
        images smaller than 32 pixels and ResNet-18 otherwise. ResNets
        use the CIFAR stem (3x3 stride-1 first convolution, no max-pool) for
        inputs of 64 pixels or less. A module is copied, never modified, and
        must map ``(N, C, H, W)`` (or ``(N, d)``) to ``(N, n_features)``.
    projection_dim : int, default=128
        Dimension of the normalised projections the losses compare.
    hidden_dim : int, default=2048
        Hidden width of the projection head (used in training; ``predict``
        reads the projections too).
    queue_size : int or "auto", default="auto"
        Number of negative keys remembered; 0 uses the other images of the
        batch as negatives. ``"auto"``: a quarter of the training samples, at
        most 4096 (65536 from 500,000 samples on): a queue close to the
        number of samples holds other views of the very images being queried
        as negatives. An explicit value is capped at the number of samples.
        The value used is ``queue_size_``.
    temperature : float, default=0.2
        Temperature of the InfoNCE loss.
    key_momentum : float, default=0.98
        Starting EMA momentum of the key network, raised to 1.0 along a
        cosine schedule over training. MoCo v2's schedule starts at 0.99
        (the paper recipes keep it); 0.98 lets the key network follow the
        queries faster in the few hundred steps of a short run, which gave
        better clusters and neighbours on most benchmark sets
        (docs/method_results.rst, "The key network's momentum").
    embedding_space : {"joint", "features", "projection"}, default="joint"
        What ``transform`` returns. ``"features"``: the backbone features
        standardised on the training set (``feature_dim`` columns), the
        input of the classifier's linear heads. ``"projection"``: the
        unit-norm projections that the contrastive and clustering terms
        shape and ``predict`` reads (``projection_dim`` columns; their
        cosine neighbours are the closest to the classes). ``"joint"``:
        both, each scaled to the same norm, side by side (``n =
        feature_dim + projection_dim`` columns, rows of norm ``sqrt(n)``):
        neighbours and k-means better than on the features, and a linear
        model as good (docs/method_results.rst, "The embedding
        ``transform`` returns"). Read at ``transform`` time only: changing
        it needs no refit.
    n_clusters : int, default=10
        Number of centroids; about the number of classes, or more.
    cluster_weight : float, default=1.0
        Weight ``lambda`` of the clustering term. 0 gives symmetric MoCo v2.
    cluster_warmup : int or "auto", default="auto"
        Only used when ``cluster_weight > 0``. Epochs trained with the clustering term off, before the centroids are
        initialised by spherical k-means. ``"auto"``: 15 % of ``max_epochs``
        (rounded down). The value used is ``cluster_warmup_``.
    cluster_ramp : int or "auto", default="auto"
        Only used when ``cluster_weight > 0``. Epochs after the warm-up over which the clustering weight rises
        linearly to ``cluster_weight`` (0: full weight at once). ``"auto"``:
        10 % of ``max_epochs`` (rounded down). The value used is
        ``cluster_ramp_``.
    cluster_assign : {"sinkhorn", "argmax"}, default="deprecated"
        Deprecated: use ``cluster_balance`` (``"argmax"`` is
        ``cluster_balance=0``; ``"sinkhorn"`` is any balance above 0). Setting
        it warns with a FutureWarning; it will be removed in a future version.
    cluster_balance : float, default=0.5
        How strictly training keys are assigned to centroids in equal shares
        of each batch, in ``[0, 1]``. 0: each key goes to its most similar
        centroid (the paper's form, kept by :func:`~skcueco.recipes.recipe`).
        1: every centroid gets an equal share, by Sinkhorn-Knopp (SwAV's
        equipartition). Between, the equal shares are a soft penalty
        (unbalanced optimal transport): each Sinkhorn step moves a centroid's
        share only this fraction of the way to the equal share, so groups of
        different sizes keep more of their size while a centroid that would
        take most of the batch is still held back. ``predict`` always uses
        the most similar centroid. docs/method_results.rst has the
        measurements behind the default.
    overclustering : int, default=3
        Over-clustering: a second set of ``overclustering * n_clusters``
        centroids is trained alongside the ``n_clusters`` ones, and the
        clustering term is the mean of the terms against the two sets. The
        finer set shapes the embedding; ``predict`` gives ``n_clusters``
        clusters whatever it is. 0 trains the ``n_clusters``
        centroids alone (the paper's form, kept by
        :func:`~skcueco.recipes.recipe`). The set is left out of a fit
        whose training set has fewer samples than it has centroids.
    refine_centroids : int, default=10
        Only used when ``cluster_graph=0`` (or the training set is too small
        for the graph). Spherical k-means iterations, started from the
        trained centroids, on the projections of the training set at the end
        of ``fit``, so that ``predict`` uses centroids fitted to the final
        embedding. 0 keeps the online centroids, as ``partial_fit`` always
        does. ``fit`` also warns
        (:class:`~skcueco.training.run.TrainingCollapseWarning`) when the run
        ended collapsed: a contrastive loss at its chance value, or more than
        90 % of the training set in one of the clusters the clustering term
        trained towards.
    cluster_graph : int, default=20
        How ``fit`` reads the clusters that ``predict`` gives from the
        trained embedding. With ``k > 0``, each training image is linked to
        its ``k`` most similar images (cosine of the projections; on images
        of 16 pixels and more, of each projection plus those of 4 augmented
        views of the image, unless ``augmentation="none"``); spectral
        clustering cuts that graph into 1, 3 and 5 small groups per cluster
        and merges the groups into ``n_clusters`` clusters; of these cuts,
        the one of highest modularity on the graph is kept. Training sets of
        more than 5,000 images are read on a fixed random subset of 5,000.
        ``predict`` gives an image the cluster that its 10 most similar
        read images vote for (``cluster_prototypes_``, weighted by
        similarity). Images of a class that form several
        compact groups stay together, where a single centroid per cluster
        splits or merges them. 0: the clusters are the trained centroids
        (refined, see ``refine_centroids``). Not used by ``partial_fit``,
        nor on training sets of ``2 * n_clusters`` images or fewer. Where
        some classes have fewer training images than ``k`` (long-tailed
        data), a smaller ``k`` such as 10 brought the clusters 0.014 to
        0.024 NMI closer to the classes on the long-tailed benchmark sets;
        elsewhere it cost up to 0.042 (real animal silhouettes), and 6
        neighbours were too few (docs/method_results.rst, "Fewer neighbours
        in the graph").
    cluster_targets : {"auto", "centroids", "graph"}, default="auto"
        What the clustering term assigns keys to. ``"graph"``: at the start
        of the first epoch with the clustering term on, and of every third
        epoch after it (every epoch with ``cluster_update="epoch"``), the key
        projections of the training set are cut by the same graph read-out
        as ``predict``'s (``cluster_graph`` neighbours), the centroids move
        onto its clusters' mean directions,
        and until the next read each key is assigned the cluster its 10 most
        similar key projections of that partition vote for, where at least
        70 % of the vote's weight agrees; a key whose neighbours disagree is
        assigned as with ``"centroids"``. The finer set of
        ``overclustering`` keeps its centroids. Each read costs one pass of
        the key network over the training set (at most 5,000 images of it)
        and one read-out.
        ``"centroids"``: the ``n_clusters`` centroids (balanced by
        ``cluster_balance``), the paper's form. ``"auto"``: ``"graph"`` when
        ``cluster_graph > 0``, else ``"centroids"``. ``"graph"`` needs
        ``cluster_graph > 0``; on training sets too small for the graph the
        centroids are used. docs/method_results.rst, "Graph targets",
        measures both.
    cluster_update : {"online", "epoch"}, default="online"
        Only used when ``cluster_weight > 0``. ``"online"``: moving-average update of the centroids after every step.
        ``"epoch"``: k-means on the whole training set before every epoch.
    cluster_loss : {"proto", "pull"}, default="proto"
        ``"proto"``: cross-entropy of the softmax over all centroids with
        the assigned one as the target, which also pushes each query away
        from the other centroids. ``"pull"``: squared distance to the
        assigned centroid, the paper's form.
    cluster_temperature : float, default=0.1
        Only used when ``cluster_loss="proto"``. Temperature of its softmax.
    cluster_momentum : float, default=0.9
        Only used when ``cluster_update="online"``. Momentum of the
        centroid update.
    cluster_negatives : {"drop", "keep"}, default="drop"
        Only used when ``cluster_weight > 0``. ``"drop"``: from half of
        ``max_epochs`` on, the queue keys that the clustering term assigns
        to a query's cluster (the one it pulls the query towards) are left
        out of that query's negatives, so that images of one cluster are
        no longer pushed apart (false-negative elimination). ``"keep"``:
        every key of the queue is a negative of every query, the paper's
        form. Leaving them out makes the embedding itself more clustered
        (k-means on ``transform`` gained 0.15 and 0.23 NMI on real
        handwriting and generated shapes at 20 epochs) and ``predict``
        better on most sets at 40 epochs (up to 0.046 NMI on real animal
        silhouettes), for a small loss on long-tailed digits at 20
        epochs (docs/method_results.rst, "Same-cluster negatives left out
        of the contrastive term"). A queued key keeps the cluster its own
        step assigned it, and the queue is assigned again once an epoch,
        so it adds no measurable time to ``fit``.
    cluster_positives : {"view", "neighbour"}, default="neighbour"
        Only used while ``cluster_negatives="drop"`` leaves negatives out.
        ``"neighbour"``: a query's positive is the queue key most similar
        to the key of the other view of its image, when that queue key was
        stored with the query's cluster (the other view's key otherwise):
        another image the clustering term already groups with it, as
        nearest-neighbour contrastive learning does. ``"view"``: always the
        other view's key, the paper's form. Over 8 seeds on real
        handwriting and real animal silhouettes ``predict`` gained 0.006 to
        0.019 NMI at 20 and 40 epochs, and kNN on the silhouettes lost
        0.008 to 0.010; on generated sets it moved within the spread
        (docs/method_results.rst, "Neighbours as positives").
    augmentation : {"auto", "rgb", "grayscale", "vector", "none"} or callable, \
            default="auto"
        How the two views are made. ``"auto"`` chooses from the input: the RGB
        recipe for 3 channels, the grayscale recipe for 1, Gaussian noise with
        feature masking for vectors. The grayscale recipe does not mirror
        the views (a mirrored digit is another symbol); for grayscale images
        of things whose mirror image is the same class, pass
        ``skcueco.augment.grayscale_augmentation(flip=True)``. A callable
        receives a float batch and returns a batch of the same shape.
    image_shape : "auto", None or tuple of int, default="auto"
        Only used for 2-D array input. How to read it. ``(H, W)`` or ``(H, W, C)`` reads each row as an
        image flattened in that order. ``None`` reads rows as plain vectors.
        ``"auto"`` reads rows of ``s*s`` or ``3*s*s`` values (``s >= 8``) as
        square grayscale or channels-last RGB images, others as vectors.
    image_size : int, tuple of (int, int) or None, default=None
        Only used for images read from files, folders, PIL images or a
        torch Dataset. ``(height, width)`` that images read from files, folders, PIL images
        or a torch Dataset are fitted to (scaled to cover it, aspect ratio
        kept, then centre-cropped); an int means a square. None: the size of
        the first image. New images in ``transform`` are fitted to the
        training size. Arrays are never resized.
    batch_size : int or "auto", default="auto"
        Images per optimiser step (capped at the number of samples); per
        process under ``torchrun``, where the learning rate follows the
        global batch ``batch_size * world_size``. ``"auto"``: 256 when an
        epoch then has at least 120 steps (30,720 training images or
        more), else 128 (15,360 or more), else 64 (7,680 or more), else 32
        for images of 16 pixels and more and 64 for smaller images and
        vectors: data sets of fewer images need more steps per epoch. One ``partial_fit`` call uses
        256 rows at most. The value used is ``batch_size_``.
    max_epochs : int, default=100
        Number of passes over the data.
    lr : float or "auto", default="auto"
        Peak learning rate. ``"auto"``: ``base * batch_size / 256`` with base
        0.06 for SGD, 0.3 for LARS and 1e-3 for AdamW.
    weight_decay : float, default=5e-4
        Weight decay (not applied to biases and normalisation layers).
    optimizer : {"sgd", "lars", "adamw"}, default="sgd"
        SGD with momentum 0.9, LARS (for large batches) or AdamW.
    amp : {"auto", "bf16", "fp16"} or bool, default="auto"
        Mixed precision in training. ``"auto"``: bf16 autocast on CUDA GPUs
        that support it and on processors that compute bf16 natively
        (AVX-512 BF16 or AMX, as PyTorch reports them), where it trains
        about 1.6-1.8 times as fast; full precision elsewhere (docs/training.rst).
        Losses, the queue, the centroids and the key network stay float32;
        ``transform`` runs in float32. ``"fp16"`` uses a gradient scaler. The
        choice made is ``amp_``.
    num_workers : int, default=0
        Loader worker processes gathering batches (useful on a GPU, and for
        images read from files).
    channels_last : "auto" or bool, default="auto"
        Channels-last memory format for image batches and convolutional
        weights, in training and inference; ``"auto"`` turns it on for
        images on CUDA, and on the CPU for the built-in convolutional
        backbones (``"small_cnn"``, ``"resnet18"``, ``"resnet50"``, and
        ``"auto"`` for images), where oneDNN's channels-last convolutions
        are the faster ones.
    warm_start : bool, default=False
        When True, ``fit`` on a fitted estimator continues training for
        ``max_epochs`` more epochs (new cosine cycle, no warm-up) keeping the
        weights, optimiser state, queue and centroids (also after ``load``
        or unpickling; a model saved with ``training_state=False`` refuses).
    compile : bool or str, default=False
        Run the backbones through ``torch.compile`` during training (the
        fitted ``encoder_`` stays a plain module). A string names the
        ``torch.compile`` backend (e.g. ``"inductor"``, ``"cudagraphs"``).
    distributed_bn : {"shuffle", "sync", "split"}, default="shuffle"
        Only used for backbones with BatchNorm. BatchNorm of the networks. Under ``torchrun`` (several processes):
        ``"shuffle"``, MoCo's shuffled BatchNorm for the key network, which
        keeps a batch's statistics from revealing which key matches which
        query (any backend, CPUs included); ``"sync"``, SyncBatchNorm in both
        networks (statistics over the global batch; CUDA only, one more
        collective per BatchNorm layer); ``"split"`` acts as ``"shuffle"``.
        In a single process ``"shuffle"`` and ``"sync"`` change nothing, and
        ``"split"`` encodes the keys of the shuffled batch in 8 groups with
        their own BatchNorm statistics.
    callbacks : list of Callback, default=None
        Hooks called during training (see :mod:`skcueco.callbacks`).
    device : str or torch.device, default="auto"
        ``"auto"`` uses CUDA, then MPS, then the CPU; or a torch device
        name such as ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.
    random_state : int, RandomState instance or None, default=None
        Seeds weights, shuffling and augmentations. On the CPU the same seed
        gives bitwise-identical embeddings (for the same number of torch
        threads). No global random state is used.
    verbose : int, default=0
        1 or more shows a progress bar over epochs.

    Attributes
    ----------
    encoder_ : torch.nn.Module
        The trained query backbone, in eval mode on ``device_``. It takes
        images in [0, 1] as ``(N, C, H, W)`` float tensors (vectors: inputs
        standardised with the training mean and standard deviation).
    cluster_centers_ : ndarray of shape (n_clusters, projection_dim)
        Unit-norm centroids in the projection space: each cluster's mean
        direction.
    cluster_prototypes_ : ndarray of shape (n_prototypes, projection_dim)
        Unit-norm prototypes of the clusters. With ``cluster_graph``, the
        projections of the training images the graph read (all of them, or
        5,000), and :meth:`predict` gives an image the cluster that its 10
        most similar prototypes vote for, each weighted by
        ``exp((s - s_max) / 0.1)`` of its cosine similarity ``s``. Without
        the graph, the centroids themselves, and the most similar decides.
    cluster_prototype_labels_ : ndarray of shape (n_prototypes,)
        The cluster of each prototype.
    embedding_mean_ : ndarray of shape (feature_dim,), dtype float32
        Mean backbone feature over the training set (in eval mode, at the end
        of ``fit``; pooled over the ``partial_fit`` calls since).
    embedding_scale_ : ndarray of shape (feature_dim,), dtype float32
        Standard deviation of each backbone feature over the same rows (1
        for constant features). :meth:`transform` standardises the
        features as ``(features - embedding_mean_) / embedding_scale_``.
    queue_size_ : int
        Number of queued negative keys used (``queue_size`` resolved).
    cluster_warmup_ : int
        Epochs trained before the clustering term starts
        (``cluster_warmup`` resolved).
    cluster_ramp_ : int
        Epochs of the linear ramp of the clustering weight
        (``cluster_ramp`` resolved).
    batch_size_ : int
        Images per optimiser step in the last ``fit`` (``batch_size``
        resolved, per process).
    amp_ : {"bf16", "fp16"} or False
        The mixed precision the last ``fit`` trained with (``amp``
        resolved); also in the run record of its checkpoints.
    history_ : pandas.DataFrame
        One row per epoch: ``epoch``, ``loss``, ``contrastive``,
        ``clustering``, ``contrastive_chance`` (the contrastive term's
        value were every projection the same: ``log(1 + queue_size_)``, or
        lower once ``cluster_negatives="drop"`` leaves negatives out),
        ``lr``, ``cluster_weight``, ``seconds``.
    n_iter_ : int
        Number of epochs trained.
    n_features_in_ : int
        Number of values per sample seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names, when ``X`` was a DataFrame with string column names.
    image_shape_ : tuple of int or None
        ``(C, H, W)`` of the images, None for vector input.
    device_ : torch.device
        Device the model was trained on and runs on.

    See Also
    --------
    sklearn.decomposition.PCA : Linear embeddings, no training loop.

    Notes
    -----
    ``transform`` and ``predict`` run in batches of 256 rows, whatever
    ``batch_size`` (a training setting) is. On the CPU a sample's embedding
    does not depend on which other samples are transformed with it (bitwise):
    the last batch is zero-padded to a row count that a one-off random probe
    showed to round exactly like a full batch (a single image usually runs as
    2 rows; at worst the batch is padded to 256).

    The learning rate follows a linear warm-up (10 % of the epochs, at most
    10) and a cosine decay to 0.

    Value ranges: uint8 images are divided by 255; other images already
    within [0, 1] are used as they are; otherwise images are divided by the
    largest value seen in ``fit`` (so 0 stays black: digits' 0-16 become
    0-1), after shifting by the smallest value when it is negative.

    References
    ----------
    .. [1] N. Giakoumoglou and T. Stathaki, "Cluster Contrast for Unsupervised
       Visual Representation Learning", ICIP 2025, arXiv:2507.12359.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> X, _ = load_digits(return_X_y=True)
    >>> emb = CueCoEmbedder(max_epochs=2, random_state=0).fit(X)
    >>> emb.transform(X[:5]).shape
    (5, 256)
    """

    _parameter_constraints = {
        "backbone": [StrOptions({"auto", *BACKBONE_NAMES}), torch.nn.Module],
        "projection_dim": [Interval(numbers.Integral, 1, None, closed="left")],
        "hidden_dim": [Interval(numbers.Integral, 1, None, closed="left")],
        "queue_size": [StrOptions({"auto"}), Interval(numbers.Integral, 0, None, closed="left")],
        "temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "key_momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "embedding_space": [StrOptions(set(EMBEDDING_SPACES))],
        "n_clusters": [Interval(numbers.Integral, 1, None, closed="left")],
        "cluster_weight": [Interval(numbers.Real, 0, None, closed="left")],
        "cluster_warmup": [
            StrOptions({"auto"}), Interval(numbers.Integral, 0, None, closed="left")
        ],
        "cluster_ramp": [StrOptions({"auto"}), Interval(numbers.Integral, 0, None, closed="left")],
        "cluster_assign": [StrOptions({"argmax", "sinkhorn", "deprecated"})],
        "cluster_balance": [Interval(numbers.Real, 0, 1, closed="both")],
        "overclustering": [Interval(numbers.Integral, 0, None, closed="left")],
        "refine_centroids": [Interval(numbers.Integral, 0, None, closed="left")],
        "cluster_graph": [Interval(numbers.Integral, 0, None, closed="left")],
        "cluster_targets": [StrOptions({"auto", "centroids", "graph"})],
        "cluster_update": [StrOptions({"online", "epoch"})],
        "cluster_loss": [StrOptions({"pull", "proto"})],
        "cluster_temperature": [Interval(numbers.Real, 0, None, closed="neither")],
        "cluster_momentum": [Interval(numbers.Real, 0, 1, closed="both")],
        "cluster_negatives": [StrOptions({"keep", "drop"})],
        "cluster_positives": [StrOptions({"view", "neighbour"})],
        "augmentation": [StrOptions({"auto", "rgb", "grayscale", "vector", "none"}), callable],
        "image_shape": [StrOptions({"auto"}), None, tuple, list],
        "image_size": [None, Interval(numbers.Integral, 1, None, closed="left"), tuple, list],
        "batch_size": [StrOptions({"auto"}), Interval(numbers.Integral, 2, None, closed="left")],
        "max_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "lr": [StrOptions({"auto"}), Interval(numbers.Real, 0, None, closed="neither")],
        "weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "optimizer": [StrOptions({"sgd", "lars", "adamw"})],
        "amp": [StrOptions({"auto", "bf16", "fp16"}), "boolean"],
        "num_workers": [Interval(numbers.Integral, 0, None, closed="left")],
        "channels_last": [StrOptions({"auto"}), "boolean"],
        "warm_start": ["boolean"],
        "compile": ["boolean", str],
        "distributed_bn": [StrOptions({"shuffle", "sync", "split"})],
        "callbacks": [list, None],
        "device": [str, HasMethods(["__index__"]), torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        backbone="auto",
        projection_dim=128,
        hidden_dim=2048,
        queue_size="auto",
        temperature=0.2,
        key_momentum=0.98,
        embedding_space="joint",
        n_clusters=10,
        cluster_weight=1.0,
        cluster_warmup="auto",
        cluster_ramp="auto",
        cluster_assign="deprecated",
        cluster_balance=0.5,
        overclustering=3,
        refine_centroids=10,
        cluster_graph=20,
        cluster_targets="auto",
        cluster_update="online",
        cluster_loss="proto",
        cluster_temperature=0.1,
        cluster_momentum=0.9,
        cluster_negatives="drop",
        cluster_positives="neighbour",
        augmentation="auto",
        image_shape="auto",
        image_size=None,
        batch_size="auto",
        max_epochs=100,
        lr="auto",
        weight_decay=5e-4,
        optimizer="sgd",
        amp="auto",
        num_workers=0,
        channels_last="auto",
        warm_start=False,
        compile=False,
        distributed_bn="shuffle",
        callbacks=None,
        device="auto",
        random_state=None,
        verbose=0,
    ):
        self.backbone = backbone
        self.projection_dim = projection_dim
        self.hidden_dim = hidden_dim
        self.queue_size = queue_size
        self.temperature = temperature
        self.key_momentum = key_momentum
        self.embedding_space = embedding_space
        self.n_clusters = n_clusters
        self.cluster_weight = cluster_weight
        self.cluster_warmup = cluster_warmup
        self.cluster_ramp = cluster_ramp
        self.cluster_assign = cluster_assign
        self.cluster_balance = cluster_balance
        self.overclustering = overclustering
        self.refine_centroids = refine_centroids
        self.cluster_graph = cluster_graph
        self.cluster_targets = cluster_targets
        self.cluster_update = cluster_update
        self.cluster_loss = cluster_loss
        self.cluster_temperature = cluster_temperature
        self.cluster_momentum = cluster_momentum
        self.cluster_negatives = cluster_negatives
        self.cluster_positives = cluster_positives
        self.augmentation = augmentation
        self.image_shape = image_shape
        self.image_size = image_size
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer = optimizer
        self.amp = amp
        self.num_workers = num_workers
        self.channels_last = channels_last
        self.warm_start = warm_start
        self.compile = compile
        self.distributed_bn = distributed_bn
        self.callbacks = callbacks
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- fitting ----------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, resume_from=None):
        """Train CueCo on ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features), (n_samples, H, W), \
                (n_samples, H, W, C) or (n_samples, C, H, W)
            Images (any numeric dtype; uint8 stays uint8 in memory) or
            feature vectors. A DataFrame of flattened pixels is accepted.
            So are images decoded lazily by :class:`~skcueco.ImageSource`:
            a list, array or pandas Series of file paths, a folder, a list
            of PIL images or a torch Dataset (see ``image_size``).
        y : None
            Ignored; present for API consistency.
        resume_from : str or path-like, default=None
            A checkpoint written by :class:`~skcueco.callbacks.Checkpoint`
            with the same parameters and data: training continues from it
            exactly as if it had not stopped (``max_epochs`` may be raised).
            The checkpoint's run record is checked first: another library
            version, other parameters that define the model, or other input
            (kind, shape, value range) are refused with a ValueError naming
            the difference.

        Returns
        -------
        self : CueCoEmbedder
            The fitted embedder.

        Raises
        ------
        NonFiniteLossError
            If the loss or the model's state becomes NaN or infinite. No
            non-finite model is ever published: the estimator is left as it
            was before the call.

        Notes
        -----
        A ``fit`` that fails, for bad input, a non-finite loss or any other
        error, leaves the estimator exactly as it was: a fitted model keeps
        its weights and can still ``transform``; an unfitted one stays
        unfitted. This holds for ``resume_from`` and ``warm_start`` too.
        """
        if resume_from is not None:
            # the checkpoint is read and checked before anything else; any
            # failure leaves this estimator (fitted or not) as it was
            state = read_checkpoint(resume_from)
            with restored_on_error(self):
                X, spec = self._validate_fit_input(X)
                check_checkpoint_fits(state, resume_from, self._run_spec().record(),
                                      spec, *input_statistics(X, spec))
                return self._train(X, spec, Start.from_checkpoint(state))
        if self.warm_start and self.__sklearn_is_fitted__():
            self._check_continuable("warm_start")
            # bad input must not cost the model trained so far: validate first
            X, spec = self._validate_for_inference(X)
            with restored_on_error(self):
                return self._train(X, spec, Start.warm(self._trained.train_state,
                                                       self._trained.preprocess))
        with restored_on_error(self):
            X, spec = self._validate_fit_input(X)
            return self._train(X, spec, Start.fresh())

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Train one more epoch on ``X``, keeping optimiser, queue and centroids.

        The first call initialises the model. Learning rate and key momentum
        stay at their base values: with no known end of training there is no
        schedule to follow.

        Parameters
        ----------
        X : array-like
            Same layout as in :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        self : CueCoEmbedder
            The embedder, trained one more epoch.

        Raises
        ------
        ValueError
            If the estimator is fitted but holds no training state (loaded
            from a file saved with ``training_state=False``): continuing
            would silently restart from random weights.
        NonFiniteLossError
            If training diverges; the model trained so far is kept.
        """
        if self.__sklearn_is_fitted__():
            self._check_continuable("partial_fit")
            X, spec = self._validate_for_inference(X)
            with restored_on_error(self):
                return self._train(X, spec, Start.partial(self._trained.train_state,
                                                          self._trained.preprocess))
        with restored_on_error(self):
            X, spec = self._validate_fit_input(X)
            return self._train(X, spec, Start.partial())

    def _check_continuable(self, how):
        """Refuse to continue a fitted model that holds no training state."""
        if not hasattr(self, "_trained") or self._trained.train_state is None:
            raise ValueError(
                f"This {type(self).__name__} holds no training state (it was loaded "
                "from a file saved with training_state=False, or never trained), so "
                f"{how} cannot continue it and would silently restart from random "
                "weights. Save models with training_state=True to continue them "
                "after loading, or train a new model with warm_start=False and fit."
            )

    def __sklearn_is_fitted__(self):
        return hasattr(self, "encoder_")

    def _train(self, X, spec, start):
        """Run :func:`~skcueco.training.run.fit_cueco` and publish its result."""
        run = self._run_spec()
        # the run record every checkpoint carries comes first
        callbacks = [RunRecord(run.record(), spec), *(self.callbacks or [])]
        if self.verbose:
            callbacks.append(ProgressBar(**({"per_batch": True} if self.verbose >= 2 else {})))
        trained = fit_cueco(
            X, spec, run, self._seeds(), start, callbacks=callbacks,
            validate=lambda X_other: self._flatten_like_fit(X_other, spec),
            readout=readout, readout_rows=readout_rows,
            readout_views=uses_views(spec, self.augmentation),
        )
        self._publish(trained)
        return self

    def _run_spec(self):
        """The parameters as the grouped settings training reads."""
        params = self.get_params(deep=False)
        if params["cluster_assign"] != "deprecated":
            warnings.warn(
                "cluster_assign is deprecated and will be removed in a future "
                "version: use cluster_balance=0 for the arg-max assignment "
                "(cluster_assign='argmax'), a cluster_balance above 0 for balanced "
                "ones ('sinkhorn').", FutureWarning, stacklevel=4,
            )
        return RunSpec.from_params(params)

    def _seeds(self):
        rng = check_random_state(self.random_state)
        return Seeds(*(int(s) for s in rng.randint(0, 2**31 - 1, size=4)))

    def _validate_fit_input(self, X):
        X, spec = check_input(self, X, reset=True, image_size=self.image_size)
        if spec is None:
            spec = spec_from_image_shape(self.image_shape, X.shape[1])
        self._check_params_vs_input(X)
        return X, spec

    def _flatten_like_fit(self, X, spec):
        """Validate extra data (e.g. a monitor's) against the fitted layout."""
        # images from files are decoded at the fitted size and colour mode
        X, other = check_input(self, X, reset=False, **image_format(spec))
        if other is None:
            return X, spec
        if other.shape != spec.shape:
            raise ValueError(
                f"X holds images of shape (C, H, W) = {other.shape}, but this "
                f"{type(self).__name__} is trained on "
                + (f"images of shape {spec.shape}." if spec.kind == "image"
                   else "feature vectors.")
            )
        return X, other

    def _publish(self, trained, *, n_features_in=None, feature_names_in=None):
        """Set every fitted attribute from a :class:`~skcueco.training.trained.Trained`.

        The one place fitted attributes are written: by ``fit``,
        ``partial_fit``, ``warm_start``, ``resume_from`` and :meth:`load`
        alike (``n_features_in`` and ``feature_names_in`` come from a model
        file; ``fit`` sets them while validating its input). Only the query
        backbone, its projector and the centroids stay on the device; the key
        network, queue and optimiser state live on in the training state on
        the CPU (for ``warm_start`` and ``partial_fit``).
        """
        spec = trained.spec
        self._trained = trained
        self.encoder_ = trained.encoder
        self.cluster_centers_ = trained.centroids.numpy()
        if trained.prototypes is None:
            self.cluster_prototypes_ = self.cluster_centers_
            self.cluster_prototype_labels_ = np.arange(len(self.cluster_centers_))
        else:
            self.cluster_prototypes_ = trained.prototypes.numpy()
            self.cluster_prototype_labels_ = trained.prototype_owners.numpy()
        self.embedding_mean_ = trained.embedding_mean
        self.embedding_scale_ = trained.embedding_scale
        resolved = trained.resolved
        if "queue_size" in resolved:
            self.queue_size_ = resolved["queue_size"]
            self.cluster_warmup_ = resolved["cluster_warmup"]
            self.cluster_ramp_ = resolved["cluster_ramp"]
        if "batch_size" in resolved:
            self.batch_size_ = resolved["batch_size"]
        if "amp" in resolved:
            self.amp_ = resolved["amp"]
        history = trained.history
        self.history_ = pd.DataFrame(history, columns=_HISTORY_COLUMNS if not len(history) else None)
        self.n_iter_ = len(self.history_)
        self.image_shape_ = tuple(spec.shape) if spec.kind == "image" else None
        self.device_ = trained.device
        if n_features_in is not None:
            self.n_features_in_ = n_features_in
        if feature_names_in is not None:
            self.feature_names_in_ = np.asarray(feature_names_in, dtype=object)

    @property
    def _n_features_out(self):
        # read by ClassNamePrefixFeaturesOutMixin.get_feature_names_out
        return self._trained.embedding_dim(self._embedding_space())

    def __setstate__(self, state):
        super().__setstate__(state)
        for name, value in LOADED_BEFORE.items():
            # pickled before the parameter existed: it behaved as this value does
            vars(self).setdefault(name, value)
        if "encoder_" in vars(self) and "_trained" not in vars(self):
            # pickled by a version before the Trained object
            vars(self)["_trained"] = trained_from_pickle(vars(self), self.get_params(deep=False))
            for key in ("_projector", "_preprocess", "_input_spec", "_train_state"):
                vars(self).pop(key, None)
        trained = vars(self).get("_trained")
        if trained is not None and trained.device != self.device_:
            # unpickled onto another device (e.g. a GPU model on a CPU machine)
            vars(self)["_trained"] = dataclasses.replace(trained, device=self.device_)

    def _fit_untrained(self, X):
        """Fitted attributes of the initial, untrained network (a baseline)."""
        X, spec = self._validate_fit_input(X)
        self._publish(untrained_cueco(X, spec, self._run_spec(), self._seeds()))
        return self

    def _check_params_vs_input(self, X):
        n_samples = X.shape[0]
        if self.n_clusters > n_samples:
            raise ValueError(
                f"n_clusters={self.n_clusters} must be <= n_samples={n_samples}."
            )
        if self.cluster_targets == "graph" and self.cluster_graph == 0:
            raise ValueError(
                "cluster_targets='graph' assigns keys to the clusters of the "
                "neighbourhood graph, which cluster_graph=0 switches off: set "
                "cluster_graph > 0 (the default is 20) or cluster_targets='centroids'."
            )
        if self.callbacks is not None:
            for cb in self.callbacks:
                if not isinstance(cb, Callback):
                    raise TypeError(
                        "callbacks must be a list of skcueco.callbacks.Callback "
                        f"instances; got {type(cb).__name__}."
                    )

    # -- inference --------------------------------------------------------------
    def _validate_for_inference(self, X):
        check_is_fitted(self)
        return self._flatten_like_fit(X, self._trained.spec)

    def _rows(self, X):
        """``(rows, spec)``: ``X`` validated for the fitted model's operations.

        The seam through which the classifier and the inspection displays
        reach the trained model (``_trained``): its ``embed``, ``project``,
        ``predict`` and ``augmenter`` take these rows.
        """
        return self._validate_for_inference(X)

    def transform(self, X):
        """Embed ``X`` with the trained backbone.

        Parameters
        ----------
        X : array-like
            Same layout as in :meth:`fit`.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_features_out), dtype float32
            In ``embedding_space``: by default the standardised backbone
            features (with ``embedding_mean_`` and ``embedding_scale_``)
            and the unit-norm projections, each scaled to norm
            ``sqrt(n_features_out / 2)``, side by side; with
            ``"features"`` the former alone, with ``"projection"`` the
            latter. Independent of batch composition.
        """
        space = self._embedding_space()
        rows, spec = self._validate_for_inference(X)
        return self._trained.embedding(rows, spec, space)

    def _embedding_space(self):
        # read at transform time, so checked here too (set_params after fit);
        # estimators pickled before the parameter existed return the features
        space = getattr(self, "embedding_space", "features")
        if space not in EMBEDDING_SPACES:
            raise ValueError(
                f"embedding_space must be one of {', '.join(map(repr, EMBEDDING_SPACES))}; "
                f"got {space!r}."
            )
        return space

    def predict(self, X):
        """Cluster of each sample: the vote of its most similar prototypes.

        The projection of each sample is compared (cosine) with
        ``cluster_prototypes_``; the cluster is the one its 10 most similar
        prototypes vote for, weighted by similarity (with
        ``cluster_graph=0``, the nearest of ``cluster_centers_``).

        Parameters
        ----------
        X : array-like
            Same layout as in :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster index in ``[0, n_clusters)``.
        """
        rows, spec = self._validate_for_inference(X)
        return self._trained.predict(rows, spec)

    def fit_predict(self, X, y=None):
        """Fit, then return the cluster index of each training sample.

        Parameters
        ----------
        X : array-like
            Training data, as in :meth:`fit`.
        y : None
            Ignored.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
            Cluster index in ``[0, n_clusters)`` of each row of ``X``, as
            :meth:`predict` gives it after the fit.
        """
        return self.fit(X).predict(X)

    # -- safe persistence -------------------------------------------------------
    def save(self, path, training_state=True):
        """Write the fitted model to ``path`` in a format that runs no code on load.

        The file holds tensors plus JSON (parameters, input layout, history
        and the library version) and is read back with
        ``torch.load(weights_only=True)``. The write is atomic: ``path``
        holds either its previous content or the whole new model, even if
        the process is interrupted or killed, or the disk is full.

        Parameters
        ----------
        path : str or path-like
            Destination file.
        training_state : bool, default=True
            Also store the training state (key network, queue, optimiser
            state, random streams, epoch and step counters), so that
            ``warm_start`` and ``partial_fit`` continue the loaded model as
            they would have continued this one. False stores only what
            inference needs (a smaller file); such a model refuses to be
            continued.

        Raises
        ------
        ValueError
            If a parameter cannot be stored as data: a custom ``torch.nn.Module``
            backbone or a callable augmentation (use joblib for those).
        OSError
            If the file cannot be written (e.g. a full disk); ``path`` is
            left as it was and no temporary file remains.
        """
        save_embedder(self, path, training_state=training_state)

    @classmethod
    def load(cls, path):
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path : str or path-like
            File written by :meth:`save`.

        Returns
        -------
        embedder : CueCoEmbedder
            Fitted, on its saved ``device`` when available, else on the CPU.

        Raises
        ------
        ValueError
            If the file is not a skcueco model (e.g. a pickle that would run
            code, or a damaged file), comes from an incompatible or newer
            version, or holds metadata that cannot work (parameters outside
            their allowed values, an input shape that does not match
            ``n_features_in_``, weights that do not fit the parameters,
            non-finite weights).
        """
        params, trained, n_features_in, feature_names_in = load_embedder(cls, path)
        est = cls(**params)
        est._publish(trained, n_features_in=n_features_in, feature_names_in=feature_names_in)
        return est

    def export(self, path, format="onnx", *, input_layout=None, input_dtype="float32"):
        """Write the fitted model as one graph that runs without skcueco.

        The graph takes a batch of images (or feature vectors) as they are
        stored and returns two outputs: ``"embeddings"``, what
        :meth:`transform` returns, and ``"clusters"``, what :meth:`predict`
        returns. The input conversion (dividing uint8 by 255, the training
        value range), the backbone in eval mode, the standardisation, the
        projector and the cluster lookup of :meth:`predict` are inside; the
        batch size is free. The write is
        atomic: ``path`` holds either its previous content or the whole
        new file. docs/serving.rst shows how to run it.

        Parameters
        ----------
        path : str or path-like
            Destination file (``.onnx`` or ``.pt`` by convention).
        format : {"onnx", "torchscript"}, default="onnx"
            ``"onnx"``: run by onnxruntime and other ONNX runtimes; needs
            ``onnx`` and ``onnxscript`` (``pip install "skcueco[onnx]"``).
            ``"torchscript"``: read by ``torch.jit.load``, from Python or
            C++ (LibTorch), without skcueco.
        input_layout : {"NHWC", "NCHW", "NHW", "flat"}, default=None
            The shape of the graph's input. ``"NHWC"``: ``(n, height, width,
            channels)``; ``"NCHW"``: ``(n, channels, height, width)``;
            ``"NHW"``: ``(n, height, width)``, grayscale models only;
            ``"flat"``: ``(n, n_features_in_)`` rows as :meth:`fit` reads
            2-D input (the only layout of a model of feature vectors).
            None: ``"flat"`` for feature vectors, else ``"NCHW"`` if the
            model was trained on channels-first images and ``"NHWC"``
            otherwise.
        input_dtype : {"float32", "uint8", "float64"}, default="float32"
            The dtype of the graph's input. Values are read as
            :meth:`transform` reads them, whatever the dtype: the input
            conversion was fixed by the training data (a model trained on
            uint8 images divides by 255 a float input too).

        Raises
        ------
        NotFittedError
            If the estimator is not fitted.
        ValueError
            If ``format``, ``input_layout`` or ``input_dtype`` is not one of
            their values or does not suit the model, or if the model cannot
            be exported; the message names the part that cannot (e.g. a
            custom backbone with Python control flow on tensor values).
            ``path`` is then left as it was.
        ImportError
            If ``format="onnx"`` and ``onnx`` or ``onnxscript`` is missing.
        OSError
            If the file cannot be written; ``path`` is left as it was and no
            temporary file remains.

        See Also
        --------
        save : The model with its settings and, optionally, its training
            state, read back by :meth:`load`.

        Notes
        -----
        The outputs match :meth:`transform` and :meth:`predict` to rounding
        (about 1e-5 on the embeddings), not bitwise: a runtime picks its own
        kernels, and the output of a sample may change in the last bits with
        the size of its batch. A point equally close to two centroids may
        then change cluster.
        """
        check_is_fitted(self)
        from ._export import export_embedder

        export_embedder(self._trained, path, format=format, input_layout=input_layout,
                        input_dtype=input_dtype, owner=type(self).__name__,
                        space=self._embedding_space())

    # -- tags -------------------------------------------------------------------
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.transformer_tags.preserves_dtype = ["float32"]
        return tags

