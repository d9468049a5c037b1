"""The mixed precision a fit resolved is published (amp_), recorded and kept by save/load."""

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

import skcueco.training.device as device_module
from skcueco import CueCoEmbedder
from skcueco.callbacks import Checkpoint

FAST = dict(max_epochs=1, batch_size=32, hidden_dim=32, projection_dim=16, n_clusters=3,
            random_state=0, device="cpu")


@pytest.fixture(scope="module")
def X():
    return load_digits().data[:96].astype(np.float32)


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, False)])
def test_auto_publishes_what_the_processor_gets(X, monkeypatch, native, expected):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: native)
    est = CueCoEmbedder(**FAST).fit(X)
    assert est.amp_ == expected


@pytest.mark.parametrize("amp, expected", [(False, False), ("bf16", "bf16")])
def test_an_explicit_amp_wins(X, monkeypatch, amp, expected):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: not expected)
    assert CueCoEmbedder(**FAST, amp=amp).fit(X).amp_ == expected


def test_checkpoints_record_the_precision_and_files_keep_it(X, tmp_path):
    est = CueCoEmbedder(**FAST, amp="bf16", callbacks=[Checkpoint(tmp_path / "ck")]).fit(X)
    state = torch.load(Checkpoint.latest(tmp_path / "ck"), weights_only=True)
    assert state["run"]["amp"] == "bf16"
    est.save(tmp_path / "m.pt")
    loaded = CueCoEmbedder.load(tmp_path / "m.pt")
    assert loaded.amp_ == "bf16"
    assert (loaded.batch_size_, loaded.queue_size_) == (est.batch_size_, est.queue_size_)
