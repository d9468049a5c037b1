"""A fitted model as one graph for other runtimes: ONNX and TorchScript.

:func:`export_embedder` builds one module from images (or feature vectors)
as the user stores them to the embeddings ``transform`` returns and the
clusters ``predict`` returns: the input conversion, the backbone in eval
mode, the standardisation, the projector and the cluster lookup of
``predict`` (the most similar centroid, or the vote of the most similar
prototypes, :func:`~skcueco.nn.vote.prototype_vote`). The
module is captured once with :func:`torch.export.export` (batch dimension
dynamic), which refuses Python control flow that depends on tensor values
instead of silently freezing one branch; the captured program is converted
to ONNX by PyTorch's exporter (``torch.onnx.export(dynamo=True)``, which
needs ``onnxscript``), or traced to TorchScript. The file is written
atomically (:func:`~skcueco.training.checkpoint.atomic_write`).
"""

import copy
import importlib.util
import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data.preprocess import relayout
from .data.validation import InputSpec
from .nn.vote import prototype_vote
from .training.checkpoint import atomic_write
from .training.trained import EMBEDDING_SPACES, embedding_of

EXPORT_FORMATS = ("onnx", "torchscript")
INPUT_LAYOUTS = ("NHWC", "NCHW", "NHW", "flat")
INPUT_DTYPES = ("uint8", "float32", "float64")
INPUT_NAME = "input"
OUTPUT_NAMES = ("embeddings", "clusters")
# the batch the graph is captured with: 0 and 1 are specialised by torch.export
_EXAMPLE_ROWS = 2


class InferenceGraph(nn.Module):
    """Input batch as stored to ``(embeddings, clusters)``, in one forward.

    Parameters
    ----------
    preprocess : Preprocess
        Flattened rows to the backbone's input (the trained conversion, in
        the exported layout).
    encoder, projector : torch.nn.Module
        Copies of the trained query backbone and projector, in eval mode.
    mean, scale : ndarray of shape (n_features_out,)
        The standardisation of the backbone features.
    prototypes : Tensor of shape (n_prototypes, projection_dim)
        Unit rows: a projection goes to the cluster its most similar ones
        vote for.
    owners : Tensor of shape (n_prototypes,)
        The cluster of each prototype (int64).
    space : {"features", "projection", "joint"}, default="features"
        The embeddings output, as ``transform`` returns them with this
        ``embedding_space`` (:func:`~skcueco.training.trained.embedding_of`).
    n_clusters : int, default=None
        Number of clusters; None: ``owners.max() + 1``.
    n_votes : int, default=1
        Prototypes that vote (1: the most similar one decides).
    """

    def __init__(self, preprocess, encoder, projector, mean, scale, prototypes, owners,
                 space="features", n_clusters=None, n_votes=1):
        super().__init__()
        if space not in EMBEDDING_SPACES:
            raise ValueError(f"space must be one of {EMBEDDING_SPACES}, got {space!r}.")
        self.space = space
        self.n_clusters = int(owners.max()) + 1 if n_clusters is None else int(n_clusters)
        self.n_votes = min(int(n_votes), int(prototypes.shape[0]))
        self.preprocess = preprocess
        self.encoder = encoder
        self.projector = projector
        self.register_buffer("mean", torch.as_tensor(mean, dtype=torch.float32).clone())
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32).clone())
        self.register_buffer("prototypes", prototypes.detach().float().clone())
        self.register_buffer("owners", owners.detach().long().clone())

    def forward(self, x):
        """Embeddings and cluster indices of a batch.

        Parameters
        ----------
        x : Tensor of shape (n_samples, ...)
            Images or vectors in the exported layout and dtype.

        Returns
        -------
        embeddings : Tensor of shape (n_samples, n_features_out), float32
            What ``transform`` returns in ``space``.
        clusters : Tensor of shape (n_samples,), int64
            What ``predict`` returns.
        """
        h = self.encoder(self.preprocess(x.flatten(1))).float()  # (N, F)
        z = F.normalize(self.projector(h).float(), dim=1)  # (N, D)
        clusters = prototype_vote(z, self.prototypes, self.owners, self.n_clusters,
                                  self.n_votes)  # (N,)
        return embedding_of(h, self.space, self.mean, self.scale, self.projector, z), clusters


def input_spec(spec, input_layout):
    """The layout of the exported input: ``(InputSpec, per-sample shape)``.

    Parameters
    ----------
    spec : InputSpec
        What the model was trained on.
    input_layout : {"NHWC", "NCHW", "NHW", "flat"} or None
        None: ``"flat"`` for vectors, else the layout of the training array
        (``"NHWC"`` or ``"NCHW"``).

    Returns
    -------
    rows_spec : InputSpec
        How a flattened input row is read.
    sample_shape : tuple of int
        The shape of one sample of the exported input.

    Raises
    ------
    ValueError
        If ``input_layout`` is unknown or does not suit the model.
    """
    if input_layout is None:
        input_layout = "flat" if spec.kind == "vector" else (
            "NHWC" if spec.channels_last else "NCHW")
    if input_layout not in INPUT_LAYOUTS:
        raise ValueError(
            f"input_layout must be one of {list(INPUT_LAYOUTS)} or None, got "
            f"{input_layout!r}.")
    if input_layout == "flat":
        return spec, (int(np.prod(spec.shape)),)
    if spec.kind == "vector":
        raise ValueError(
            f"input_layout={input_layout!r} describes images, but this model is "
            f"trained on feature vectors of {spec.shape[0]} values: use "
            "input_layout='flat' (or None).")
    c, h, w = spec.shape
    if input_layout == "NHW":
        if c != 1:
            raise ValueError(
                f"input_layout='NHW' holds one channel, but this model is trained on "
                f"images of {c} channels: use 'NHWC' or 'NCHW'.")
        return InputSpec("image", spec.shape, True), (h, w)
    if input_layout == "NHWC":
        return InputSpec("image", spec.shape, True), (h, w, c)
    return InputSpec("image", spec.shape, False), (c, h, w)


def inference_graph(trained, rows_spec, space="features"):
    """An :class:`InferenceGraph` of CPU float32 copies of the trained model.

    The fitted model is left as it is (its device, weights and modes).
    """
    def frozen(module):
        module = copy.deepcopy(module).to("cpu").float().eval()
        for p in module.parameters():
            p.requires_grad_(False)
        return module

    preprocess = relayout(trained.preprocess, rows_spec, output_channels_last=False)
    # the lookup of ``Trained.predict``: the centroids are the prototypes of
    # their own clusters unless the model keeps several per cluster
    prototypes = getattr(trained, "prototypes", None)
    n_clusters = trained.centroids.shape[0]
    if prototypes is None:
        prototypes = trained.centroids
        owners = torch.arange(n_clusters)
    else:
        owners = trained.prototype_owners
    return InferenceGraph(frozen(preprocess), frozen(trained.encoder),
                          frozen(trained.projector), trained.embedding_mean,
                          trained.embedding_scale, prototypes.cpu(), owners.cpu(),
                          space, n_clusters,
                          getattr(trained, "prototype_votes", 1)).eval()


def _example(sample_shape, dtype):
    """A batch of ``_EXAMPLE_ROWS`` inputs to capture the graph with."""
    generator = torch.Generator().manual_seed(0)
    shape = (_EXAMPLE_ROWS, *sample_shape)
    if dtype == torch.uint8:
        return torch.randint(0, 256, shape, generator=generator, dtype=torch.uint8)
    return torch.rand(shape, generator=generator, dtype=dtype)


def _reason(exc):
    """The first line of ``exc``, and the user code it names, if any."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    marker = "The following call raised this error:"
    if marker in text:
        where = text.split(marker, 1)[1].strip().split("\n\n", 1)[0]
        first += " (raised at " + " ".join(line.strip() for line in where.splitlines()) + ")"
    return f"{type(exc).__name__}: {first}"


def _dynamic_batch():
    return ({0: torch.export.Dim("batch", min=1)},)


def capture(graph, example, owner, backbone):
    """``torch.export.export`` of ``graph`` with a dynamic batch dimension.

    Raises
    ------
    ValueError
        If it cannot be captured, naming the part that fails: the backbone
        (its class, when it is a custom module) or, when the backbone alone
        is captured, the rest of the graph.
    """
    try:
        return torch.export.export(graph, (example,), dynamic_shapes=_dynamic_batch(),
                                   strict=False)
    except Exception as exc:  # noqa: BLE001 - diagnosed and re-raised below
        failure = exc
    # which part fails: the backbone alone, on its own input
    encoder = graph.encoder
    name = type(encoder).__name__
    part = (f"its backbone ({name}, a custom module)" if backbone is None
            else f"its backbone ({backbone!r}, {name})")
    with torch.no_grad():
        backbone_input = graph.preprocess(example.flatten(1))
    try:
        torch.export.export(encoder, (backbone_input,), dynamic_shapes=_dynamic_batch(),
                            strict=False)
    except Exception as exc:  # noqa: BLE001 - reported in the message
        raise ValueError(
            f"Cannot export this {owner}: {part} cannot be captured as a graph by "
            f"torch.export ({_reason(exc)}). An exported backbone must run the same "
            "operations for every input: Python control flow on tensor values (an "
            "`if` on a tensor, a loop over `.item()`) cannot be exported; write it "
            "with tensor operations (torch.where) or torch.cond, and keep the batch "
            "size free (no operation that fixes it)."
        ) from exc
    raise ValueError(
        f"Cannot export this {owner}: the graph around {part} (input conversion, "
        f"standardisation, projector, centroids) cannot be captured by torch.export "
        f"({_reason(failure)})."
    ) from failure


def _check_onnx_exporter():
    """Refuse ``format="onnx"`` early when PyTorch's exporter cannot run."""
    missing = [m for m in ("onnx", "onnxscript") if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(
            f"format='onnx' needs {' and '.join(missing)} (PyTorch's ONNX exporter): "
            "pip install 'skcueco[onnx]' (or pip install onnx onnxscript onnxruntime).")


def _onnx_bytes(program, example, owner):
    """The captured program as an ONNX model, serialised."""
    try:
        onnx_program = torch.onnx.export(
            program, (example,), input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: "batch"},), dynamo=True, verbose=False,
        )
        return onnx_program.model_proto.SerializeToString()
    except Exception as exc:
        raise ValueError(
            f"Cannot export this {owner} to ONNX: its graph was captured but PyTorch's "
            f"ONNX exporter cannot convert it ({_reason(exc)}). format='torchscript' "
            "may still work."
        ) from exc


def _torchscript_bytes(graph, example):
    """``graph`` traced to TorchScript, serialised.

    The graph has already been captured by torch.export, which refuses
    control flow on tensor values, so the trace records every path.
    """
    with warnings.catch_warnings():
        # PyTorch deprecates torch.jit in favour of torch.export; the format
        # is still what LibTorch (C++) loads
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        traced = torch.jit.trace(graph, (example,), check_trace=False)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
    return buffer.getvalue()


def export_embedder(trained, path, *, format, input_layout, input_dtype, owner,
                    space="features"):
    """Write ``trained`` as one ONNX or TorchScript graph to ``path``.

    See :meth:`skcueco.CueCoEmbedder.export` for the parameters.
    """
    if format not in EXPORT_FORMATS:
        raise ValueError(f"format must be one of {list(EXPORT_FORMATS)}, got {format!r}.")
    if input_dtype not in INPUT_DTYPES:
        raise ValueError(
            f"input_dtype must be one of {list(INPUT_DTYPES)}, got {input_dtype!r}.")
    rows_spec, sample_shape = input_spec(trained.spec, input_layout)
    if format == "onnx":
        _check_onnx_exporter()
    example = _example(sample_shape, getattr(torch, input_dtype))
    graph = inference_graph(trained, rows_spec, space)
    program = capture(graph, example, owner, trained.backbone)
    if format == "onnx":
        data = _onnx_bytes(program, example, owner)
    else:
        data = _torchscript_bytes(graph, example)
    atomic_write(path, lambda file: file.write(data))
