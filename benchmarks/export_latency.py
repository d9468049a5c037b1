"""Latency of an exported model (onnxruntime, TorchScript) against ``transform``, and file sizes.

Fits a small-CNN ``CueCoEmbedder`` on synthetic grayscale shapes (uint8,
``--image-size`` pixels, ``--epochs`` epochs, the default settings
otherwise), then:

- writes it with ``save(training_state=True)``, ``save(training_state=False)``
  and ``export`` (ONNX and TorchScript, input ``(n, H, W)`` uint8) and prints
  each file's size;
- times 1 and 256 images through ``transform`` (``(n, H, W)`` uint8, the
  estimator's validation included), onnxruntime's ``session.run`` and the
  TorchScript module's forward. Each round calls every side ``--repeats``
  times, in an order that alternates from round to round (A B C, then C B
  A), so that load from other processes hits all sides alike; the median
  over ``--rounds`` rounds of the seconds per call is printed with its
  spread (min-max). Every side uses ``--threads`` threads (torch's
  intra-op threads; onnxruntime's ``intra_op_num_threads``).

The figures in docs/serving.rst::

    nice -n 10 python benchmarks/export_latency.py --threads 1

Seconds on a CPU, as the tests run it so the script cannot rot::

    python benchmarks/export_latency.py --quick
"""

import argparse
import importlib.util
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np
import torch

from skcueco import CueCoEmbedder
from skcueco._synthetic import make_shapes

BATCHES = (1, 256)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--n-samples", type=int, default=2000, help="training images")
    p.add_argument("--image-size", type=int, default=28, help="height = width")
    p.add_argument("--epochs", type=int, default=2, help="training epochs")
    p.add_argument("--rounds", type=int, default=15, help="timed rounds")
    p.add_argument("--repeats", type=int, default=20, help="calls per round and side")
    p.add_argument("--threads", type=int, default=torch.get_num_threads(),
                   help="threads of every side")
    p.add_argument("--quick", action="store_true",
                   help="tiny model and data, few rounds: checks that the script runs")
    args = p.parse_args(argv)
    if args.quick:
        args.n_samples, args.image_size, args.epochs = 300, 8, 1
        args.rounds, args.repeats = 2, 2
    return args


def fit_model(args):
    X, _ = make_shapes(args.n_samples, image_size=args.image_size, random_state=0)
    params = dict(backbone="small_cnn", max_epochs=args.epochs, device="cpu", random_state=0)
    if args.quick:
        params.update(hidden_dim=32, projection_dim=16, batch_size=32, n_clusters=4)
    return CueCoEmbedder(**params).fit(X), X


def file_sizes(est, folder, has_onnx):
    """Bytes of each file the fitted model can be written to."""
    paths = {
        "save(training_state=True)": ("model.pt", lambda p: est.save(p)),
        "save(training_state=False)": ("model_inference.pt",
                                       lambda p: est.save(p, training_state=False)),
        "torchscript": ("model_ts.pt", lambda p: est.export(
            p, format="torchscript", input_layout="NHW", input_dtype="uint8")),
    }
    if has_onnx:
        paths["onnx"] = ("model.onnx", lambda p: est.export(
            p, input_layout="NHW", input_dtype="uint8"))
    sizes = {}
    for what, (name, write) in paths.items():
        path = os.path.join(folder, name)
        write(path)
        sizes[what] = os.path.getsize(path)
    return sizes


def load_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        return torch.jit.load(path).eval()


def time_sides(sides, rounds, repeats):
    """Median and spread of seconds per call of each side, rounds interleaved."""
    names = list(sides)
    for fn in sides.values():
        # warm-up: first-call allocations and kernel choices, and TorchScript's
        # profiling executor, which optimises the graph over its first calls
        for _ in range(3):
            fn()
    seconds = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            fn = sides[name]
            start = time.perf_counter()
            for _ in range(repeats):
                fn()
            seconds[name].append((time.perf_counter() - start) / repeats)
    return seconds


def _ms(values):
    med = statistics.median(values) * 1e3
    return (f"{med:9.3f} ms (spread {min(values) * 1e3:.3f}-{max(values) * 1e3:.3f})", med)


def main(argv=None):
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    has_onnx = all(importlib.util.find_spec(m) is not None
                   for m in ("onnx", "onnxscript", "onnxruntime"))
    est, X = fit_model(args)
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{args.threads} thread(s); small_cnn, {args.n_samples} images of "
          f"{args.image_size}x{args.image_size} (uint8), {args.epochs} epoch(s)")
    result = {"sizes": {}, "seconds": {}}
    with tempfile.TemporaryDirectory() as folder:
        sizes = file_sizes(est, folder, has_onnx)
        result["sizes"] = sizes
        for what, size in sizes.items():
            print(f"{what:28s} {size / 1e6:8.2f} MB ({size} bytes)")
        module = load_torchscript(os.path.join(folder, "model_ts.pt"))
        session = None
        if has_onnx:
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.intra_op_num_threads = args.threads
            options.inter_op_num_threads = 1
            session = ort.InferenceSession(os.path.join(folder, "model.onnx"), options,
                                           providers=["CPUExecutionProvider"])
        else:
            print("onnxruntime not installed: pip install 'skcueco[onnx]' to time it")
        for n in BATCHES:
            images = np.ascontiguousarray(X[np.arange(n) % len(X)])  # (n, H, W) uint8
            batch = torch.from_numpy(images)
            sides = {"transform": lambda: est.transform(images)}
            if session is not None:
                sides["onnxruntime"] = lambda: session.run(None, {"input": images})
            sides["torchscript"] = lambda: _run_torchscript(module, batch)
            seconds = time_sides(sides, args.rounds, args.repeats)
            base = statistics.median(seconds["transform"])
            print(f"latency, {n} image(s), median of {args.rounds} rounds "
                  f"x {args.repeats} calls:")
            for name, values in seconds.items():
                text, med = _ms(values)
                ratio = base / statistics.median(values)
                print(f"  {name:12s} {text}  ({ratio:.2f}x transform's speed)")
                result["seconds"][name, n] = med / 1e3
    sys.stdout.flush()
    return result


@torch.inference_mode()
def _run_torchscript(module, batch):
    return module(batch)


if __name__ == "__main__":
    main()
