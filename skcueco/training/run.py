"""One CueCo training run: resolved settings in, trained model out.

:func:`fit_cueco` is the single entry point behind ``fit``, ``warm_start``,
``partial_fit`` and ``resume_from``: it builds (or restores) the model, the
optimiser, the schedules and the task, runs the
:class:`~skcueco.training.engine.Trainer`, and returns a :class:`FitResult`.
No scikit-learn here: the estimator validates the input, resolves its
parameters into a :class:`CueCoConfig` and :class:`Seeds`, and publishes the
result.
"""

from dataclasses import dataclass, fields

import torch

from ..augment import make_augmentation
from ..backbones import build_backbone
from ..data.loaders import encode, make_loader
from ..data.preprocess import Preprocess, input_statistics, relayout
from ..nn.model import CueCoModel
from .device import resolve_device
from .distributed import get_rank, get_world_size, init_distributed
from .engine import Trainer, copy_state
from .optim import BASE_LR, make_optimizer, warmup_cosine
from .parallel import TrainingEncoders, prepare_model, sync_buffers
from .task import CueCoTask

# centroids without an assigned key for this many consecutive steps are re-seeded
RESEED_AFTER_STEPS = 50
MODES = ("fresh", "continue", "partial")


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


@dataclass(frozen=True)
class CueCoConfig:
    """The estimator parameters that define a training run (docs/method.rst)."""

    backbone: object
    projection_dim: int
    hidden_dim: int
    queue_size: int
    temperature: float
    key_momentum: float
    n_clusters: int
    cluster_weight: float
    cluster_warmup: int
    cluster_update: str
    cluster_loss: str
    cluster_temperature: float
    cluster_momentum: float
    augmentation: object
    batch_size: int
    max_epochs: int
    lr: object
    weight_decay: float
    optimizer: str
    amp: object
    num_workers: int
    channels_last: object
    compile: object
    distributed_bn: str
    device: object

    @classmethod
    def from_params(cls, params):
        """The fields of ``params`` (e.g. ``get_params()``) this class knows."""
        return cls(**{f.name: params[f.name] for f in fields(cls)})


@dataclass
class FitResult:
    """What a run produced; the key network and optimiser live on in ``train_state``."""

    encoder: torch.nn.Module
    projector: torch.nn.Module
    preprocess: Preprocess
    centroids: torch.Tensor
    history: list
    device: torch.device
    feature_dim: int
    train_state: dict = None


def view_augmentation(augmentation, spec):
    """The augmentation that makes the views of inputs described by ``spec``."""
    image = spec.kind == "image"
    return make_augmentation(
        augmentation, input_kind=spec.kind,
        n_channels=spec.shape[0] if image else None,
        image_size=spec.shape[1:] if image else None,
    )


def use_channels_last(setting, spec, device):
    """Whether image batches and weights use the channels-last layout."""
    if setting == "auto":
        return spec.kind == "image" and device.type == "cuda"
    return bool(setting) and spec.kind == "image"


def build_model(X, spec, config, seeds, *, device, preprocess=None, queue_size=None):
    """The initialised model and input conversion for ``X``.

    ``preprocess`` and ``queue_size`` of an earlier fit are passed when its
    training state is to be loaded into the model.
    """
    if preprocess is None:
        preprocess = Preprocess(spec, *input_statistics(X, spec))
    if queue_size is None:
        queue_size = min(config.queue_size, X.shape[0])
    # weights are drawn from torch's global generator inside a fork that is
    # restored on exit, so the caller's global random state is untouched
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds.weights)
        backbone, feature_dim = build_backbone(
            config.backbone, input_kind=spec.kind, input_shape=spec.shape
        )
        model = CueCoModel(
            backbone, feature_dim,
            projection_dim=config.projection_dim,
            hidden_dim=config.hidden_dim,
            queue_size=queue_size,
            n_clusters=config.n_clusters,
            temperature=config.temperature,
            cluster_loss=config.cluster_loss,
            cluster_temperature=config.cluster_temperature,
            cluster_momentum=config.cluster_momentum,
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


def _result(model, preprocess, device, feature_dim, history, train_state=None):
    model.eval()
    return FitResult(
        encoder=model.backbone_q.to(memory_format=torch.contiguous_format),
        projector=model.projector_q,
        preprocess=preprocess,
        centroids=model.centroids.detach().cpu().clone(),
        history=history,
        device=device,
        feature_dim=feature_dim,
        train_state=train_state,
    )


def untrained_cueco(X, spec, config, seeds):
    """A :class:`FitResult` of the initial network (a baseline), k-means centroids."""
    device = resolve_device(config.device)
    model, preprocess, feature_dim = build_model(X, spec, config, seeds, device=device)
    batch_size = min(config.batch_size, X.shape[0])
    model.init_centroids(encode(model.encode_key, preprocess, model, X, batch_size, device))
    return _result(model, preprocess, device, feature_dim, [])


def fit_cueco(X, spec, config, seeds, *, mode="fresh", previous=None, state=None,
              callbacks=(), validate=None):
    """Train CueCo on the compact rows ``X``.

    Parameters
    ----------
    X : ndarray or ImageSource of shape (n_samples, n_features)
        Validated compact rows.
    spec : InputSpec
        What the rows hold.
    config : CueCoConfig
    seeds : Seeds
    mode : {"fresh", "continue", "partial"}, default="fresh"
        ``"fresh"``: a new run of ``max_epochs`` (resuming ``state``
        exactly when given). ``"continue"``: ``max_epochs`` more epochs from
        ``previous`` on a new cosine cycle without warm-up. ``"partial"``:
        one epoch at constant learning rate and key momentum, from
        ``previous`` when given.
    previous : tuple of (dict, Preprocess), default=None
        The training state and input conversion of an earlier fit.
    state : dict, default=None
        A checkpoint (``Trainer.state_dict``) of this same run to resume.
    callbacks : list of Callback, default=()
    validate : callable, default=None
        ``validate(X) -> (X2d, spec)`` for monitors' extra data.

    Returns
    -------
    result : FitResult
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    distributed = init_distributed()
    world, rank = get_world_size(), get_rank()
    device = resolve_device(config.device)
    batch_size = min(config.batch_size, X.shape[0])
    prev_state, prev_preprocess = previous if previous is not None else (None, None)
    model, preprocess, feature_dim = build_model(
        X, spec, config, seeds, device=device, preprocess=prev_preprocess,
        queue_size=None if prev_state is None else prev_state["task"]["model"]["queue.keys"].shape[0],
    )
    loader_generator = torch.Generator().manual_seed(seeds.loader)
    loader = make_loader(
        X, batch_size=batch_size, shuffle=True, drop_last=True,
        generator=loader_generator, num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        shard=(world, rank, seeds.loader) if distributed else None,
    )
    steps = len(loader)
    if steps == 0:
        raise ValueError(
            f"Each of the {world} processes gets fewer than batch_size={batch_size} "
            "samples: use a smaller batch_size or fewer processes."
        )
    done_epochs = 0 if prev_state is None else prev_state["epoch"]
    n_epochs = 1 if mode == "partial" else config.max_epochs
    # the learning rate follows the global batch, summed over processes
    lr = config.lr
    if lr == "auto":
        lr = BASE_LR[config.optimizer] * batch_size * world / 256
    channels_last = use_channels_last(config.channels_last, spec, device)
    model = prepare_model(
        model, device=device, channels_last=channels_last,
        sync_bn=distributed and config.distributed_bn == "sync",
    )
    encoders = TrainingEncoders(
        model, compile=config.compile, distributed=distributed,
        shuffle_bn=config.distributed_bn == "shuffle", seed=seeds.model,
    )
    optimizer = make_optimizer(
        config.optimizer, model.query_parameters(), lr=lr, weight_decay=config.weight_decay
    )
    scheduler = None
    if mode != "partial":
        warmup = 0 if prev_state is not None else steps * min(10, n_epochs // 10)
        scheduler = warmup_cosine(optimizer, steps * n_epochs, warmup)
    task = CueCoTask(
        model, preprocess, view_augmentation(config.augmentation, spec),
        # each process draws its own views
        torch.Generator(device=device).manual_seed(seeds.augmentation + rank),
        total_steps=steps * n_epochs,
        key_momentum=config.key_momentum,
        final_momentum=config.key_momentum if mode == "partial" else 1.0,
        cluster_weight=config.cluster_weight,
        cluster_warmup=config.cluster_warmup,
        cluster_update=config.cluster_update,
        key_features=lambda: encode(model.encode_key, preprocess, model, X, batch_size, device),
        reseed_after=RESEED_AFTER_STEPS,
        loader_generator=loader_generator,
        channels_last=channels_last,
        sampler=loader.sampler.sampler if distributed else None,
        encoders=encoders,
        step_offset=0 if prev_state is None else prev_state["global_step"],
    )
    trainer = Trainer(
        device=device, max_epochs=done_epochs + n_epochs, callbacks=callbacks,
        amp=config.amp,
        embed=_embedder(model, preprocess, spec, batch_size, device, validate)
        if validate is not None else None,
    )
    if prev_state is not None:
        # continue: weights, optimiser state, queue, centroids and random
        # streams come back; the schedule is this run's
        trainer.fit(task, loader, optimizer, scheduler, state=prev_state, restore_schedule=False)
    else:
        trainer.fit(task, loader, optimizer, scheduler, state=state)
    if distributed:
        # BatchNorm statistics drift apart per process: rank 0's win, so
        # every process ends with the same fitted estimator
        sync_buffers(model)
        encoders.close()
    train_state = copy_state(trainer.state_dict())
    if not task.centroids_ready:
        # the warm-up lasted the whole run: centroids still serve `predict`
        # (the training state keeps them unset, for a warm start to set them)
        task.init_centroids()
    return _result(model, preprocess, device, feature_dim, trainer.history, train_state)
