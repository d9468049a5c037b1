"""Standard protocols that measure the quality of learned representations.

:func:`evaluate_features` and :func:`evaluate_embedder` return a tidy
:class:`pandas.DataFrame` with one row per measurement and the columns
``protocol``, ``metric`` and ``value``:

========== ====================================================================
protocol   what is measured
========== ====================================================================
linear     test accuracy of a logistic regression on standardised features
           (the *linear probe*)
knn        test accuracy of the weighted k-nearest-neighbour vote used to
           monitor self-supervised training (cosine similarity, votes
           weighted by ``exp(similarity / t)``)
kmeans     agreement of k-means clusters of the L2-normalised test features
           with the classes: ``nmi``, ``ari`` and ``cluster_accuracy``
predict    the same agreement for the embedder's own clusters,
           :meth:`skcueco.CueCoEmbedder.predict` (only :func:`evaluate_embedder`)
========== ====================================================================

The linear probe and the k-nearest-neighbour vote are trained on the
training split and scored on the test split; the clusterings use no labels
at all, the labels only score them.
"""

import numbers

import numpy as np
import pandas as pd
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from sklearn.metrics.cluster import contingency_matrix
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize
from sklearn.utils import check_array, column_or_1d
from sklearn.utils.multiclass import type_of_target
from sklearn.utils.validation import check_is_fitted

__all__ = ["cluster_accuracy", "evaluate_embedder", "evaluate_features"]

COLUMNS = ["protocol", "metric", "value"]

# enough iterations for lbfgs to converge on standardised features of a few
# thousand samples; the default 100 stops early and under-reports the probe
_PROBE_MAX_ITER = 5000


def cluster_accuracy(y_true, y_pred):
    """Accuracy of a clustering under the best one-to-one cluster-to-class map.

    Each cluster is matched to at most one class and each class to at most
    one cluster so that the number of correctly labelled samples is largest
    (the Hungarian algorithm on the contingency matrix). When there are more
    clusters than classes, the samples of unmatched clusters count as
    errors; when there are fewer, the samples of unmatched classes do.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Class labels (any hashable values).
    y_pred : array-like of shape (n_samples,)
        Cluster labels (any hashable values); their number may differ from
        the number of classes.

    Returns
    -------
    accuracy : float
        Fraction of samples whose cluster is matched to their class, in
        ``[0, 1]``. A relabelling of the classes scores 1.

    See Also
    --------
    sklearn.metrics.normalized_mutual_info_score : Agreement that does not
        match clusters to classes.
    sklearn.metrics.adjusted_rand_score : Pair-counting agreement, corrected
        for chance.

    Examples
    --------
    >>> from skcueco.evaluation import cluster_accuracy
    >>> cluster_accuracy([0, 0, 1, 1, 2, 2], [5, 5, 3, 3, 4, 4])
    1.0
    >>> cluster_accuracy([0, 0, 0, 1, 1, 1], [0, 0, 1, 1, 1, 1])
    0.8333...
    """
    y_true = _check_labels(y_true, "y_true")
    y_pred = _check_labels(y_pred, "y_pred")
    _check_same_length(y_true, "y_true", y_pred, "y_pred")
    counts = contingency_matrix(y_true, y_pred)
    # a rectangular matrix is fine: the larger side keeps unmatched rows/columns
    rows, cols = linear_sum_assignment(counts, maximize=True)
    return float(counts[rows, cols].sum() / len(y_true))


def evaluate_features(
    Z_train,
    y_train,
    Z_test,
    y_test,
    *,
    n_clusters=None,
    knn_k=200,
    knn_temperature=0.1,
    random_state=None,
):
    """Linear probe, weighted kNN and k-means quality of given features.

    Parameters
    ----------
    Z_train : array-like of shape (n_train, n_features)
        Features of the training split (e.g. embeddings).
    y_train : array-like of shape (n_train,)
        Class labels of the training split.
    Z_test : array-like of shape (n_test, n_features)
        Features of the test split, in the same space as ``Z_train``.
    y_test : array-like of shape (n_test,)
        Class labels of the test split.
    n_clusters : int, default=None
        Number of k-means clusters on the test features. None: the number
        of distinct classes in ``y_train`` and ``y_test`` together.
    knn_k : int, default=200
        Number of neighbours of the kNN vote, capped at ``n_train``.
    knn_temperature : float, default=0.1
        Temperature ``t`` of the kNN vote weights ``exp(similarity / t)``.
    random_state : int, RandomState instance or None, default=None
        Seeds the logistic regression and k-means.

    Returns
    -------
    results : pandas.DataFrame
        Five rows with columns ``protocol``, ``metric`` and ``value``:
        ``("linear", "accuracy")``, ``("knn", "accuracy")`` and
        ``("kmeans", m)`` for ``m`` in ``nmi``, ``ari`` and
        ``cluster_accuracy``.

    See Also
    --------
    evaluate_embedder : The same protocols for a fitted embedder, plus the
        quality of its own clusters.
    cluster_accuracy : Accuracy under the best cluster-to-class matching.

    Notes
    -----
    - ``linear``: :class:`~sklearn.preprocessing.StandardScaler` then
      :class:`~sklearn.linear_model.LogisticRegression` fitted on the
      training split; accuracy on the test split.
    - ``knn``: each test sample takes the ``k`` training samples of highest
      cosine similarity ``s`` and predicts the class with the largest sum of
      ``exp(s / t)`` over them, the monitor of instance-discrimination and
      MoCo training. It is a
      :class:`~sklearn.neighbors.KNeighborsClassifier` with
      ``metric="cosine"`` (distance ``1 - s``) and these weights.
    - ``kmeans``: :class:`~sklearn.cluster.KMeans` (10 initialisations) on
      the L2-normalised test features, scored against ``y_test`` with
      :func:`~sklearn.metrics.normalized_mutual_info_score`,
      :func:`~sklearn.metrics.adjusted_rand_score` and
      :func:`cluster_accuracy`.

    Examples
    --------
    >>> from sklearn.datasets import make_blobs
    >>> from skcueco.evaluation import evaluate_features
    >>> Z, y = make_blobs(n_samples=200, centers=3, random_state=0)
    >>> results = evaluate_features(Z[:150], y[:150], Z[150:], y[150:],
    ...                             knn_k=20, random_state=0)
    >>> results[["protocol", "metric"]].to_records(index=False).tolist()
    [('linear', 'accuracy'), ('knn', 'accuracy'), ('kmeans', 'nmi'), \
('kmeans', 'ari'), ('kmeans', 'cluster_accuracy')]
    """
    Z_train, y_train = _check_split(Z_train, "Z_train", y_train, "y_train")
    Z_test, y_test = _check_split(Z_test, "Z_test", y_test, "y_test")
    if Z_test.shape[1] != Z_train.shape[1]:
        raise ValueError(
            f"Z_test has {Z_test.shape[1]} features but Z_train has "
            f"{Z_train.shape[1]}; both splits must be in the same feature space."
        )
    if np.unique(y_train).size < 2:
        raise ValueError(
            "y_train holds a single class; the linear probe and the kNN vote "
            "need at least 2."
        )
    if not isinstance(knn_k, numbers.Integral) or isinstance(knn_k, bool) or knn_k < 1:
        raise ValueError(f"knn_k must be an integer >= 1; got {knn_k!r}.")
    if (
        not isinstance(knn_temperature, numbers.Real)
        or isinstance(knn_temperature, bool)
        or not knn_temperature > 0
    ):
        raise ValueError(f"knn_temperature must be a number > 0; got {knn_temperature!r}.")
    if n_clusters is None:
        n_clusters = np.unique(np.concatenate([y_train, y_test])).size
    elif not isinstance(n_clusters, numbers.Integral) or isinstance(n_clusters, bool) \
            or n_clusters < 1:
        raise ValueError(f"n_clusters must be an integer >= 1 or None; got {n_clusters!r}.")
    if n_clusters > len(Z_test):
        raise ValueError(
            f"n_clusters={n_clusters} must be <= the number of test samples "
            f"({len(Z_test)})."
        )

    probe = make_pipeline(
        StandardScaler(),
        LogisticRegression(max_iter=_PROBE_MAX_ITER, random_state=random_state),
    )
    linear = probe.fit(Z_train, y_train).score(Z_test, y_test)

    knn = KNeighborsClassifier(
        n_neighbors=min(int(knn_k), len(Z_train)),
        weights=_ExpSimilarityWeights(float(knn_temperature)),
        metric="cosine",
        algorithm="brute",
    )
    knn_accuracy = knn.fit(Z_train, y_train).score(Z_test, y_test)

    clusters = KMeans(n_clusters=int(n_clusters), n_init=10, random_state=random_state)
    kmeans_labels = clusters.fit_predict(normalize(Z_test))

    rows = [
        ("linear", "accuracy", linear),
        ("knn", "accuracy", knn_accuracy),
        *_clustering_rows("kmeans", y_test, kmeans_labels),
    ]
    return pd.DataFrame(rows, columns=COLUMNS).astype({"value": float})


def evaluate_embedder(
    embedder,
    X_train,
    y_train,
    X_test,
    y_test,
    *,
    n_clusters=None,
    knn_k=200,
    knn_temperature=0.1,
    random_state=None,
):
    """Evaluate a fitted embedder with every protocol.

    Both splits are embedded with ``embedder.transform`` and measured with
    :func:`evaluate_features`; the embedder's own clusters,
    ``embedder.predict(X_test)``, are scored against ``y_test`` as protocol
    ``"predict"``.

    Parameters
    ----------
    embedder : CueCoEmbedder
        A fitted embedder, or any fitted scikit-learn transformer; the
        ``"predict"`` rows are only added when it has a ``predict`` method.
    X_train : array-like
        Training split, in any layout ``embedder.transform`` accepts.
    y_train : array-like of shape (n_train,)
        Class labels of ``X_train``.
    X_test : array-like
        Test split, in the same layout.
    y_test : array-like of shape (n_test,)
        Class labels of ``X_test``.
    n_clusters : int, default=None
        Number of k-means clusters; see :func:`evaluate_features`. The
        ``"predict"`` rows use the embedder's clusters whatever their number.
    knn_k : int, default=200
        Number of neighbours of the kNN vote, capped at ``n_train``.
    knn_temperature : float, default=0.1
        Temperature of the kNN vote weights.
    random_state : int, RandomState instance or None, default=None
        Seeds the logistic regression and k-means.

    Returns
    -------
    results : pandas.DataFrame
        Columns ``protocol``, ``metric`` and ``value``: the five rows of
        :func:`evaluate_features`, then ``("predict", m)`` for ``m`` in
        ``nmi``, ``ari`` and ``cluster_accuracy``.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        When ``embedder`` is not fitted.

    See Also
    --------
    evaluate_features : The protocols on precomputed features.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skcueco import CueCoEmbedder
    >>> from skcueco.evaluation import evaluate_embedder
    >>> X, y = load_digits(return_X_y=True)
    >>> emb = CueCoEmbedder(max_epochs=2, hidden_dim=64, batch_size=64,
    ...                     random_state=0).fit(X[:1000])
    >>> results = evaluate_embedder(emb, X[:1000], y[:1000], X[1000:], y[1000:],
    ...                             random_state=0)
    >>> sorted(results["protocol"].unique())
    ['kmeans', 'knn', 'linear', 'predict']
    """
    if not hasattr(embedder, "transform"):
        raise TypeError(
            "embedder must be a fitted transformer such as CueCoEmbedder; got "
            f"{type(embedder).__name__}, which has no transform method."
        )
    check_is_fitted(embedder)
    Z_train = embedder.transform(X_train)
    Z_test = embedder.transform(X_test)
    # fail on mismatched labels before the (costlier) probes run
    y_train = _check_labels(y_train, "y_train")
    y_test = _check_labels(y_test, "y_test")
    _check_same_length(Z_train, "X_train", y_train, "y_train")
    _check_same_length(Z_test, "X_test", y_test, "y_test")
    results = evaluate_features(
        Z_train, y_train, Z_test, y_test, n_clusters=n_clusters, knn_k=knn_k,
        knn_temperature=knn_temperature, random_state=random_state,
    )
    if not hasattr(embedder, "predict"):
        return results
    own = pd.DataFrame(
        _clustering_rows("predict", y_test, np.asarray(embedder.predict(X_test))),
        columns=COLUMNS,
    )
    return pd.concat([results, own], ignore_index=True).astype({"value": float})


class _ExpSimilarityWeights:
    """kNN vote weights ``exp(similarity / t)`` from cosine distances.

    A class rather than a closure so that the classifier can be pickled and
    cloned.
    """

    def __init__(self, temperature):
        self.temperature = temperature

    def __call__(self, distances):
        # similarity = 1 - cosine distance. Dividing every weight of a row by
        # the same constant leaves its vote unchanged, so the row's largest
        # similarity is subtracted first: the largest weight is then 1 and a
        # small temperature cannot overflow (or underflow every weight to 0).
        similarity = 1.0 - np.asarray(distances, dtype=np.float64)
        shifted = similarity - similarity.max(axis=1, keepdims=True)
        return np.exp(shifted / self.temperature)


def _clustering_rows(protocol, y_true, labels):
    return [
        (protocol, "nmi", normalized_mutual_info_score(y_true, labels)),
        (protocol, "ari", adjusted_rand_score(y_true, labels)),
        (protocol, "cluster_accuracy", cluster_accuracy(y_true, labels)),
    ]


def _check_labels(y, name):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y.ravel()
    if y.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one label per sample); got shape {y.shape}.")
    if y.size == 0:
        raise ValueError(f"{name} is empty.")
    kind = type_of_target(y, input_name=name)
    if kind not in ("binary", "multiclass"):
        raise ValueError(
            f"{name} must hold class labels (integers or strings); got "
            f"{kind} values."
        )
    return column_or_1d(y)


def _check_split(Z, Z_name, y, y_name):
    Z = check_array(Z, input_name=Z_name, dtype="numeric", ensure_min_samples=1)
    y = _check_labels(y, y_name)
    _check_same_length(Z, Z_name, y, y_name)
    return Z, y


def _check_same_length(a, a_name, b, b_name):
    if len(a) != len(b):
        raise ValueError(
            f"{a_name} has {len(a)} samples but {b_name} has {len(b)}; they "
            "must describe the same samples."
        )
