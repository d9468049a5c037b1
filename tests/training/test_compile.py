"""torch.compile during training: the plumbing (eager backend, fast on CPU)."""

import numpy as np
import torch
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder

PARAMS = dict(max_epochs=2, batch_size=64, hidden_dim=64, projection_dim=32, queue_size=128,
              n_clusters=5, cluster_warmup=1, random_state=0, image_shape=None)


def test_compiled_training_matches_eager_and_publishes_plain_modules(monkeypatch):
    X = load_digits().data[:200]
    calls = []
    real_compile = torch.compile

    def spy(module, **kwargs):
        calls.append(kwargs)
        return real_compile(module, **kwargs)

    monkeypatch.setattr(torch, "compile", spy)
    plain = CueCoEmbedder(**PARAMS).fit(X)
    assert calls == []
    compiled = CueCoEmbedder(**PARAMS, compile="eager").fit(X)
    assert calls == [{"backend": "eager"}, {"backend": "eager"}]  # query and key backbones
    # the eager backend runs the traced graph with the same kernels
    np.testing.assert_array_equal(compiled.transform(X), plain.transform(X))
    assert not isinstance(compiled.encoder_, torch._dynamo.eval_frame.OptimizedModule)
    assert not any("_orig_mod" in key for key in compiled.encoder_.state_dict())
