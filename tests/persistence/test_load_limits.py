"""``CueCoEmbedder.load`` checks a model file's metadata before it allocates
(docs/reliability.rst): metadata claiming a huge network is refused at no
memory cost, naming the first tensor that does not fit.

Files are crafted from real saved models: the payload is read with
``torch.load``, its metadata JSON edited and the payload written back.
Peak memory is measured in a child process (Linux ``/proc``), as in
``tests/data/test_hostile_files.py``.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from sklearn.datasets import load_digits

from skcueco import CueCoEmbedder

FAST = dict(max_epochs=1, batch_size=32, hidden_dim=32, projection_dim=16, queue_size=64,
            n_clusters=3, cluster_warmup=0, device="cpu", random_state=0)
MB = 1 << 20


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A saved image model (small CNN on 8x8 digits) and a vector model (MLP on 50 features)."""
    folder = tmp_path_factory.mktemp("models")
    X, _ = load_digits(return_X_y=True)
    CueCoEmbedder(**FAST).fit(X[:96]).save(folder / "image.pt")
    CueCoEmbedder(**FAST, backbone="mlp").fit(X[:96, :50]).save(folder / "vector.pt")
    return folder


def _craft(src, dst, edit):
    payload = torch.load(src, map_location="cpu", weights_only=True)
    meta = json.loads(payload["meta"])
    edit(meta)
    payload["meta"] = json.dumps(meta)
    torch.save(payload, dst)
    return dst


def _wide_projector(meta):
    meta["params"]["hidden_dim"] = 2_000_000  # a 2,000,000 x 128 first layer: 1 GB


def _many_features(meta):
    meta["input_spec"][1] = [1_000_000]  # a 256 x 1,000,000 first layer: 1 GB
    meta["n_features_in"] = 1_000_000
    meta["feature_names_in"] = None


CHILD = r"""
import json, sys
from skcueco import CueCoEmbedder

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024

results = []
for path in sys.argv[1:]:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # the peak (VmHWM) starts again from the current RSS
    baseline = status("VmRSS")
    try:
        CueCoEmbedder.load(path)
        error = None
    except Exception as exc:
        error = f"{type(exc).__name__}: {exc}"
    results.append({"peak": status("VmHWM") - baseline, "error": error})
print(json.dumps(results))
"""


def _peak_memory(paths):
    """For each file, the peak RSS that loading it adds, and the error it raised."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(128 * 1024))
    done = subprocess.run([sys.executable, "-c", CHILD, *map(str, paths)], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.splitlines()[-1])


@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"),
                    reason="peak RSS measured through Linux /proc")
def test_metadata_claiming_a_huge_network_is_refused_before_anything_is_built(files):
    wide = _craft(files / "image.pt", files / "wide.pt", _wide_projector)
    many = _craft(files / "vector.pt", files / "many.pt", _many_features)
    ok_image, ok_vector, wide_result, many_result = _peak_memory(
        [files / "image.pt", files / "vector.pt", wide, many])
    assert ok_image["error"] is None and ok_vector["error"] is None
    # building either network would take about 1 GB: refused at a few MB
    for result in (wide_result, many_result):
        assert result["peak"] < 200 * MB, result
    assert wide_result["error"].startswith(f"ValueError: {wide} holds metadata that does "
                                           "not fit its weights")
    assert ("hidden_dim=2000000" in wide_result["error"]
            and "projector tensor '0.weight' the shape (2000000, 128)" in wide_result["error"]
            and "(32, 128)" in wide_result["error"]), wide_result["error"]
    assert ("shape [1000000]" in many_result["error"]
            and "encoder tensor 'layers.0.weight' the shape (256, 1000000)"
            in many_result["error"] and "(256, 50)" in many_result["error"]), many_result


def test_the_first_tensor_that_does_not_fit_is_named(files, tmp_path):
    def narrow_output(meta):
        meta["params"]["projection_dim"] = 8

    path = _craft(files / "image.pt", tmp_path / "narrow.pt", narrow_output)
    with pytest.raises(ValueError, match=r"projector tensor '3\.weight' the shape \(8, 32\)"):
        CueCoEmbedder.load(path)

    def other_backbone(meta):
        meta["params"]["backbone"] = "mlp"

    path = _craft(files / "image.pt", tmp_path / "mlp.pt", other_backbone)
    # images are flattened before an MLP: its layers are the second module
    with pytest.raises(ValueError,
                       match=r"backbone='mlp'.*the encoder tensor '1\.layers\.0\.weight'"):
        CueCoEmbedder.load(path)

    payload = torch.load(files / "image.pt", weights_only=True)
    del payload["projector"]["1.running_var"]
    torch.save(payload, tmp_path / "missing.pt")
    with pytest.raises(ValueError, match=r"projector tensor '1\.running_var', which the file "
                                         "does not hold"):
        CueCoEmbedder.load(tmp_path / "missing.pt")

    payload = torch.load(files / "image.pt", weights_only=True)
    payload["encoder"] = [1, 2, 3]
    torch.save(payload, tmp_path / "list.pt")
    with pytest.raises(ValueError, match="encoder weights are not a mapping"):
        CueCoEmbedder.load(tmp_path / "list.pt")

