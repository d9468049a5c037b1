"""One CueCo training run: resolved settings in, trained model out.

:func:`fit_cueco` is the single entry point behind ``fit``, ``warm_start``,
``partial_fit`` and ``resume_from``: it builds (or restores) the model, the
optimiser, the schedules and the task, runs the
:class:`~skcueco.training.engine.Trainer`, and returns a :class:`~skcueco.training.trained.Trained`.
No scikit-learn here: the estimator validates the input, groups its
parameters into a :class:`~skcueco.training.specs.RunSpec`, says how the run
starts (:class:`~skcueco.training.specs.Start`), draws the :class:`Seeds`,
and publishes the result.
"""

import math
import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..backbones import build_backbone
from ..data.loaders import encode, make_loader
from ..data.preprocess import Preprocess, input_statistics, relayout
from ..nn.losses import assign_clusters
from ..nn.model import CueCoModel
from ..nn.vote import VOTE_NEIGHBOURS
from .device import resolve_device
from .distributed import broadcast_, get_rank, get_world_size, init_distributed
from . import checkpoint
from .engine import Trainer, copy_state
from .optim import BASE_LR, make_optimizer, warmup_cosine
from .parallel import TrainingEncoders, prepare_model, sync_buffers
from .specs import Start
from .task import CueCoTask
from .trained import (Trained, standardisation, use_channels_last, view_augmentation,
                      view_pass)

# centroids without an assigned key for this many consecutive steps are re-seeded
RESEED_AFTER_STEPS = 50

# size-aware defaults (docs/method_results.rst has the measurements behind them)
AUTO_QUEUE_FRACTION = 4
"""``queue_size="auto"``: at most ``n_samples // AUTO_QUEUE_FRACTION`` keys."""
AUTO_QUEUE_CAP = 4096
"""``queue_size="auto"``: the cap below ``LARGE_DATA`` samples (MoCo v2 on CIFAR)."""
LARGE_QUEUE_CAP = 65536
"""``queue_size="auto"``: the cap from ``LARGE_DATA`` samples on (MoCo on ImageNet)."""
LARGE_DATA = 500_000
KEY_BN_SPLITS = 8
"""``distributed_bn="split"``: groups of the shuffled batch with their own
key BatchNorm statistics in a single process (8, as MoCo's CIFAR demo)."""
AUTO_BATCH_SIZES = (256, 128, 64, 32)
"""``batch_size="auto"``: the largest of these that gives ``AUTO_MIN_STEPS``
optimiser steps per epoch, else the smallest allowed (32 only for images of
``AUTO_BATCH_32_MIN_SIDE`` pixels and more)."""
AUTO_MIN_STEPS = 120
AUTO_BATCH_32_MIN_SIDE = 16
"""``batch_size="auto"``: the shorter image side from which batches of 32 are
used; vectors and smaller images stop at 64. On the 8x8 digits batches of 32
lost ``predict`` NMI at 40 epochs and made a CPU fit about 1.3 times as long
(a step's fixed costs outweigh its small convolutions); on images of 28 and
32 pixels they gained or were level at 20 and 40 epochs, for 1.06 to 1.2
times the fit time (docs/method_results.rst, "Batches of 32 on images of 16
pixels and more")."""
AUTO_WARMUP_FRACTION = 0.15
"""``cluster_warmup="auto"``: this fraction of ``max_epochs``, rounded down."""
AUTO_RAMP_FRACTION = 0.1
"""``cluster_ramp="auto"``: this fraction of ``max_epochs``, rounded down."""
DROP_NEGATIVES_FRACTION = 0.5
"""``cluster_negatives="drop"``: the negatives of a query's cluster are left out
from this fraction of ``max_epochs`` on (rounded down), once the clusters are
purer than at the end of the warm-up: left out from the warm-up on, images of
two classes that share an early cluster stop being pushed apart
(docs/method_results.rst, "Same-cluster negatives left out of the
contrastive term")."""
GRAPH_REFRESH_EPOCHS = 3
"""With graph targets, the key projections' graph clusters are read again every
this many epochs (from the first epoch with the clustering term on): each
read costs a pass of the key network and a read-out, which on small images
weighs as much as a third of an epoch, while the clusters move little from
one epoch to the next (docs/method_results.rst, "How often the targets are
read")."""
# collapse: the final contrastive loss within this fraction of its chance value
# while the mean cosine similarity of the projections exceeds COLLAPSE_COSINE,
# or the largest cluster holding more than this share of the training set
COLLAPSE_LOSS_RATIO = 0.995
COLLAPSE_COSINE = 0.99
COLLAPSE_CLUSTER_SHARE = 0.9
# ... judged only from this many training samples per cluster on
COLLAPSE_MIN_PER_CLUSTER = 50


class TrainingCollapseWarning(UserWarning):
    """Training ended collapsed: a chance-level loss, or one cluster holding nearly all data.

    Raised by ``fit`` only when the training set holds at least 50 samples
    per cluster (``n_samples >= 50 * n_clusters``): with fewer, one epoch of
    an untrained network, or chance alone, puts nearly all samples in one
    cluster or all projections close together, and the signs mean nothing.
    The warning points at the line that called ``fit``.
    """


def resolve_queue_size(setting, n_samples):
    """The number of queued keys for ``n_samples`` training images.

    ``"auto"``: ``n_samples // 4``, at most 4096 (65536 from 500,000 samples
    on). A queue close to ``n_samples`` holds the keys of the very images
    being queried (other views of them) as negatives. An explicit value is
    only capped at ``n_samples``.
    """
    if setting == "auto":
        cap = LARGE_QUEUE_CAP if n_samples >= LARGE_DATA else AUTO_QUEUE_CAP
        return min(n_samples // AUTO_QUEUE_FRACTION, cap)
    return min(int(setting), n_samples)


def resolve_batch_size(setting, n_samples, *, partial=False, shorter_side=0):
    """Images per optimiser step for ``n_samples`` training images (per process).

    ``"auto"``: 256 when an epoch then has at least 120 steps (30,720
    images or more), else 128 (15,360 or more), else 64 (7,680 or more),
    else 32 for images whose ``shorter_side`` has 16 pixels or more and 64
    for smaller images and vectors (``shorter_side=0``), capped at
    ``n_samples``.
    A small data set trained with large batches takes few steps per epoch:
    2,250 images give 8 steps of 256 per epoch, 17 of 128 and 35 of 64, and
    at the same number of epochs fewer steps learn less (at 15 epochs on the
    generated shapes the kNN accuracy is 0.874 with batches of 128, 0.921
    with 64; on 9,000 generated scenes batches of 64, 128 and 256 give a
    ``predict`` NMI of 0.340, 0.261 and 0.213; docs/method_results.rst).
    ``partial=True`` (one ``partial_fit`` call, an epoch over one chunk of
    a stream): 256 capped at the chunk, one step per chunk of up to 256 rows
    as with an explicit value. An explicit value is only capped at
    ``n_samples``.
    """
    if setting == "auto":
        if not partial:
            sizes = AUTO_BATCH_SIZES
            if shorter_side < AUTO_BATCH_32_MIN_SIDE:
                sizes = tuple(size for size in sizes if size > 32)
            for size in sizes:
                if n_samples // size >= AUTO_MIN_STEPS:
                    return size
            return min(sizes[-1], n_samples)
        setting = AUTO_BATCH_SIZES[0]
    return min(int(setting), n_samples)


def resolve_epochs_fraction(setting, max_epochs, fraction):
    """``int(fraction * max_epochs)`` for ``"auto"``, else the explicit value."""
    if setting == "auto":
        return int(fraction * max_epochs)
    return int(setting)


@dataclass(frozen=True)
class Seeds:
    """The seeds of a run's independent random streams, by name."""

    weights: int
    """Initial weights (drawn inside a fork of torch's global RNG)."""
    model: int
    """Queue initialisation and centroid re-seeding."""
    augmentation: int
    """The two views of every image (each process adds its rank)."""
    loader: int
    """Shuffling, and the distributed sampler under ``torchrun``."""


def _take_architecture(model, state):
    """Load the weights of ``state`` now, before an optimiser holds the parameters.

    A network may take its shape from the weights it loads (a
    :class:`~skcueco.backbones.SmallCNN` saved with fewer blocks); the
    optimiser must then be built on the loaded shape. The trainer loads the
    whole state again later and reports a state that does not fit the run,
    so a failure here is left to it.
    """
    if state is None or "task" not in state:
        return
    try:
        model.load_state_dict(checkpoint.model_state(state))
    except (KeyError, RuntimeError, TypeError):
        pass


def build_model(X, spec, run, seeds, *, device, preprocess=None, queue_size=None):
    """The initialised model and input conversion for ``X``.

    ``preprocess`` and ``queue_size`` of an earlier fit are passed when its
    training state is to be loaded into the model.
    """
    if preprocess is None:
        preprocess = Preprocess(spec, *input_statistics(X, spec))
    if queue_size is None:
        queue_size = resolve_queue_size(run.model.queue_size, X.shape[0])
    # weights are drawn from torch's global generator inside a fork that is
    # restored on exit, so the caller's global random state is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.weights)
        backbone, feature_dim = build_backbone(
            run.model.backbone, input_kind=spec.kind, input_shape=spec.shape
        )
        settings, clustering = run.model, run.clustering
        model = CueCoModel(
            backbone, feature_dim,
            projection_dim=settings.projection_dim,
            hidden_dim=settings.hidden_dim,
            queue_size=queue_size,
            n_clusters=clustering.n_clusters,
            temperature=settings.temperature,
            cluster_loss=clustering.loss,
            cluster_temperature=clustering.temperature,
            cluster_momentum=clustering.momentum,
            # balance 0 is the arg-max assignment
            cluster_assign="sinkhorn" if clustering.balance > 0 else "argmax",
            cluster_balance=clustering.balance,
            n_overclusters=clustering.overclustering * clustering.n_clusters,
            generator=torch.Generator().manual_seed(seeds.model),
        )
    return model.to(device), preprocess.to(device), feature_dim


def _embedder(model, preprocess, spec, batch_size, device, validate):
    """``embed(X)`` -> backbone features of the model in training, for monitors."""
    def embed(X_other):
        X2d, other = validate(X_other)
        pre = preprocess if other == spec else relayout(preprocess, other)
        return encode(model.backbone_q, pre, model, X2d, batch_size, device).numpy()
    return embed


def _trained(model, preprocess, spec, run, device, feature_dim, history, stats,
             train_state=None, clusters=None, **resolved):
    model.eval()
    mean, scale = standardisation(stats)
    if clusters is None:
        clusters = (model.centroids.detach().cpu().clone(), None, None)
    centroids, prototypes, owners = clusters
    return Trained(
        encoder=model.backbone_q.to(memory_format=torch.contiguous_format),
        projector=model.projector_q,
        preprocess=preprocess,
        centroids=centroids,
        prototypes=prototypes,
        prototype_owners=owners,
        # the read-out's prototypes are the training projections it read
        prototype_votes=1 if prototypes is None else VOTE_NEIGHBOURS,
        embedding_mean=mean,
        embedding_scale=scale,
        spec=spec,
        device=device,
        feature_dim=feature_dim,
        channels_last=run.runtime.channels_last,
        backbone=run.model.backbone if isinstance(run.model.backbone, str) else None,
        history=history,
        train_state=train_state,
        resolved=resolved,
    )


def use_graph(clustering, n_samples):
    """Whether the clusters come from the neighbourhood graph of ``n_samples`` images.

    ``cluster_graph > 0``, and more images than ``cluster_graph + 1`` and than
    twice ``n_clusters``: on fewer, the refined centroids are used.
    """
    return clustering.graph > 0 and n_samples > max(clustering.graph + 1,
                                                    2 * clustering.n_clusters)


def check_collapse(history, n_queue, batch_size, labels, n_clusters, mean_cosine=1.0,
                   n_samples=None):
    """Warn with :class:`TrainingCollapseWarning` when the run ended collapsed.

    Two signs. The last epoch's contrastive loss within 0.5 % of its chance
    value (the history's ``contrastive_chance``, the loss were every
    projection the same; in a history without it, ``log(1 + n_queue)``, or
    ``log(batch_size)`` with in-batch negatives) while the projections of the training set all point the same
    way (``mean_cosine``, their mean pairwise cosine similarity, above
    0.99): the network maps every image to one point. Or more than 90 % of
    the training set in one cluster (``labels``: the assignments to the
    trained centroids, or with graph targets the clusters of the last
    partition of the keys; None to skip the check).

    A loss near chance alone is no sign: in the first epochs it rises
    towards (even past) chance while the queue fills with real keys.

    Neither sign is judged on fewer than 50 training samples per cluster
    (``n_samples``, the size of the training set; None: the length of
    ``labels``, or no limit when ``labels`` is None too). The warning is
    attributed to the first caller outside skcueco (and the scikit-learn,
    PyTorch and joblib wrappers around ``fit``): the user's ``fit`` call.
    """
    import sys

    if n_samples is None and labels is not None:
        n_samples = labels.numel()
    if n_samples is not None and n_samples < COLLAPSE_MIN_PER_CLUSTER * max(n_clusters, 1):
        return
    problems = []
    if history:
        last = float(history[-1]["contrastive"])
        if "contrastive_chance" in history[-1]:
            # with cluster_negatives="drop" each query has fewer negatives
            # (none when every key falls in its cluster): the loss then
            # stays below log(1 + n_queue) however collapsed the run
            chance = float(history[-1]["contrastive_chance"])
            described = f"{chance:.3f} (log(1 + the negatives of each query))"
        else:
            chance = math.log(1 + n_queue) if n_queue else math.log(batch_size)
            described = (f"log(1 + {n_queue})" if n_queue else f"log({batch_size})") \
                + f" = {chance:.3f}"
        if chance >= 0 and last >= COLLAPSE_LOSS_RATIO * chance \
                and mean_cosine > COLLAPSE_COSINE:
            problems.append(
                f"the final contrastive loss {last:.3f} is at its chance value {described} "
                f"and the projections of all training samples nearly coincide (mean cosine "
                f"similarity {mean_cosine:.3f})"
            )
    if labels is not None and n_clusters > 1 and labels.numel():
        share = torch.bincount(labels, minlength=n_clusters).max().item() / labels.numel()
        if share > COLLAPSE_CLUSTER_SHARE:
            problems.append(f"{share:.0%} of the training samples fall in one cluster")
    if not problems:
        return
    # stacklevel: 2 is this function's caller; skip the library's own frames
    # (and the decorators and helpers of the libraries that wrap ``fit``)
    internal = ("skcueco", "sklearn", "torch", "joblib", "contextlib", "functools")
    stacklevel, frame = 2, sys._getframe(1)
    while frame.f_back is not None and (
        frame.f_globals.get("__name__", "").partition(".")[0] in internal
    ):
        stacklevel, frame = stacklevel + 1, frame.f_back
    warnings.warn(
        "Training looks collapsed: " + "; ".join(problems) + ". Try a smaller lr, "
        "more epochs, a larger cluster_warmup or a smaller cluster_weight.",
        TrainingCollapseWarning, stacklevel=stacklevel,
    )


def embedding_statistics(features, previous=None):
    """Mean, variance and count of the backbone features of a training set.

    ``transform`` standardises the features with them (see
    ``docs/method.rst``). ``previous`` statistics of earlier data (the
    ``partial_fit`` calls since the last ``fit``) are pooled with these,
    weighted by their counts.

    Parameters
    ----------
    features : Tensor of shape (n_samples, n_features)
    previous : dict or None, default=None
        What an earlier call returned.

    Returns
    -------
    stats : dict
        ``mean`` and ``var`` (float64 tensors of shape (n_features,), on the
        CPU) and ``count`` (int).
    """
    features = features.double()
    stats = {"mean": features.mean(dim=0), "var": features.var(dim=0, correction=0),
             "count": int(features.shape[0])}
    if previous is None or previous["mean"].shape != stats["mean"].shape:
        return stats
    # pooled mean and variance of the two groups (Chan et al.)
    n_a, n_b = previous["count"], stats["count"]
    n = n_a + n_b
    delta = stats["mean"] - previous["mean"]
    return {
        "mean": previous["mean"] + delta * (n_b / n),
        "var": (previous["var"] * n_a + stats["var"] * n_b + delta ** 2 * (n_a * n_b / n)) / n,
        "count": n,
    }


# Bounds on one piece of the end-of-fit pass: input rows (decoded, for images
# read from files) and float64 features. Only the projections of the whole
# training set are kept; the backbone features are reduced piece by piece.
EVAL_PASS_INPUT_BYTES = 64 << 20
EVAL_PASS_FEATURE_VALUES = 1 << 24


def eval_pass(model, preprocess, X, batch_size, device, feature_dim, *, previous=None,
              projections=True):
    """One pass in eval mode over ``X``: feature statistics, and projections.

    Returns ``(stats, z)``: :func:`embedding_statistics` of the backbone
    features (pooled with ``previous``), and the unit projections
    ``(n_samples, D)`` on ``device`` (None unless ``projections``). The
    features are reduced a piece at a time (whole batches, about 64 MB of
    input and 128 MB of features at most), so a large training set never
    holds all of them at once, and the projections are those of one pass.
    """
    def both(x):
        h = model.backbone_q(x)
        if not projections:
            return h.float().flatten(1)
        z = F.normalize(model.projector_q(h).float(), dim=1)  # as CueCoModel.project
        return torch.cat([h.float().flatten(1), z], dim=1)

    rows = min(EVAL_PASS_INPUT_BYTES // max(1, X.shape[1] * X.dtype.itemsize),
               EVAL_PASS_FEATURE_VALUES // max(1, feature_dim))
    rows = batch_size * max(1, rows // batch_size)
    stats, parts = previous, []
    for start in range(0, X.shape[0], rows):
        out = encode(both, preprocess, model, X[start:start + rows], batch_size, device,
                     fixed_batch=projections and device.type == "cpu")
        stats = embedding_statistics(out[:, :feature_dim], stats)
        if projections:
            parts.append(out[:, feature_dim:])
    return stats, torch.cat(parts).to(device) if projections else None


def untrained_cueco(X, spec, run, seeds):
    """A :class:`~skcueco.training.trained.Trained` of the initial network (a baseline), k-means centroids."""
    device = resolve_device(run.runtime.device)
    model, preprocess, feature_dim = build_model(X, spec, run, seeds, device=device)
    batch_size = resolve_batch_size(run.optim.batch_size, X.shape[0],
                                    shorter_side=spec.shorter_side)
    model.init_centroids(encode(model.encode_key, preprocess, model, X, batch_size, device))
    stats, _ = eval_pass(model, preprocess, X, batch_size, device, feature_dim, projections=False)
    return _trained(model, preprocess, spec, run, device, feature_dim, [], stats)


def fit_cueco(X, spec, run, seeds, start=Start.fresh(), *, callbacks=(), validate=None,
              readout=None, readout_rows=None, readout_views=0):
    """Train CueCo on the compact rows ``X``.

    Parameters
    ----------
    X : ndarray or ImageSource of shape (n_samples, n_features)
        Validated compact rows.
    spec : InputSpec
        What the rows hold.
    run : RunSpec
        The settings.
    seeds : Seeds
        The seeds of the run's random streams.
    start : Start, default=Start.fresh()
        A new run of ``max_epochs``; a checkpoint of this same run resumed
        exactly; ``max_epochs`` more epochs from an earlier fit on a new
        cosine cycle without warm-up (``warm_start``); or one epoch at
        constant learning rate and key momentum (``partial_fit``).
    callbacks : list of Callback, default=()
    validate : callable, default=None
        ``validate(X) -> (X2d, spec)`` for monitors' extra data.
    readout : callable, default=None
        ``readout(projections, centroids, n_neighbors, seed) -> (centroids,
        prototypes, owners)``: the clusters ``predict`` gives, read from the
        training projections at the end of a run (not ``partial_fit``) when
        ``cluster_graph > 0`` and the training set is large enough; else the
        trained centroids, refined by k-means. With
        ``cluster_targets="graph"``, also the clustering term's targets,
        read from the key projections at the start of the first epoch with
        the clustering term on and every ``GRAPH_REFRESH_EPOCHS`` after it.
    readout_rows : callable, default=None
        ``readout_rows(n_samples, seed) -> rows or None``: the rows
        ``readout`` reads of ``n_samples`` projections (None: all). With
        graph targets, only those rows are encoded by the key network at
        each epoch; None encodes the whole training set.
    readout_views : int, default=0
        Random views of each row read (the training augmentation) whose
        projections the read-out at the end of the run adds to the row's
        own before building the graph (``readout(..., views=)``); 0 reads
        the projections alone. The graph targets during training read the
        key projections alone.

    Returns
    -------
    trained : Trained
        Checked to map training rows to finite values.
    """
    distributed = init_distributed()
    world, rank = get_world_size(), get_rank()
    optim, clustering, runtime = run.optim, run.clustering, run.runtime
    device = resolve_device(runtime.device)
    # "auto" sizes each process's batch from its shard of the data
    n_rows = max(1, X.shape[0] // world) if optim.batch_size == "auto" else X.shape[0]
    batch_size = resolve_batch_size(optim.batch_size, n_rows, partial=start.one_epoch,
                                    shorter_side=spec.shorter_side)
    model, preprocess, feature_dim = build_model(
        X, spec, run, seeds, device=device, preprocess=start.preprocess,
        queue_size=start.queue_size(),
    )
    _take_architecture(model, start.state)
    loader_generator = torch.Generator().manual_seed(seeds.loader)
    loader = make_loader(
        X, batch_size=batch_size, shuffle=True, drop_last=True,
        generator=loader_generator, num_workers=runtime.num_workers,
        pin_memory=device.type == "cuda",
        shard=(world, rank, seeds.loader) if distributed else None,
    )
    steps = len(loader)
    if steps == 0:
        raise ValueError(
            f"Each of the {world} processes gets fewer than batch_size={batch_size} "
            "samples: use a smaller batch_size or fewer processes."
        )
    n_epochs = 1 if start.one_epoch else optim.max_epochs
    # the learning rate follows the global batch, summed over processes
    lr = optim.lr
    if lr == "auto":
        lr = BASE_LR[optim.optimizer] * batch_size * world / 256
    channels_last = use_channels_last(runtime.channels_last, spec, device,
                                      backbone=run.model.backbone)
    model = prepare_model(
        model, device=device, channels_last=channels_last,
        sync_bn=distributed and runtime.distributed_bn == "sync",
    )
    encoders = TrainingEncoders(
        model, compile=runtime.compile, distributed=distributed,
        shuffle_bn=runtime.distributed_bn in ("shuffle", "split"),
        split_bn=KEY_BN_SPLITS if runtime.distributed_bn == "split" else 0, seed=seeds.model,
    )
    optimizer = make_optimizer(
        optim.optimizer, model.query_parameters(), lr=lr, weight_decay=optim.weight_decay
    )
    scheduler = None
    if not start.one_epoch:
        warmup = 0 if start.continues else steps * min(10, n_epochs // 10)
        scheduler = warmup_cosine(optimizer, steps * n_epochs, warmup)
    cluster_warmup = resolve_epochs_fraction(
        clustering.warmup, optim.max_epochs, AUTO_WARMUP_FRACTION)
    cluster_ramp = resolve_epochs_fraction(
        clustering.ramp, optim.max_epochs, AUTO_RAMP_FRACTION)
    graph_targets = None
    if clustering.targets == "graph" and readout is not None and use_graph(clustering, X.shape[0]):
        # the read-out reads a fixed subset of a large training set: only its
        # rows are encoded (X[rows, ...] stays lazy for an ImageSource)
        rows = readout_rows(X.shape[0], seeds.model) if readout_rows is not None else None
        X_read = X if rows is None else X[rows, ...]

        def graph_targets():
            keys = encode(model.encode_key, preprocess, model, X_read, batch_size, device)
            # every process trains towards rank 0's partition
            found = readout(keys, model.centroids, clustering.graph, seeds.model)
            if distributed:
                found = tuple(broadcast_(t.to(device)).cpu() for t in found)
            return found

    task = CueCoTask(
        model, preprocess, view_augmentation(run.model.augmentation, spec),
        # each process draws its own views
        torch.Generator(device=device).manual_seed(seeds.augmentation + rank),
        total_steps=steps * n_epochs,
        key_momentum=run.model.key_momentum,
        final_momentum=run.model.key_momentum if start.one_epoch else 1.0,
        cluster_weight=clustering.weight,
        cluster_warmup=cluster_warmup,
        cluster_ramp=cluster_ramp,
        cluster_update=clustering.update,
        key_features=lambda: encode(model.encode_key, preprocess, model, X, batch_size, device),
        reseed_after=RESEED_AFTER_STEPS,
        loader_generator=loader_generator,
        channels_last=channels_last,
        sampler=loader.sampler.sampler if distributed else None,
        encoders=encoders,
        step_offset=start.step_offset(),
        graph_targets=graph_targets,
        graph_refresh=GRAPH_REFRESH_EPOCHS,
        drop_negatives_from=(resolve_epochs_fraction(
            "auto", optim.max_epochs, DROP_NEGATIVES_FRACTION)
            if clustering.negatives == "drop" else None),
        neighbour_positives=clustering.positives == "neighbour",
    )
    trainer = Trainer(
        device=device, max_epochs=start.done_epochs() + n_epochs, callbacks=callbacks,
        amp=runtime.amp,
        embed=_embedder(model, preprocess, spec, batch_size, device, validate)
        if validate is not None else None,
    )
    # resume: the checkpoint's run goes on exactly, its schedule included;
    # continue: weights, optimiser state, queue, centroids and random streams
    # come back, the schedule is this run's
    trainer.fit(task, loader, optimizer, scheduler, state=start.state,
                restore_schedule=not start.continues)
    if distributed:
        # BatchNorm statistics drift apart per process: rank 0's win, so
        # every process ends with the same fitted estimator
        sync_buffers(model)
        encoders.close()
    train_state = copy_state(trainer.state_dict())
    # the last graph targets serve a resumed checkpoint only: a warm start
    # reads its own at its first epoch, and model files stay their size
    train_state.get("task", {}).pop("graph_targets", None)
    if not task.centroids_ready:
        # the warm-up lasted the whole run: centroids still serve `predict`
        # (the training state keeps them unset, for a warm start to set them)
        task.init_centroids()
    if not start.one_epoch:
        # one pass in eval mode over the training set: the statistics that
        # standardise `transform`, and the projections `predict` uses
        stats, projections = eval_pass(model, preprocess, X, batch_size, device, feature_dim)
        # the clusters the clustering term trained towards tell whether it
        # pulled (nearly) everything into one: the centroids before
        # refinement, or with graph targets the last partition of the keys
        # (the centroids then follow the key network, which lags the
        # projections here most in short runs)
        labels = None
        if task.current_weight > 0 and model.bank.target_owners is not None:
            labels = model.bank.target_owners.cpu()
        elif task.current_weight > 0:
            labels = assign_clusters(projections, model.centroids).cpu()
        # mean pairwise cosine of unit rows = squared norm of their mean
        mean_cosine = projections.mean(dim=0).pow(2).sum().item()
        check_collapse(trainer.history, model.queue.keys.shape[0], batch_size,
                       labels, model.centroids.shape[0], mean_cosine, projections.shape[0])
    clusters = None
    if (not start.one_epoch and readout is not None and use_graph(clustering, X.shape[0])
            and bool(torch.isfinite(projections).all())):  # else refused below
        # the graph of the training projections sets the clusters; the
        # trained centroids (in the training state) stay as they are
        views = None
        if readout_views > 0:
            rows = readout_rows(X.shape[0], seeds.model) if readout_rows is not None else None
            views = view_pass(model.backbone_q, model.projector_q, preprocess, task.augmentation,
                              X if rows is None else X[rows, ...], batch_size, device,
                              readout_views, seeds.model, channels_last)
        clusters = readout(projections, model.centroids, clustering.graph, seeds.model,
                           views=views)
        if distributed:
            clusters = tuple(broadcast_(t.to(device)).cpu() for t in clusters)
    elif not start.one_epoch and clustering.refine > 0:
        # k-means iterations on those projections; not part of the training
        # state, so a warm start continues the online centroids
        model.refine_centroids(projections, clustering.refine)
        if distributed:
            # every process ends with rank 0's centroids
            broadcast_(model.centroids)
    if start.one_epoch:
        # partial_fit stays about one epoch's work: one eval pass over this
        # call's rows, pooled with the statistics of the calls before it
        stats, _ = eval_pass(model, preprocess, X, batch_size, device, feature_dim,
                             previous=start.embedding_stats(), projections=False)
    if distributed:
        # every process ends with rank 0's statistics (a GPU's reductions
        # may round differently from process to process)
        for key in ("mean", "var"):
            stats[key] = broadcast_(stats[key].to(device)).cpu()
    train_state["embedding_stats"] = stats
    trained = _trained(model, preprocess, spec, run, device, feature_dim, trainer.history,
                       stats, train_state, clusters, queue_size=model.queue.keys.shape[0],
                       cluster_warmup=cluster_warmup, cluster_ramp=cluster_ramp,
                       batch_size=batch_size, amp=checkpoint.amp_name(trainer.amp_dtype))
    trained.check_finite(X)
    return trained
