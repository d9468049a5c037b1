"""CueCoClassifier: CueCo pretraining on all rows, then a (semi-supervised) head."""

import numbers

import numpy as np
import pandas as pd
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import LabelEncoder
from sklearn.semi_supervised import (
    LabelPropagation,
    LabelSpreading,
    SelfTrainingClassifier,
)
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import HasMethods, Interval, StrOptions
from sklearn.utils.metaestimators import available_if
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import (
    check_consistent_length,
    check_is_fitted,
    column_or_1d,
)

from ._base import restored_on_error
from ._embedder import CueCoEmbedder
from ._persistence import TorchStateMixin
from .data.sources import ImageSource
from .data.validation import check_input, image_format
from .training.linear_probe import LinearProbe
from .training.semi_supervised import PropagationProbe

_BUILTIN_HEADS = ("linear", "propagation")
_SEMI_SUPERVISED_HEADS = (LabelPropagation, LabelSpreading, SelfTrainingClassifier)


def _head_has(name):
    def check(self):
        return self.head in _BUILTIN_HEADS or hasattr(self.head, name)
    return check


def _is_semi_supervised(head):
    """Whether a scikit-learn head reads ``-1`` as unlabeled and learns from it.

    True for the classifiers of :mod:`sklearn.semi_supervised`
    (``LabelPropagation``, ``LabelSpreading``, ``SelfTrainingClassifier``, and
    their subclasses) and for a :class:`~sklearn.pipeline.Pipeline` ending in one.
    """
    if isinstance(head, Pipeline):
        return _is_semi_supervised(head.steps[-1][1])
    return isinstance(head, _SEMI_SUPERVISED_HEADS)


def _image_format(embedder):
    """How images from files are decoded for ``embedder`` (size and mode).

    A fitted (or frozen) embedder decodes at its training size and mode; an
    unfitted one at its ``image_size`` (None for the default embedder).
    """
    trained = getattr(embedder, "_trained", None)
    if trained is not None:
        return image_format(trained.spec)
    return {"image_size": getattr(embedder, "image_size", None)}


def _frozen_features(embedder, X, augment_seed=None):
    """The feature-extraction seam for heads trained on frozen embeddings.

    Returns ``(rows, features, augment)``: the validated compact rows of
    ``X``, their embeddings (as ``transform``, in the embedder's
    ``embedding_space``), and, when ``augment_seed`` is given,
    ``augment(rows_batch)`` -> the embeddings of fresh random views of a
    batch of those rows, on the embedder's device (the training
    augmentation, drawn from a generator seeded with ``augment_seed``);
    otherwise None.
    """
    rows, spec = embedder._rows(X)
    trained = embedder._trained
    space = embedder._embedding_space()
    augment = None
    if augment_seed is not None:
        augment = trained.augmenter(spec, embedder.augmentation, augment_seed, space)
    return rows, trained.embedding(rows, spec, space), augment


class CueCoClassifier(TorchStateMixin, ClassifierMixin, BaseEstimator):
    """Classifier on CueCo embeddings: self-supervised pretraining, then a head.

    ``fit(X, y)`` pretrains the embedder on every row of ``X`` without labels,
    then trains the head on the embeddings. Rows labeled ``-1``
    (``unlabeled``) are unlabeled, scikit-learn's semi-supervised convention:
    they always serve pretraining, and a semi-supervised head (the default
    ``"propagation"``, or a classifier of :mod:`sklearn.semi_supervised`) learns
    from their embeddings too; any other head sees the labeled rows only.

    Parameters
    ----------
    embedder : CueCoEmbedder or FrozenEstimator, default=None
        The representation learner, cloned at ``fit``. None uses
        ``CueCoEmbedder(random_state=random_state)``. To reuse an embedder that
        is already fitted without training it again, wrap it in
        :class:`sklearn.frozen.FrozenEstimator` (the wrapper survives cloning,
        so it also works inside ``GridSearchCV``).
    head : {"propagation", "linear"} or classifier, default="propagation"
        ``"linear"``: the linear-evaluation protocol, a linear layer trained in
        PyTorch on the frozen embeddings (``transform``'s: by default the
        standardised backbone features and the projections side by side) of
        the labeled rows, on the embedder's device, by SGD with momentum 0.9
        and a cosine schedule.

        ``"propagation"``: semi-supervised. The labels are first spread over
        the symmetric ``head_n_neighbors``-nearest-neighbour graph of the
        (standardised, L2-normalised) embeddings of all rows, by label
        propagation with weight ``head_alpha`` (on the embedder's device);
        then the linear layer is trained as for ``"linear"`` on every row:
        the labeled ones, and each unlabeled one with its propagated label,
        weighted by its certainty ``1 - entropy / log(n_classes)``. Without
        unlabeled rows it is the same as ``"linear"``.

        A scikit-learn classifier (e.g. ``LogisticRegression()``) is cloned
        and fit on the embeddings of the labeled rows; a semi-supervised one
        (an instance of ``LabelPropagation``, ``LabelSpreading`` or
        ``SelfTrainingClassifier``, or a :class:`~sklearn.pipeline.Pipeline`
        ending in one) on the embeddings of **all** rows, the unlabeled ones
        labeled ``-1``.
    head_epochs : int, default=100
        Epochs of the linear layer (``"linear"`` and ``"propagation"``).
    head_lr : float, default=0.1
        Peak learning rate of the linear layer.
    head_batch_size : int, default=256
        Batch size of the linear layer.
    head_weight_decay : float, default=0.0
        Weight decay of the linear layer.
    head_augmentation : bool, default=False
        Train the linear layer on augmented views of its training images (the
        embedder's augmentation), computing features anew every epoch.
    head_n_neighbors : int, default=5
        Neighbours of each row in the graph of ``head="propagation"``.
    head_alpha : float, default=0.95
        Weight of the neighbours against a row's own label in the propagation
        of ``head="propagation"``, in (0, 1): closer to 1 spreads the labels
        further.
    unlabeled : int or None, default=-1
        Label value of unlabeled rows, as in scikit-learn's semi-supervised
        estimators. None means every row is labeled (use it when -1 is a real
        class, as in labels ``{-1, 1}``).
    random_state : int, RandomState instance or None, default=None
        Seeds the default embedder and the linear layer.

    Attributes
    ----------
    embedder_ : CueCoEmbedder or FrozenEstimator
        The fitted embedder.
    head_ : LinearProbe, PropagationProbe or classifier
        The fitted head. For ``head="linear"`` and ``"propagation"`` a small
        estimator whose ``module_`` is the trained PyTorch layer; a
        ``PropagationProbe`` also has ``label_distributions_``,
        ``transduction_`` (the propagated label of every training row) and
        ``sample_weight_``.
    classes_ : ndarray of shape (n_classes,)
        Class labels seen among the labeled rows.
    n_features_in_ : int
        Number of values per sample seen in ``fit``.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Column names, when ``X`` was a DataFrame with string column names.
    device_ : torch.device
        Device of the embedder and of the linear head.

    See Also
    --------
    CueCoEmbedder : The self-supervised transformer used as the embedder.
    sklearn.semi_supervised.LabelSpreading : Label spreading, usable as ``head``.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoClassifier, CueCoEmbedder
    >>> X, y = load_digits(return_X_y=True)
    >>> clf = CueCoClassifier(CueCoEmbedder(max_epochs=2, random_state=0),
    ...                       head_epochs=5, random_state=0).fit(X, y)
    >>> clf.predict(X[:3]).shape
    (3,)
    """

    _parameter_constraints = {
        "embedder": [HasMethods(["fit", "transform"]), None],
        "head": [StrOptions(set(_BUILTIN_HEADS)), HasMethods(["fit", "predict"])],
        "head_epochs": [Interval(numbers.Integral, 1, None, closed="left")],
        "head_lr": [Interval(numbers.Real, 0, None, closed="neither")],
        "head_batch_size": [Interval(numbers.Integral, 1, None, closed="left")],
        "head_weight_decay": [Interval(numbers.Real, 0, None, closed="left")],
        "head_augmentation": ["boolean"],
        "head_n_neighbors": [Interval(numbers.Integral, 1, None, closed="left")],
        "head_alpha": [Interval(numbers.Real, 0, 1, closed="neither")],
        "unlabeled": [numbers.Integral, None],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        embedder=None,
        *,
        head="propagation",
        head_epochs=100,
        head_lr=0.1,
        head_batch_size=256,
        head_weight_decay=0.0,
        head_augmentation=False,
        head_n_neighbors=5,
        head_alpha=0.95,
        unlabeled=-1,
        random_state=None,
    ):
        self.embedder = embedder
        self.head = head
        self.head_epochs = head_epochs
        self.head_lr = head_lr
        self.head_batch_size = head_batch_size
        self.head_weight_decay = head_weight_decay
        self.head_augmentation = head_augmentation
        self.head_n_neighbors = head_n_neighbors
        self.head_alpha = head_alpha
        self.unlabeled = unlabeled
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=False)
    def fit(self, X, y):
        """Pretrain the embedder on all of ``X``, then fit the head.

        Parameters
        ----------
        X : array-like
            Images or vectors, in any layout :class:`CueCoEmbedder` accepts,
            including file paths, folders, PIL images and torch Datasets.
        y : array-like of shape (n_samples,)
            Class labels; the value ``unlabeled`` (default -1) marks a row
            without label (numeric labels only).

        Returns
        -------
        self : CueCoClassifier
            The fitted classifier.
        """
        # a failure (bad labels, a diverged embedder, a failing head) leaves
        # the classifier as it was, never a new embedder with an old head
        with restored_on_error(self):
            return self._fit(X, y)

    def _fit(self, X, y):
        if y is None:
            raise ValueError(
                f"This {type(self).__name__} estimator requires y to be passed, "
                "but the target y is None."
            )
        X2d, spec = check_input(self, X, reset=True, **_image_format(self.embedder))
        y = column_or_1d(y, warn=True)
        check_consistent_length(X2d, y)
        labeled = self._labeled_mask(y)
        check_classification_targets(y[labeled])
        encoder = LabelEncoder().fit(y[labeled])
        if len(encoder.classes_) < 2:
            raise ValueError(
                "The labeled rows hold only 1 class; a classifier needs at least "
                "2 classes."
            )
        if isinstance(self.head, type):
            raise TypeError(
                f"head must be 'propagation', 'linear' or a classifier instance such as "
                f"{self.head.__name__}(), not the class {self.head.__name__}."
            )
        semi_supervised = _is_semi_supervised(self.head)
        if semi_supervised and y.dtype.kind in "iuf" and np.any(y[labeled] == -1):
            raise ValueError(
                f"-1 is one of the classes, but the semi-supervised head "
                f"{type(self.head).__name__} reads -1 as unlabeled; use another head or "
                "recode the labels."
            )
        inner = getattr(self.embedder, "estimator", self.embedder)
        if self.embedder is not None and not isinstance(inner, CueCoEmbedder):
            raise TypeError(
                "embedder must be a CueCoEmbedder or a FrozenEstimator wrapping one, "
                f"got {type(inner).__name__}."
            )
        rng = check_random_state(self.random_state)
        embedder = self.embedder
        if embedder is None:
            embedder = CueCoEmbedder(random_state=rng.randint(2**31 - 1))
        # y=None spelled out: FrozenEstimator.fit requires the argument
        self.embedder_ = clone(embedder).fit(self._embedder_input(X2d, spec), None)
        self.device_ = self.embedder_.device_
        self.classes_ = encoder.classes_
        # [rows, ...]: an ImageSource gives a lazy subset, an array its rows
        X_lab = self._embedder_input(X2d[labeled, ...], spec)
        probe = dict(epochs=self.head_epochs, lr=self.head_lr,
                     batch_size=self.head_batch_size, weight_decay=self.head_weight_decay,
                     device=self.device_)
        if self.head == "propagation" and not labeled.all():
            seed = rng.randint(2**31 - 1)
            rows, features, augment = _frozen_features(
                self.embedder_, self._embedder_input(X2d, spec),
                augment_seed=seed if self.head_augmentation else None)
            self.head_ = PropagationProbe(
                n_neighbors=self.head_n_neighbors, alpha=self.head_alpha, seed=seed, **probe,
            ).fit(features, y, labeled=labeled, rows=rows, augment=augment)
        elif self.head in _BUILTIN_HEADS:
            # "propagation" without unlabeled rows has nothing to propagate
            seed = rng.randint(2**31 - 1)
            rows, features, augment = _frozen_features(
                self.embedder_, X_lab, augment_seed=seed if self.head_augmentation else None)
            self.head_ = LinearProbe(seed=seed, **probe).fit(
                features, y[labeled], rows=rows, augment=augment)
        elif semi_supervised:
            Z = self.embedder_.transform(self._embedder_input(X2d, spec))
            y_head = y
            if not labeled.all():
                y_head = np.where(labeled, y, -1)
            self.head_ = clone(self.head).fit(Z, y_head)
        else:
            self.head_ = clone(self.head).fit(self.embedder_.transform(X_lab), y[labeled])
        return self

    def _labeled_mask(self, y):
        if y.dtype.kind == "f" and not np.isfinite(y).all():
            raise ValueError("Input y contains NaN or infinity; labels must be finite.")
        if self.unlabeled is not None and y.dtype.kind in "iuf":
            labeled = y != self.unlabeled
        else:
            labeled = np.ones(len(y), dtype=bool)
        if not labeled.any():
            raise ValueError(
                f"All rows are unlabeled (y == {self.unlabeled}); at least two "
                "labeled classes are needed to train the head."
            )
        return labeled

    def __sklearn_is_fitted__(self):
        # n_features_in_ is set before training: only a finished fit has a head
        return hasattr(self, "head_")

    def _embedder_input(self, X2d, spec):
        # images given as 3-D/4-D arrays go back to their shape so the embedder
        # reads their layout; 2-D input is read with the embedder's image_shape
        if spec is None and hasattr(self, "feature_names_in_"):
            # column names travel on, so an embedder fitted on a DataFrame
            # (e.g. a FrozenEstimator) sees the names it was fitted with
            return pd.DataFrame(X2d, columns=self.feature_names_in_, copy=False)
        if spec is None or isinstance(X2d, ImageSource):
            return X2d
        return X2d.reshape(-1, *spec.array_shape)

    def _embed(self, X):
        check_is_fitted(self)
        X2d, spec = check_input(self, X, reset=False, **_image_format(self.embedder_))
        return self.embedder_.transform(self._embedder_input(X2d, spec))

    def predict(self, X):
        """Predict class labels.

        Parameters
        ----------
        X : array-like
            Same layout as in :meth:`fit`.

        Returns
        -------
        y_pred : ndarray of shape (n_samples,)
            Predicted label of each sample, one of ``classes_``.
        """
        Z = self._embed(X)  # checks that the classifier is fitted
        return self.head_.predict(Z)

    @available_if(_head_has("predict_proba"))
    def predict_proba(self, X):
        """Class probabilities.

        Parameters
        ----------
        X : array-like
            Same layout as in :meth:`fit`.

        Returns
        -------
        proba : ndarray of shape (n_samples, n_classes)
            Columns follow ``classes_``.
        """
        Z = self._embed(X)  # checks that the classifier is fitted
        return self.head_.predict_proba(Z)

    @available_if(_head_has("decision_function"))
    def decision_function(self, X):
        """Confidence scores (logits of the linear head).

        Parameters
        ----------
        X : array-like
            Same layout as in :meth:`fit`.

        Returns
        -------
        scores : ndarray of shape (n_samples,) or (n_samples, n_classes)
            For two classes, the score of ``classes_[1]`` relative to
            ``classes_[0]``, as scikit-learn expects.
        """
        Z = self._embed(X)  # checks that the classifier is fitted
        return self.head_.decision_function(Z)
