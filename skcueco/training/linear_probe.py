"""The linear-evaluation head as a small estimator: fit on frozen features, predict.

It has the methods of a scikit-learn classifier (``fit``, ``predict``,
``predict_proba``, ``decision_function``, ``classes_``), so
:class:`~skcueco.CueCoClassifier` treats it like any other head, but it is
trained in PyTorch on the embedder's device (:mod:`skcueco.nn.linear_eval`).
"""

import numpy as np
import torch

from ..data.loaders import make_loader
from ..nn.linear_eval import LinearHead, train_linear_head


class LinearProbe:
    """A linear layer on standardised frozen features, trained by SGD.

    Parameters
    ----------
    epochs, lr, batch_size, weight_decay : see ``CueCoClassifier``'s ``head_*``
    device : torch.device
    seed : int
        Seeds the initial weights and the shuffling.

    Attributes
    ----------
    module_ : LinearHead
        The trained layer, in eval mode on ``device``.
    classes_ : ndarray of shape (n_classes,)
    """

    def __init__(self, *, epochs, lr, batch_size, weight_decay, device, seed):
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.weight_decay = weight_decay
        self.device = device
        self.seed = seed

    def fit(self, Z, y, *, rows=None, augment=None, sample_weight=None):
        """Train on features ``Z`` ``(n, F)`` and labels ``y``.

        ``augment(rows_batch)``, when given, returns features of fresh random
        views of ``rows[idx]`` on the device, used instead of ``Z`` in training
        (the frozen standardisation still comes from ``Z``). ``sample_weight``
        ``(n,)``, when given, weighs each row's cross-entropy (each batch's
        loss is the weighted mean).
        """
        self.classes_, codes = np.unique(y, return_inverse=True)
        features = torch.from_numpy(np.asarray(Z, dtype=np.float32))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            head = LinearHead(features, len(self.classes_))
        head.to(self.device)
        train_linear_head(
            head, features, torch.from_numpy(codes), X_rows=rows, augment=augment,
            epochs=self.epochs, lr=self.lr, batch_size=self.batch_size,
            weight_decay=self.weight_decay, generator=torch.Generator().manual_seed(self.seed),
            device=self.device, sample_weight=None if sample_weight is None else
            torch.as_tensor(np.asarray(sample_weight, dtype=np.float32)),
        )
        self.module_ = head.eval()
        return self

    @torch.no_grad()
    def _logits(self, Z):
        out = []
        loader = make_loader(np.asarray(Z, dtype=np.float32),
                             batch_size=max(self.batch_size, 1024), shuffle=False)
        for batch in loader:
            out.append(self.module_.predict_logits(batch.to(self.device)).cpu())
        return torch.cat(out)

    def predict(self, Z):
        """Class labels of features ``Z``."""
        return self.classes_[self._logits(Z).argmax(dim=1).numpy()]

    def predict_proba(self, Z):
        """Softmax of the logits, columns in the order of ``classes_``."""
        return torch.softmax(self._logits(Z), dim=1).numpy()

    def decision_function(self, Z):
        """Logits; for two classes the score of ``classes_[1]`` over ``classes_[0]``."""
        logits = self._logits(Z).numpy()
        if logits.shape[1] == 2:
            return logits[:, 1] - logits[:, 0]
        return logits
