"""Linear evaluation: a linear classifier trained on frozen backbone features."""

import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearHead(nn.Module):
    """Standardise the features with fixed statistics, then one linear layer.

    Parameters
    ----------
    features : torch.Tensor of shape (N, F)
        Training features; their mean and standard deviation are frozen into
        the head, which makes one learning rate suit any backbone's scale.
    n_classes : int
        Number of outputs.
    """

    def __init__(self, features, n_classes):
        super().__init__()
        features = features.float()
        self.register_buffer("mean", features.mean(dim=0))
        self.register_buffer("std", features.std(dim=0, unbiased=False).clamp_min(1e-6))
        self.linear = nn.Linear(features.shape[1], n_classes)

    def forward(self, h):
        return self.linear((h.float() - self.mean) / self.std)  # (N, n_classes)

    @torch.no_grad()
    def predict_logits(self, h):
        """Logits in float64 (CPU float32 matmuls round differently by batch
        size; float64 keeps predictions independent of batch composition)."""
        w, b = self.linear.weight.double(), self.linear.bias.double()
        return F.linear((h.double() - self.mean.double()) / self.std.double(), w, b)


def train_linear_head(head, features, targets, *, epochs, lr, batch_size, weight_decay,
                      generator, device, augment=None, X_rows=None, sample_weight=None):
    """Train ``head`` by SGD (momentum 0.9) with a per-step cosine schedule.

    Parameters
    ----------
    head : torch.nn.Module
        Maps features to logits; already on ``device``.
    features : torch.Tensor of shape (N, F)
        Frozen features of the labeled samples (CPU).
    targets : torch.Tensor of shape (N,)
        Class indices.
    epochs, lr, batch_size, weight_decay : see CueCoClassifier
    generator : torch.Generator
        CPU generator for the shuffling.
    device : torch.device
    augment : callable, default=None
        ``augment(rows)`` returns features of a fresh random view of the raw
        ``rows``; when given, features are recomputed every batch from
        ``X_rows`` instead of read from ``features``.
    X_rows : ndarray of shape (N, n_features), default=None
        Raw rows for ``augment``.
    sample_weight : torch.Tensor of shape (N,), default=None
        Weight of each sample's cross-entropy; each batch's loss is then the
        weighted mean (a batch of zero weights contributes no gradient).

    Returns
    -------
    head : torch.nn.Module
    """
    n = features.shape[0]
    batch_size = min(batch_size, n)
    steps = epochs * math.ceil(n / batch_size)
    optimizer = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9,
                                weight_decay=weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    features, targets = features.to(device), targets.to(device)
    if sample_weight is not None:
        sample_weight = sample_weight.to(device)
    head.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            idx_dev = idx.to(device)
            if augment is None:
                h = features[idx_dev]
            else:
                h = augment(torch.from_numpy(X_rows[idx.numpy()]))
            if sample_weight is None:
                loss = F.cross_entropy(head(h), targets[idx_dev])
            else:
                w = sample_weight[idx_dev]
                losses = F.cross_entropy(head(h), targets[idx_dev], reduction="none")
                loss = (w * losses).sum() / w.sum().clamp_min(1e-12)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return head
