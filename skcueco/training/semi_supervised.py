"""The label-propagation head: labels spread over the embeddings' kNN graph,
then a linear head trained on every row.

:class:`PropagationProbe` is what ``CueCoClassifier(head="propagation")``
fits. Its two steps follow label propagation for deep semi-supervised
learning (Iscen et al., CVPR 2019):

1. :func:`propagate_labels` spreads the labels of the labeled rows along the
   symmetric k-nearest-neighbour graph of the L2-normalised (standardised)
   embeddings of **all** rows, by the diffusion of Zhou et al. (2004),
   ``F = (1 - alpha) (I - alpha S)^-1 Y``;
2. the :class:`~skcueco.training.linear_probe.LinearProbe` is trained on the
   labeled rows and on every unlabeled row with its propagated label (the
   arg-max of its row of ``F``), each unlabeled row weighted by its certainty
   ``1 - entropy / log(n_classes)``.

The graph and the diffusion are plain tensor operations (gathers and
``index_add_``), so they run on the embedder's device, in memory linear in
the number of rows.
"""

import numpy as np
import torch
import torch.nn.functional as F

from .linear_probe import LinearProbe


def _standardised_unit_rows(Z, device):
    Z = torch.as_tensor(np.asarray(Z, dtype=np.float32), device=device)
    Z = (Z - Z.mean(dim=0)) / Z.std(dim=0, unbiased=False).clamp_min(1e-6)
    return F.normalize(Z, dim=1)


def knn_graph(Z, n_neighbors, *, device, chunk_size=4096):
    """The ``n_neighbors`` nearest rows of every row, by cosine similarity.

    Parameters
    ----------
    Z : torch.Tensor of shape (n, F)
        Unit-norm rows, on ``device``.
    n_neighbors : int
        Neighbours per row, the row itself excluded (capped at ``n - 1``).
    device : torch.device
    chunk_size : int, default=4096
        Rows compared with all others at once (memory ``chunk_size * n``).

    Returns
    -------
    indices : torch.Tensor of shape (n, k), int64
    weights : torch.Tensor of shape (n, k)
        Cosine similarities, negatives clipped to 0.
    """
    n = Z.shape[0]
    k = min(n_neighbors, n - 1)
    indices, weights = [], []
    for start in range(0, n, chunk_size):
        sim = Z[start:start + chunk_size] @ Z.T
        rows = torch.arange(start, start + sim.shape[0], device=device)
        sim[torch.arange(sim.shape[0], device=device), rows] = -float("inf")
        values, idx = sim.topk(k, dim=1)
        indices.append(idx)
        weights.append(values.clamp_min(0))
    return torch.cat(indices), torch.cat(weights)


def propagate_labels(Z, codes, labeled, n_classes, *, n_neighbors, alpha, device,
                     max_iter=1000, tol=1e-6):
    """Spread labels over the symmetric kNN graph of the embeddings.

    Parameters
    ----------
    Z : array-like of shape (n, F)
        Embeddings of every row.
    codes : ndarray of shape (n,)
        Class index of each labeled row (ignored elsewhere).
    labeled : ndarray of shape (n,), bool
        Which rows carry a label.
    n_classes : int
    n_neighbors : int
        Neighbours per row in the graph.
    alpha : float in (0, 1)
        Weight of the neighbours against the row's own label in the
        diffusion; closer to 1 spreads labels further.
    device : torch.device
    max_iter : int, default=1000
        Most iterations of ``F <- alpha S F + (1 - alpha) Y``.
    tol : float, default=1e-6
        Stop when no entry of ``F`` (rows summing to at most 1) moves more.

    Returns
    -------
    distributions : ndarray of shape (n, n_classes)
        Each row normalised to sum to 1; a row that no label reaches is
        uniform.
    """
    Zt = _standardised_unit_rows(Z, device)
    n = Zt.shape[0]
    idx, w = knn_graph(Zt, n_neighbors, device=device)
    # W + W^T, with W[i, idx[i, j]] = w[i, j]: degrees, then S = D^-1/2 (W + W^T) D^-1/2
    degree = w.sum(dim=1).index_add(0, idx.reshape(-1), w.reshape(-1))
    inv_sqrt = degree.clamp_min(1e-12).rsqrt()
    flat_idx = idx.reshape(-1)

    def smooth(Fm):
        G = Fm * inv_sqrt[:, None]
        out = (w[..., None] * G[idx]).sum(dim=1)  # W G
        out.index_add_(0, flat_idx, (w[..., None] * G[:, None, :]).reshape(-1, n_classes))
        return out * inv_sqrt[:, None]

    Y = torch.zeros(n, n_classes, device=device)
    lab = torch.as_tensor(np.flatnonzero(labeled), device=device)
    Y[lab, torch.as_tensor(np.asarray(codes)[labeled], device=device)] = 1.0
    # every class seeds the same total mass, whatever its number of labels
    Y = Y / Y.sum(dim=0, keepdim=True).clamp_min(1.0)
    Fm = Y.clone()
    scale = Y.sum(dim=1).max().clamp_min(1e-12)
    for _ in range(max_iter):
        new = alpha * smooth(Fm) + (1 - alpha) * Y
        delta = (new - Fm).abs().max() / scale
        Fm = new
        if delta < tol:
            break
    total = Fm.sum(dim=1, keepdim=True)
    dist = torch.where(total > 0, Fm / total.clamp_min(1e-30),
                       torch.full_like(Fm, 1.0 / n_classes))
    return dist.cpu().double().numpy()


class PropagationProbe(LinearProbe):
    """Label propagation on the embeddings, then a linear head on every row.

    Parameters
    ----------
    n_neighbors : int
        Neighbours per row in the kNN graph.
    alpha : float
        Diffusion weight of the neighbours, in (0, 1).
    epochs, lr, batch_size, weight_decay, device, seed
        As for :class:`~skcueco.training.linear_probe.LinearProbe`.

    Attributes
    ----------
    module_ : LinearHead
        The trained layer, in eval mode on ``device``.
    classes_ : ndarray of shape (n_classes,)
    label_distributions_ : ndarray of shape (n_samples, n_classes)
        Propagated class distribution of every training row (the labeled rows
        included), as in :class:`sklearn.semi_supervised.LabelSpreading`.
    transduction_ : ndarray of shape (n_samples,)
        Label of every training row: its own where labeled, the arg-max of its
        distribution elsewhere.
    sample_weight_ : ndarray of shape (n_samples,)
        Weight of each row in the linear head's loss: 1 for labeled rows, the
        certainty ``1 - entropy / log(n_classes)`` of the others.
    """

    def __init__(self, *, n_neighbors, alpha, epochs, lr, batch_size, weight_decay,
                 device, seed):
        super().__init__(epochs=epochs, lr=lr, batch_size=batch_size,
                         weight_decay=weight_decay, device=device, seed=seed)
        self.n_neighbors = n_neighbors
        self.alpha = alpha

    def fit(self, Z, y, *, labeled, rows=None, augment=None):
        """Propagate the labels of the ``labeled`` rows of ``Z``, then train.

        Parameters
        ----------
        Z : array-like of shape (n_samples, n_features)
            Embeddings of every row, labeled or not.
        y : ndarray of shape (n_samples,)
            Labels; only the entries of labeled rows are read.
        labeled : ndarray of shape (n_samples,), bool
            Which rows carry a label.
        rows, augment
            As for :meth:`LinearProbe.fit`, over every row.

        Returns
        -------
        self : PropagationProbe
        """
        labeled = np.asarray(labeled, dtype=bool)
        classes, codes_lab = np.unique(y[labeled], return_inverse=True)
        n_classes = len(classes)
        codes = np.zeros(len(y), dtype=np.int64)
        codes[labeled] = codes_lab
        dist = propagate_labels(Z, codes, labeled, n_classes, n_neighbors=self.n_neighbors,
                                alpha=self.alpha, device=self.device)
        entropy = -(dist * np.log(np.clip(dist, 1e-12, None))).sum(axis=1)
        weight = np.clip(1.0 - entropy / np.log(n_classes), 0.0, 1.0)
        codes = np.where(labeled, codes, dist.argmax(axis=1))
        weight[labeled] = 1.0
        self.label_distributions_ = dist
        self.transduction_ = classes[codes]
        self.sample_weight_ = weight
        # every class has labeled rows, so the probe's classes_ are ``classes``
        return super().fit(Z, self.transduction_, rows=rows, augment=augment,
                           sample_weight=weight)
