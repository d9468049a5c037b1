"""What a fit produces, and the operations on it.

A :class:`Trained` holds the trained query backbone and projector, the input
conversion, the centroids, the statistics that standardise the embeddings,
the resolved settings of the run and, when the model can be continued, the
training state (key network, queue, optimiser state, random streams). Every
way of getting a model (``fit``, ``partial_fit``, ``warm_start``,
``resume_from`` and ``load``) builds one; the estimator publishes its fitted
attributes from it, and embedding, projecting and assigning clusters are
its methods. No scikit-learn here: the estimator validates the input and
passes the compact rows with their :class:`~skcueco.data.validation.InputSpec`.
"""

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ..augment import make_augmentation
from ..data.loaders import INFERENCE_ROWS, encode
from ..data.preprocess import Preprocess, relayout
from ..nn.vote import vote_clusters
from .engine import NonFiniteLossError

# inference input conversions, per trained ``preprocess`` and layout; built
# once (building a module costs as much as a tenth of embedding one small
# image) and kept outside the model, whose state inference must not change
_INFERENCE_PREPROCESS = weakref.WeakKeyDictionary()


def feature_scale(std):
    """Standard deviations as float32 divisors; 1 for (nearly) constant features.

    A feature whose standard deviation is negligible against the others'
    (a dead unit) keeps a scale of 1, so its rounding noise is not blown up
    to unit variance.

    Parameters
    ----------
    std : array-like of shape (n_features,)
        Standard deviation of each feature.

    Returns
    -------
    scale : ndarray of shape (n_features,), dtype float32
        The divisors.
    """
    std = np.asarray(std, dtype=np.float64)
    return np.where(std > 1e-4 * std.mean(), std, 1.0).astype(np.float32)


def standardisation(stats):
    """``(mean, scale)`` float32 arrays from :func:`~skcueco.training.run.embedding_statistics`."""
    std = stats["var"].clamp_min(0).sqrt().numpy()
    return stats["mean"].numpy().astype(np.float32), feature_scale(std)


EMBEDDING_SPACES = ("joint", "features", "projection")
"""What ``transform`` can return (``embedding_space``; docs/method.rst, "The embedding")."""


def embedding_of(h, space, mean, scale, projector, z=None):
    """The embedding in ``space`` of backbone features ``h``, as ``transform`` returns it.

    The one definition of the spaces, shared by ``transform``, the
    augmented views of the classifier's heads and the exported graph.

    Parameters
    ----------
    h : torch.Tensor of shape (N, feature_dim)
        Backbone features.
    space : {"joint", "features", "projection"}
        ``"features"``: ``f = (h - mean) / scale``, the standardised
        features; ``"projection"``: ``z``, the unit projection of ``h``;
        ``"joint"``: ``[f / ||f||, z] * sqrt(n / 2)``, both unit vectors
        side by side, scaled so that each row has norm ``sqrt(n)`` (``n =
        feature_dim + projection_dim`` columns, of the order of 1 each, as
        the standardised features: models with their default regularisation
        behave as on those); the cosine similarity of two rows is the mean
        of the two spaces' similarities.
    mean, scale : torch.Tensor of shape (feature_dim,)
        The standardisation, on ``h``'s device.
    projector : callable
        The query projector.
    z : torch.Tensor of shape (N, projection_dim), default=None
        The unit projection of ``h``, when already computed.

    Returns
    -------
    embedding : torch.Tensor of shape (N, n_features_out), float32
    """
    if space != "features" and z is None:
        z = F.normalize(projector(h).float(), dim=1)
    if space == "projection":
        return z
    f = (h.float() - mean) / scale
    if space == "features":
        return f
    joint = torch.cat([F.normalize(f, dim=1), z], dim=1)
    return joint * (joint.shape[1] / 2) ** 0.5


def view_augmentation(augmentation, spec):
    """The augmentation that makes the views of inputs described by ``spec``."""
    image = spec.kind == "image"
    return make_augmentation(
        augmentation, input_kind=spec.kind,
        n_channels=spec.shape[0] if image else None,
        image_size=spec.shape[1:] if image else None,
    )


def view_pass(encoder, projector, preprocess, augmentation, X, batch_size, device, n_views,
              seed, channels_last=False):
    """The sum of the unit projections of ``n_views`` random views of each row of ``X``.

    ``encoder`` and ``projector`` in eval mode; views drawn by
    ``augmentation`` from a generator on ``device`` seeded with ``seed``, so
    the same rows and seed give the same sum; ``channels_last`` lays the
    views out as training did. Returns ``(n_samples, D)`` on ``device``.
    """
    generator = torch.Generator(device=device).manual_seed(seed)

    def project(x):
        total = 0
        for _ in range(n_views):
            v = augmentation(x, generator)
            if channels_last:
                v = v.contiguous(memory_format=torch.channels_last)
            total = total + F.normalize(projector(encoder(v)).float(), dim=1)
        return total

    return encode(project, preprocess, (encoder, projector), X, batch_size, device).to(device)


def use_channels_last(setting, spec, device, backbone=None):
    """Whether image batches and weights use the channels-last layout.

    ``"auto"``: on CUDA for images; on the CPU for images going to a built-in
    convolutional backbone, whose oneDNN convolutions run faster channels-last
    (``benchmarks/throughput.py --layout``). A custom module keeps the
    default layout on the CPU: it may ``view`` its input, which a
    channels-last tensor does not allow.
    """
    if spec.kind != "image":
        return False
    if setting == "auto":
        if device.type == "cuda":
            return True
        return device.type == "cpu" and backbone in ("auto", "small_cnn", "resnet18", "resnet50")
    return bool(setting)


@dataclass(eq=False)
class Trained:
    """A trained CueCo model: networks, input conversion, centroids and statistics.

    Attributes are replaced, never changed in place, once the object is
    published, so a failed ``fit`` that restores the estimator's previous
    ``Trained`` restores the whole model.
    """

    encoder: torch.nn.Module
    """The query backbone, in eval mode, on ``device``."""
    projector: torch.nn.Module
    """The query projector, in eval mode, on ``device``."""
    preprocess: Preprocess
    """Compact rows (of ``spec``) to the network's input, on ``device``."""
    centroids: torch.Tensor
    """``(n_clusters, projection_dim)`` unit rows, on the CPU."""
    embedding_mean: np.ndarray
    embedding_scale: np.ndarray
    """Standardisation of the backbone features (float32, ``(feature_dim,)``)."""
    spec: object
    """The :class:`~skcueco.data.validation.InputSpec` of the training data."""
    device: torch.device
    feature_dim: int
    channels_last: object = "auto"
    """The ``channels_last`` setting: the inference layout follows it."""
    backbone: object = None
    """The backbone setting by name (None for a custom module)."""
    history: object = ()
    """One record per epoch: a list of dicts, or a dict of columns."""
    train_state: dict = None
    """What ``warm_start`` and ``partial_fit`` continue from (CPU tensors)."""
    resolved: dict = field(default_factory=dict)
    """The ``"auto"`` settings of the run, resolved (``queue_size``,
    ``cluster_warmup``, ``cluster_ramp``, ``batch_size``)."""
    prototypes: torch.Tensor = None
    """``(n_prototypes, projection_dim)`` unit rows on the CPU, or None: the
    centroids are the prototypes."""
    prototype_owners: torch.Tensor = None
    """The cluster of each prototype (int64), or None."""
    prototype_votes: int = 1
    """Prototypes that vote on a cluster (:func:`~skcueco.nn.vote.prototype_vote`);
    1, the most similar one, for models read out before the vote."""

    # -- inference ------------------------------------------------------------
    def _fixed_batch(self):
        return self.device.type == "cpu"

    def inference_preprocess(self, spec):
        """The input conversion for rows of ``spec``, in the trained layout."""
        # the layout training used, decided by the settings alone (not by the
        # weights' strides, which a saved and loaded model does not keep), so
        # a loaded model runs the same kernels as the fitted one
        channels_last = use_channels_last(self.channels_last, spec, self.device,
                                          backbone=self.backbone)
        made = _INFERENCE_PREPROCESS.setdefault(self.preprocess, {})
        key = (spec, channels_last)
        if key not in made:
            made[key] = relayout(self.preprocess_for(spec), spec,
                                 output_channels_last=channels_last)
        return made[key]

    def preprocess_for(self, spec):
        """The input conversion for rows of ``spec`` (another layout of the same images)."""
        if spec == self.spec:
            return self.preprocess
        return relayout(self.preprocess, spec)

    def embed(self, X, spec):
        """Standardised backbone features ``(n_samples, feature_dim)``, float32.

        Parameters
        ----------
        X : ndarray or ImageSource
            Validated compact rows.
        spec : InputSpec
            What they hold.

        Returns
        -------
        Z : ndarray of shape (n_samples, feature_dim)
            Independent of batch composition.
        """
        Z = encode(self.encoder, self.inference_preprocess(spec), self.encoder, X,
                   INFERENCE_ROWS, self.device, fixed_batch=self._fixed_batch(),
                   check_key="transform").numpy()
        Z -= self.embedding_mean
        Z /= self.embedding_scale
        return Z

    def embedding(self, X, spec, space):
        """What ``transform`` returns for the rows ``X`` in ``space`` (:func:`embedding_of`).

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features_out), float32
            Independent of batch composition. ``"features"`` is
            :meth:`embed`, ``"projection"`` :meth:`project`.
        """
        if space == "features":
            return self.embed(X, spec)
        if space == "projection":
            return self.project(X, spec)
        mean = torch.from_numpy(self.embedding_mean).to(self.device)
        scale = torch.from_numpy(self.embedding_scale).to(self.device)

        def joint(x):
            return embedding_of(self.encoder(x), space, mean, scale, self.projector)

        return encode(joint, self.inference_preprocess(spec), (self.encoder, self.projector),
                      X, INFERENCE_ROWS, self.device, fixed_batch=self._fixed_batch(),
                      check_key=space).numpy()

    def embedding_dim(self, space):
        """Columns of :meth:`embedding` in ``space``."""
        projection_dim = int(self.centroids.shape[1])
        return {"features": self.feature_dim, "projection": projection_dim,
                "joint": self.feature_dim + projection_dim}[space]

    def project(self, X, spec):
        """Unit-norm projections ``(n_samples, projection_dim)`` of the rows ``X``.

        The space the centroids live in: cosine similarity to the centroids
        is a plain dot product with these rows.
        """
        def project(x):
            z = self.projector(self.encoder(x)).float()
            return F.normalize(z, dim=1)

        return encode(project, self.inference_preprocess(spec), (self.encoder, self.projector),
                      X, INFERENCE_ROWS, self.device, fixed_batch=self._fixed_batch(),
                      check_key="project").numpy()

    def predict(self, X, spec):
        """Cluster of each row: the vote of its most similar prototypes."""
        return self.assign(torch.from_numpy(self.project(X, spec))).numpy()

    def assign(self, z):
        """Cluster of each unit projection ``z``: the vote of its ``prototype_votes``
        most similar prototypes (:func:`~skcueco.nn.vote.vote_clusters`).

        Without prototypes, the most similar centroid.
        """
        n_clusters = self.centroids.shape[0]
        if self.prototypes is None:
            return vote_clusters(z, self.centroids, torch.arange(n_clusters), n_clusters)
        return vote_clusters(z, self.prototypes, self.prototype_owners, n_clusters,
                             self.prototype_votes)

    def augmenter(self, spec, augmentation, seed, space="features"):
        """``augment(rows_batch)`` -> embeddings in ``space`` of fresh random views.

        For heads trained on augmented frozen embeddings: the training
        augmentation (``augmentation`` as the estimator's parameter), drawn
        from a generator seeded with ``seed``, on ``device``; ``space`` as
        in :func:`embedding_of` (default: the standardised features).
        """
        device = self.device
        aug = view_augmentation(augmentation, spec)
        preprocess = self.preprocess_for(spec)
        generator = torch.Generator(device=device).manual_seed(seed)
        mean = torch.from_numpy(self.embedding_mean).to(device)
        scale = torch.from_numpy(self.embedding_scale).to(device)

        @torch.no_grad()
        def augment(batch):
            h = self.encoder(aug(preprocess(batch.to(device)), generator))
            return embedding_of(h, space, mean, scale, self.projector)
        return augment

    def read_views(self, X, spec, augmentation, n_views, seed):
        """The views ``fit``'s read-out adds to the projections of the rows ``X``.

        :func:`view_pass` as ``fit`` runs it: the training augmentation
        (``augmentation`` as the estimator's parameter), batch size and
        layout, on ``device``; ``X`` are the rows read and ``seed`` the
        model seed. Returns ``(n_samples, projection_dim)`` on the CPU.
        """
        batch_size = self.resolved.get("batch_size", 256)
        channels_last = use_channels_last(self.channels_last, spec, self.device,
                                          backbone=self.backbone)
        return view_pass(self.encoder, self.projector, self.preprocess_for(spec),
                         view_augmentation(augmentation, spec), X, batch_size, self.device,
                         n_views, seed, channels_last).cpu()

    # -- checks ---------------------------------------------------------------
    def check_finite(self, X, n_probe=32):
        """Refuse a model that maps training samples to NaN or infinity.

        The trainer checks the whole training state after every epoch, but
        finite weights can still overflow float32 on the way through the
        network (e.g. after a last step with a huge learning rate): one small
        batch of training rows through the trained encoder and projector, in
        eval mode, shows it.

        Raises
        ------
        NonFiniteLossError
            If it does.
        """
        rows = X[:min(X.shape[0], n_probe)]

        def features_and_projections(x):
            h = self.encoder(x)
            return torch.cat([h.float().flatten(1), self.projector(h).float()], dim=1)

        modules = torch.nn.ModuleList([self.encoder, self.projector])
        out = encode(features_and_projections, self.preprocess, modules, rows, len(rows),
                     self.device)
        if not (torch.isfinite(out).all() and torch.isfinite(self.centroids).all()):
            raise NonFiniteLossError(
                "Training diverged: the trained model maps training samples to NaN or "
                "infinite embeddings (its weights grew beyond what float32 computes); "
                "it was not kept. The learning rate is probably too high (try a "
                "smaller `lr`)."
            )
