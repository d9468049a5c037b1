"""Checks of the GPU code paths, for a machine with CUDA.

Fits digits on the GPU with the defaults (bf16 autocast, channels-last),
then checks that ``predict``/``transform`` work there, that the pickled model
loads on a CPU-only process with a warning and gives the same embeddings
there (up to float tolerance), that ``save``/``load`` round-trips, that the
fp16 path with its gradient scaler trains, and that the training state was
moved off the GPU after ``fit``. With ``--compile`` it also trains once with
``torch.compile``.

Usage::

    python benchmarks/device_check.py [--compile]
"""

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
from sklearn.datasets import load_digits
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split

from skcueco import CueCoEmbedder

CPU_LOAD = """
import pickle, sys, warnings, numpy as np
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    est = pickle.load(open(sys.argv[1], "rb"))
X = np.load(sys.argv[2])
np.save(sys.argv[3], est.transform(X))
print("cpu process: device_ =", est.device_, "| warning:",
      [str(w.message)[:60] for w in caught if "not available" in str(w.message)])
"""


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args(argv)
    assert torch.cuda.is_available(), "this check needs a CUDA GPU"
    print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
    X, y = load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    params = dict(max_epochs=40, hidden_dim=512, cluster_warmup=10, random_state=0)

    t = time.perf_counter()
    est = CueCoEmbedder(**params).fit(Xtr)
    fit_s = time.perf_counter() - t
    probe = LogisticRegression(max_iter=3000).fit(est.transform(Xtr), ytr)
    print(f"digits 40 epochs on {est.device_}: fit {fit_s:.1f} s, probe accuracy "
          f"{probe.score(est.transform(Xte), yte):.4f}, clusters {np.bincount(est.predict(Xte))}")
    on_gpu = [k for k, v in _tensors(est._trained.train_state) if v.is_cuda]
    print("training-state tensors left on the GPU after fit:", len(on_gpu))

    with tempfile.TemporaryDirectory() as d:
        pkl, xs, out = (os.path.join(d, n) for n in ("m.pkl", "X.npy", "Z.npy"))
        with open(pkl, "wb") as f:
            pickle.dump(est, f)
        np.save(xs, Xte)
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
        subprocess.run([sys.executable, "-c", CPU_LOAD, pkl, xs, out], env=env, check=True)
        diff = np.abs(np.load(out) - est.transform(Xte)).max()
        print(f"GPU vs CPU-loaded embeddings: max abs diff {diff:.2e}")
        path = os.path.join(d, "m.pt")
        est.save(path)
        loaded = CueCoEmbedder.load(path)
        print("save/load on", loaded.device_, "equal:",
              np.array_equal(loaded.transform(Xte), est.transform(Xte)))

    fp16 = CueCoEmbedder(**dict(params, max_epochs=5), amp="fp16").fit(Xtr)
    print("fp16 + GradScaler, 5 epochs: losses", np.round(fp16.history_["loss"].values, 3))

    if args.compile:
        t = time.perf_counter()
        comp = CueCoEmbedder(**dict(params, max_epochs=3), compile=True).fit(Xtr)
        print(f"torch.compile, 3 epochs: {time.perf_counter() - t:.1f} s, seconds/epoch "
              f"{np.round(comp.history_['seconds'].values, 2)}")


def _tensors(obj, prefix=""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}")


if __name__ == "__main__":
    main()
