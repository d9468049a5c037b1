"""bf16 autocast on the CPU: when ``amp="auto"`` turns it on, and what stays float32."""

import warnings

import numpy as np
import pytest
import torch

from skcueco import CueCoEmbedder
from skcueco.nn.losses import (
    assign_clusters,
    cluster_pull,
    info_nce,
    proto_nce,
    sinkhorn_assign,
)
from skcueco.training import device as device_module
from skcueco.training.device import cpu_has_native_bf16
from skcueco.training.engine import Trainer, resolve_amp

CPU = torch.device("cpu")

NATIVE_BF16 = pytest.mark.skipif(
    not cpu_has_native_bf16(),
    reason="this processor has no native bf16 (AVX-512 BF16 or AMX): amp='auto' "
           "trains in float32 here and bf16 reproducibility is not promised",
)


def _fit(X, fast_params, **params):
    with warnings.catch_warnings():
        # tiny random data: the collapse check may speak, it is not tested here
        warnings.simplefilter("ignore")
        return CueCoEmbedder(**fast_params(max_epochs=2, **params)).fit(X)


# ----------------------------------------------------------- detection


def test_native_bf16_read_from_torch_capabilities(monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {"avx512_f": True, "avx512_bf16": False, "amx_bf16": False})
    assert cpu_has_native_bf16() is False
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {"avx512_bf16": False, "amx_bf16": True})
    assert cpu_has_native_bf16() is True
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": True})
    assert cpu_has_native_bf16() is True
    # Arm and other processors: no x86 bf16 flags, full precision
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {"architecture": "aarch64", "bf16": True})
    assert cpu_has_native_bf16() is False


def test_native_bf16_on_older_torch_uses_its_checks(monkeypatch):
    # releases without torch.cpu.get_capabilities expose per-feature checks
    monkeypatch.delattr(torch.cpu, "get_capabilities")
    monkeypatch.setattr(torch._C._cpu, "_is_avx512_bf16_supported", lambda: False,
                        raising=False)
    monkeypatch.setattr(torch._C._cpu, "_is_amx_tile_supported", lambda: False,
                        raising=False)
    assert cpu_has_native_bf16() is False
    monkeypatch.setattr(torch._C._cpu, "_is_avx512_bf16_supported", lambda: True)
    assert cpu_has_native_bf16() is True
    # neither check present: PyTorch cannot tell, so full precision
    monkeypatch.delattr(torch._C._cpu, "_is_avx512_bf16_supported")
    monkeypatch.delattr(torch._C._cpu, "_is_amx_tile_supported")
    assert cpu_has_native_bf16() is False


def test_native_bf16_agrees_with_torch_on_this_machine():
    caps = torch.cpu.get_capabilities()
    assert cpu_has_native_bf16() == bool(caps.get("avx512_bf16") or caps.get("amx_bf16"))


# ----------------------------------------------------------- resolution


def test_auto_is_full_precision_without_native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    assert resolve_amp("auto", CPU) is None
    assert Trainer(device="cpu", max_epochs=1, amp="auto").amp_dtype is None
    # explicit settings win
    assert resolve_amp("bf16", CPU) is torch.bfloat16
    assert resolve_amp(True, CPU) is torch.bfloat16
    assert resolve_amp(False, CPU) is None


def test_auto_is_bf16_with_native_bf16(monkeypatch):
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    assert resolve_amp("auto", CPU) is torch.bfloat16
    assert Trainer(device="cpu", max_epochs=1, amp="auto").amp_dtype is torch.bfloat16
    # explicit settings win
    assert resolve_amp(False, CPU) is None
    assert resolve_amp(None, CPU) is None
    assert resolve_amp("fp16", CPU) is torch.float16
    # the processor's bf16 says nothing about another device
    assert resolve_amp("auto", torch.device("meta")) is None


def test_estimator_auto_follows_the_processor(monkeypatch, fast_params, make_images):
    """``amp="auto"`` trains exactly as ``amp=False`` without native bf16 and
    exactly as ``amp="bf16"`` with it; the two differ (autocast is really on)."""
    X = make_images()
    full = _fit(X, fast_params, amp=False).transform(X)
    bf16 = _fit(X, fast_params, amp="bf16").transform(X)
    assert not np.array_equal(full, bf16)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: False)
    np.testing.assert_array_equal(_fit(X, fast_params, amp="auto").transform(X), full)
    monkeypatch.setattr(device_module, "cpu_has_native_bf16", lambda: True)
    np.testing.assert_array_equal(_fit(X, fast_params, amp="auto").transform(X), bf16)


# ----------------------------------------------------------- what stays float32


def _unit(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, d, generator=g), dim=1)


def test_losses_and_assignments_are_float32_inside_autocast():
    """Under a bf16 autocast the losses and cluster assignments compute in
    float32: on float32 inputs they equal, bitwise, their values without it."""
    q, k, queue, centroids = _unit(16, 8, 0), _unit(16, 8, 1), _unit(64, 8, 2), _unit(4, 8, 3)
    a = assign_clusters(k, centroids)

    def compute():
        return {
            "info_nce": info_nce(q, k, queue, 0.2),
            "info_nce_batch": info_nce(q, k, None, 0.2),
            "cluster_pull": cluster_pull(q, centroids, a),
            "proto_nce": proto_nce(q, centroids, a, 0.1),
            "assign": assign_clusters(k, centroids),
            "sinkhorn": sinkhorn_assign(k, centroids, 3, balance=0.5),
        }

    plain = compute()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = compute()
        # a bf16 matmul would round these logits: the test can tell
        assert (q @ queue.T).dtype is torch.bfloat16
    for name, value in plain.items():
        if value.is_floating_point():
            assert mixed[name].dtype is torch.float32, name
        assert torch.equal(mixed[name], value), name


def test_model_loss_is_float32_under_bf16_autocast():
    from skcueco.nn import CueCoModel

    torch.manual_seed(0)
    model = CueCoModel(torch.nn.Linear(12, 10), feature_dim=10, hidden_dim=16,
                       projection_dim=8, queue_size=32, n_clusters=3)
    model.init_centroids(_unit(24, 8, 4))
    v1, v2 = torch.randn(6, 12), torch.randn(6, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts, (k1, k2) = model.training_step(v1, v2, cluster_weight=1.0)
        assert model.backbone_q(v1).dtype is torch.bfloat16  # autocast is on
    assert loss.dtype is torch.float32
    assert parts["contrastive"].dtype is parts["clustering"].dtype is torch.float32
    assert k1.dtype is k2.dtype is torch.float32
    loss.backward()
    assert all(p.grad.dtype is torch.float32 for p in model.query_parameters()
               if p.grad is not None)


def test_bf16_fit_keeps_every_state_float32(fast_params, make_images):
    """After a bf16 fit the queue, centroids, key network (EMA) and query
    network and optimiser state are all float32, the embedding statistics
    float64."""
    X = make_images()
    est = _fit(X, fast_params, amp="bf16", queue_size=48)
    assert est.history_["loss"].map(np.isfinite).all()
    state = est._trained.train_state
    model = state["task"]["model"]
    floats = {k: v for k, v in model.items() if v.is_floating_point()}
    assert {"queue.keys", "centroids"} <= set(floats)
    assert any(k.startswith("backbone_k.") for k in floats)
    assert any(k.startswith("projector_k.") for k in floats)
    assert {k: v.dtype for k, v in floats.items() if v.dtype != torch.float32} == {}
    # training filled the queue: 2 steps of 64 keys moved its pointer
    assert int(model["queue.ptr"]) != 0
    for param_state in state["optimizer"]["state"].values():
        for v in param_state.values():
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                assert v.dtype is torch.float32
    for key in ("mean", "var"):  # summed in float64 by design
        assert state["embedding_stats"][key].dtype is torch.float64
    for module in (est.encoder_, est._trained.projector):
        assert all(p.dtype is torch.float32 for p in module.parameters())
        assert all(b.dtype is torch.float32 for b in module.buffers() if b.is_floating_point())
    assert est.cluster_centers_.dtype == np.float32
    assert est.transform(X).dtype == np.float32


# ----------------------------------------------------------- reproducibility


@NATIVE_BF16
def test_bf16_fit_is_bitwise_reproducible(fast_params, make_images):
    X = make_images()
    first = _fit(X, fast_params, amp="bf16")
    second = _fit(X, fast_params, amp="bf16")
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
    np.testing.assert_array_equal(first.cluster_centers_, second.cluster_centers_)
    assert first.history_["loss"].tolist() == second.history_["loss"].tolist()


@NATIVE_BF16
def test_bf16_fit_of_a_small_cnn_is_bitwise_reproducible(fast_params, make_images):
    X = make_images(shape=(16, 16, 3))
    params = dict(amp="auto", backbone="small_cnn")
    first, second = _fit(X, fast_params, **params), _fit(X, fast_params, **params)
    np.testing.assert_array_equal(first.transform(X), second.transform(X))
