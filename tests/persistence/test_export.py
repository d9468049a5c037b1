"""CueCoEmbedder.export: one ONNX or TorchScript graph from stored images to
what ``transform`` and ``predict`` return, written atomically; the serving
snippet of docs/serving.rst runs as printed; the latency benchmark runs."""

import importlib.util
import json
import os
import re
import signal
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.exceptions import NotFittedError
from torch import nn

from skcueco import CueCoEmbedder

try:
    import resource
except ImportError:  # not on Windows
    resource = None

ROOT = Path(__file__).resolve().parents[2]
HAS_ONNX = all(importlib.util.find_spec(m) is not None
               for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(
    not HAS_ONNX, reason="format='onnx' is checked with onnxruntime: pip install "
    "'skcueco[onnx]' (onnx, onnxscript, onnxruntime)")
POSIX = pytest.mark.skipif(not hasattr(os, "fork") or resource is None,
                           reason="needs fork and resource limits")
ATOL = 1e-4
BATCHES = (1, 37)


def _session(path):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _load_torchscript(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        return torch.jit.load(str(path))


# -- three fitted models: grayscale CNN, RGB CNN (fitted channels-first), MLP --------
@pytest.fixture(scope="module")
def models(fast_params, make_images, make_vectors):
    gray = make_images((8, 8), dtype=np.float32)  # (n, H, W) in [0, 1]
    rgb = make_images((8, 8, 3)).transpose(0, 3, 1, 2).copy()  # (n, C, H, W) uint8
    vectors = make_vectors(d=5)
    return {
        "gray": (CueCoEmbedder(**fast_params()).fit(gray), gray),
        "rgb": (CueCoEmbedder(**fast_params()).fit(rgb), rgb),
        "mlp": (CueCoEmbedder(**fast_params()).fit(vectors), vectors),
    }


def _samples(which, n, layout, dtype, seed):
    """``n`` fresh samples for the ``which`` model, stored in ``layout`` and ``dtype``.

    Images as a user stores them: the grayscale model was fitted on float
    images in [0, 1], the RGB one on uint8 (given as uint8 or as floats from
    0 to 255); flat rows are images flattened in the layout of the training
    array, as ``transform`` reads 2-D input.
    """
    rng = np.random.RandomState(seed)
    if which == "mlp":
        return rng.normal(size=(n, 5)).astype(dtype)
    X = rng.randint(0, 256, size=(n, 8, 8, 1 if which == "gray" else 3))  # (n, H, W, C)
    if which == "gray":
        X = X / 255.0
    if layout == "NCHW" or (layout == "flat" and which == "rgb"):  # fitted channels-first
        X = X.transpose(0, 3, 1, 2)
    elif layout == "NHW":
        X = X[..., 0]
    if layout == "flat":
        X = X.reshape(n, -1)
    return np.ascontiguousarray(X, dtype=dtype)


# every layout of every model, each with one of the accepted dtypes
ONNX_CASES = [
    ("gray", "NHW", "float32"), ("gray", "NHWC", "float64"), ("gray", "NCHW", "float32"),
    ("gray", "flat", "float32"),
    ("rgb", "NHWC", "uint8"), ("rgb", None, "uint8"), ("rgb", "NCHW", "float64"),
    ("rgb", "flat", "float32"),
    ("mlp", None, "float64"), ("mlp", "flat", "float32"),
]


@needs_onnx
@pytest.mark.parametrize("which, layout, dtype", ONNX_CASES)
def test_onnx_equals_transform_and_predict(models, tmp_path, which, layout, dtype):
    est, _ = models[which]
    path = tmp_path / "model.onnx"
    est.export(path, input_layout=layout, input_dtype=dtype)
    session = _session(path)
    layout = layout or {"gray": "NHWC", "rgb": "NCHW", "mlp": "flat"}[which]
    for n in BATCHES:
        given = _samples(which, n, layout, dtype, seed=n)
        embeddings, clusters = session.run(["embeddings", "clusters"], {"input": given})
        Z, labels = est.transform(given), est.predict(given)  # from the same array
        assert embeddings.dtype == np.float32 and embeddings.shape == Z.shape
        assert_allclose(embeddings, Z, rtol=0, atol=ATOL)
        assert clusters.dtype == np.int64
        assert_array_equal(clusters, labels)


@needs_onnx
def test_onnx_graph_signature(models, tmp_path):
    """One input of the chosen layout and dtype, a free batch dimension, two outputs."""
    est, _ = models["rgb"]
    path = tmp_path / "model.onnx"
    est.export(path, input_layout="NHWC", input_dtype="uint8")
    session = _session(path)
    (given,) = session.get_inputs()
    assert (given.name, given.type, given.shape) == ("input", "tensor(uint8)", ["batch", 8, 8, 3])
    outputs = {o.name: (o.type, o.shape) for o in session.get_outputs()}
    n_out = est.transform(np.zeros((1, 3, 8, 8), np.float32)).shape[1]
    assert outputs == {"embeddings": ("tensor(float)", ["batch", n_out]),
                       "clusters": ("tensor(int64)", ["batch"])}
    # the default layouts follow the training array
    est.export(path)
    assert _session(path).get_inputs()[0].shape == ["batch", 3, 8, 8]
    assert _session(path).get_inputs()[0].type == "tensor(float)"


@pytest.mark.parametrize("which, layout, dtype", [
    ("gray", "NHW", "float32"), ("rgb", "NHWC", "uint8"), ("rgb", "flat", "float32"),
    ("mlp", None, "float32"),
])
def test_torchscript_equals_transform_and_predict(models, tmp_path, which, layout, dtype):
    est, _ = models[which]
    path = tmp_path / "model.pt"
    est.export(path, format="torchscript", input_layout=layout, input_dtype=dtype)
    module = _load_torchscript(path)
    for n in BATCHES:
        given = _samples(which, n, layout, dtype, seed=100 + n)
        with torch.no_grad():
            embeddings, clusters = module(torch.from_numpy(given))
        Z, labels = est.transform(given), est.predict(given)  # from the same array
        assert_allclose(embeddings.numpy(), Z, rtol=0, atol=ATOL)
        assert clusters.dtype == torch.int64
        assert_array_equal(clusters.numpy(), labels)


def test_export_leaves_the_fitted_model_as_it_was(models, tmp_path):
    est, X = models["gray"]
    Z = est.transform(X)
    weights = {k: v.clone() for k, v in est.encoder_.state_dict().items()}
    modes = [m.training for m in est.encoder_.modules()]
    est.export(tmp_path / "model.pt", format="torchscript")
    assert [m.training for m in est.encoder_.modules()] == modes
    for key, value in est.encoder_.state_dict().items():
        assert torch.equal(value, weights[key]), key
    assert next(est.encoder_.parameters()).requires_grad
    assert_array_equal(est.transform(X), Z)


# -- what cannot be exported ---------------------------------------------------------
def test_unfitted_estimator_raises_not_fitted(tmp_path):
    with pytest.raises(NotFittedError):
        CueCoEmbedder().export(tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("kwargs, which, message", [
    ({"format": "tflite"}, "gray", r"format must be one of \['onnx', 'torchscript'\]"),
    ({"format": "ONNX"}, "gray", "got 'ONNX'"),
    ({"input_layout": "nhwc"}, "gray", r"input_layout must be one of \['NHWC'"),
    ({"input_layout": "NHW"}, "rgb", "images of 3 channels"),
    ({"input_layout": "NHWC"}, "mlp", "feature vectors of 5 values"),
    ({"input_dtype": "int16"}, "gray", r"input_dtype must be one of \['uint8'"),
])
def test_bad_arguments_raise_value_error_and_write_nothing(models, tmp_path, kwargs,
                                                           which, message):
    est, _ = models[which]
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match=message):
        est.export(path, **kwargs)
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_onnx_without_onnxscript_raises_import_error_naming_the_extra(models, tmp_path,
                                                                      monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxscript" else find_spec(name, *a))
    est, _ = models["gray"]
    with pytest.raises(ImportError, match=r"needs onnxscript .*skcueco\[onnx\]"):
        est.export(tmp_path / "model.onnx")
    assert not any(tmp_path.iterdir())


class Moody(nn.Module):
    """A backbone whose forward branches on a tensor's value."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)

    def forward(self, x):
        h = self.conv(x).amax(dim=(2, 3))
        if h.mean() > 0:  # data-dependent: a trace would keep one branch
            return h
        return -h


@pytest.mark.parametrize("format", [
    pytest.param("onnx", marks=needs_onnx), "torchscript"])
def test_backbone_with_data_dependent_control_flow_is_refused_by_name(
        fast_params, make_images, tmp_path, format):
    X = make_images((8, 8))
    est = CueCoEmbedder(**fast_params(backbone=Moody())).fit(X)
    path = tmp_path / "model.bin"
    path.write_bytes(b"previous")
    with pytest.raises(ValueError, match=r"its backbone \(Moody, a custom module\)") as info:
        est.export(path, format=format)
    message = str(info.value)
    assert "Python control flow on tensor values" in message
    assert "if h.mean() > 0" in message  # the line that cannot be exported
    assert path.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["model.bin"]


@POSIX
@needs_onnx
def test_full_disk_keeps_the_previous_file_and_leaves_no_temporary_file(models, tmp_path):
    est, _ = models["gray"]
    path = tmp_path / "model.onnx"
    est.export(path)
    previous = path.read_bytes()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: a "full disk", no file may grow past a tenth of the model
        status = 0
        try:
            os.close(read_fd)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            limit = len(previous) // 10
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
            try:
                est.export(path, input_layout="NHW", input_dtype="uint8")
                result = ["no error", ""]
            except BaseException as exc:  # noqa: BLE001 - told to the parent
                result = [type(exc).__name__, str(exc)]
            with os.fdopen(write_fd, "w") as pipe:
                pipe.write(json.dumps(result))
        finally:
            os._exit(status)
    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        kind, message = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert kind == "OSError", message
    assert str(path) in message and "left as it was" in message
    assert path.read_bytes() == previous
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


# -- the documentation and the benchmark -------------------------------------------------
def _python_blocks(text):
    blocks = []
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:[ ]{4}.*\n|\n)+)", text):
        blocks.append("\n".join(line[4:] for line in match.group(1).splitlines()))
    return blocks


@needs_onnx
def test_serving_page_snippets_run_as_printed(tmp_path, monkeypatch, capsys):
    """The export snippet, then the onnxruntime snippet that knows nothing of skcueco."""
    blocks = _python_blocks((ROOT / "docs" / "serving.rst").read_text(encoding="utf-8"))
    assert len(blocks) == 2
    export, serve = blocks
    assert "est.export(" in export and "import skcueco" not in serve
    assert "from skcueco" not in serve and "onnxruntime" in serve
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__serving__"}
    exec(compile(re.sub(r"max_epochs=\d+", "max_epochs=1", export), "serving.rst", "exec"),
         namespace)
    images = namespace["images"]
    serving = {"__name__": "__serving__", "images": images}  # the data, nothing of skcueco
    exec(compile(serve, "serving.rst", "exec"), serving)
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[('input', ['batch', 8, 8], 'tensor(float)')]"  # as the page shows it
    assert out[1].startswith("(5, 256) [")
    est = namespace["est"]
    assert_allclose(serving["embeddings"], est.transform(images[:5]), rtol=0, atol=ATOL)
    assert_array_equal(serving["clusters"], est.predict(images[:5]))
    assert out[1] == f"(5, 256) {est.predict(images[:5])}"


def test_latency_benchmark_quick_mode(capsys):
    spec = importlib.util.spec_from_file_location(
        "export_latency", ROOT / "benchmarks" / "export_latency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    result = module.main(["--quick"])
    out = capsys.readouterr().out
    assert "transform" in out and "1 image(s)" in out and "256 image(s)" in out
    sizes, seconds = result["sizes"], result["seconds"]
    assert all(seconds[side, n] > 0 for side in ("transform", "torchscript") for n in (1, 256))
    assert set(sizes) >= {"save(training_state=True)", "save(training_state=False)",
                          "torchscript"}
    # what each file holds: the training state weighs more than the inference weights
    assert sizes["save(training_state=True)"] > sizes["save(training_state=False)"]
    if HAS_ONNX:
        assert "onnxruntime" in out
        assert 0 < sizes["onnx"] < sizes["save(training_state=True)"]
