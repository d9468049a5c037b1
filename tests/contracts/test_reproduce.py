"""benchmarks/reproduce.py: the smoke run writes the table and resumes.

The script runs in-process on generated CIFAR and ImageNet-100 files (its
``--smoke`` mode); a second run must skip every finished row, lost rows must
come back from the saved models without training, and a pretraining stopped
half-way must continue from its checkpoint to the same model as one that was
never stopped.
"""

import csv
import importlib.util
from pathlib import Path

import numpy as np
import pytest
from numpy.testing import assert_array_equal

from skcueco import CueCoEmbedder
from skcueco.callbacks import Callback

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "reproduce.py"


@pytest.fixture(scope="module")
def reproduce():
    spec = importlib.util.spec_from_file_location("reproduce", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _read(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_smoke_run_writes_the_table_and_resumes(reproduce, tmp_path, capsys, monkeypatch):
    rows = reproduce.main(["--smoke", "--out", str(tmp_path)])
    table = _read(tmp_path / "results.csv")
    assert [(r["dataset"], r["method"]) for r in table] == [
        (d, m) for d in ("cifar10", "cifar100", "imagenet100") for m in ("cueco", "mocov2")]
    assert table == [{k: str(v) for k, v in r.items()} for r in rows]
    for r in table:
        assert 0 <= float(r["linear_top1"]) <= 100 and 0 <= float(r["knn_top1"]) <= 100
        assert (r["epochs"], r["batch_size"], r["run"]) == ("2", "32", "smoke")
        assert r["device"].startswith("cpu")
    assert [r["paper_linear_top1"] for r in table] == [
        "91.4", "92.94", "68.56", "", "78.65", ""]
    # the generated CIFAR-10 classes have one colour each: linear evaluation sees it
    assert float(table[0]["linear_top1"]) > 30
    markdown = (tmp_path / "results.md").read_text()
    for text in ("| cifar10 | cueco |", "| 91.4 |", "| 68.56 |", "| 78.65 |", "not measured here",
                 "2 ep, batch 32, linear 5 ep + aug, kNN k=200 t=0.1", "| smoke |"):
        assert text in markdown
    assert len(list((tmp_path / "models").glob("*.pt"))) == 6

    # a second run finds every row done
    capsys.readouterr()
    assert reproduce.main(["--smoke", "--out", str(tmp_path)]) == table
    assert capsys.readouterr().out.count("done, skipped") == 6

    # rows lost, models kept: evaluated again from the saved models, not retrained
    (tmp_path / "results.csv").unlink()

    def no_training(self, *args, **kwargs):
        raise AssertionError("a saved model was trained again")

    monkeypatch.setattr(CueCoEmbedder, "fit", no_training)
    again = reproduce.main(["--smoke", "--out", str(tmp_path), "--datasets", "cifar10"])
    for old, new in zip(table[:2], again):
        assert (old["linear_top1"], old["knn_top1"]) == (str(new["linear_top1"]),
                                                         str(new["knn_top1"]))


class _StopAfterSecondEpoch(Callback):
    def on_epoch_end(self, trainer, epoch, logs):
        if epoch == 1:
            raise KeyboardInterrupt  # as Ctrl-C would


def test_half_done_pretraining_resumes_from_its_checkpoint(reproduce, tmp_path, fast_params,
                                                           make_images, capsys):
    X = make_images((8, 8, 3))
    params = fast_params(max_epochs=3, cluster_warmup=1)
    with pytest.warns(RuntimeWarning, match="interrupted"):
        with pytest.raises(reproduce.Interrupted, match="run again"):
            reproduce.pretrain(X, params, tmp_path, "run", checkpoint_every=1,
                               callbacks=[_StopAfterSecondEpoch()])
    assert (tmp_path / "run-checkpoints" / "epoch-0002.pt").exists()
    assert not (tmp_path / "run.pt").exists()
    capsys.readouterr()
    resumed = reproduce.pretrain(X, params, tmp_path, "run", checkpoint_every=1)
    assert "resuming run from" in capsys.readouterr().out
    assert resumed.n_iter_ == 3 and (tmp_path / "run.pt").exists()
    straight = reproduce.pretrain(X, params, tmp_path, "straight", checkpoint_every=1)
    assert_array_equal(resumed.transform(X), straight.transform(X))
    assert_array_equal(resumed.history_["loss"], straight.history_["loss"])
    # a finished pretraining is loaded, not trained again
    loaded = reproduce.pretrain(X, params, tmp_path, "run")
    assert_array_equal(loaded.transform(X), resumed.transform(X))
    assert np.isfinite(loaded.transform(X)).all()
