"""Training and inference throughput of CueCoEmbedder against bare PyTorch.

Every comparison alternates its two sides over ``--rounds`` rounds (A then B,
then B then A, ...) in one process, so that load from other processes and
clock changes hit both alike, and prints each side's median with its spread
(min-max over the rounds) and the ratio of the medians. Whole calls are timed
as a user sees them: ``fit`` from the call to its return (k-means
initialisation and the first epoch included), ``transform`` of the whole
array.

Modes (default: ``fit`` and ``transform``):

- default: ``CueCoEmbedder.fit`` against a minimal hand-written MoCo v2 loop
  with the same backbone, batch size, queue, augmentations, precision and
  memory format (goal: ratio >= 0.9); ``CueCoEmbedder.transform`` against a
  bare ``model.eval()`` forward over channels-last batches (goal >= 0.95);
  peak memory. With ``--per-image`` also the bare loop with this library's
  augmentations applied image by image, as per-image dataset transforms
  are. With ``--lightly-style`` also MoCo v2 as written with lightly: PIL
  images through ``MoCoV2Transform`` in a ``DataLoader``, lightly's head,
  memory-bank loss and momentum update (torchvision's transforms and this
  library's queue when lightly is not installed; goal: ``fit`` >= 1.8x its
  images per second).
- ``--queue A B``: seconds per training step of the bare MoCo v2 loop with a
  queue of ``A`` and of ``B`` keys (goal: ``B`` = 65536 costs at most 20 %
  more than ``A`` = 4096).
- ``--latency``: seconds per ``transform`` of 1 and of 10 images against a
  bare forward of the same rows (goal: at most 2x).
- ``--layout``: ``fit`` and ``transform`` with ``channels_last=True`` against
  ``channels_last=False`` (what ``channels_last="auto"`` picks per device).
- ``--batch-sizes A B``: whole ``fit`` calls at ``batch_size=A`` against
  ``B``, same epochs (what ``batch_size="auto"`` costs on small images).
- ``--cpu-precision``: the processor's bf16 support as PyTorch reports it,
  whole ``fit`` calls with ``amp="bf16"`` against ``amp=False`` for each
  backbone of ``--precision-backbones``, ``transform`` under a bf16 autocast
  against float32 (speed and largest embedding difference), and the linear
  probe and kNN accuracy of both ``transform`` precisions on 32 px RGB
  shapes (``--quality-samples``, ``--quality-epochs``).
- ``--cluster-targets``: whole ``fit`` calls with ``cluster_targets="graph"``
  against the default ``"centroids"`` on the scikit-learn digits (the
  estimator's defaults otherwise, ``--epochs``; ``--centred-digits`` also on
  the digits centred in 28x28 frames; ``--large-set N`` also on ``N``
  generated 28x28 shapes, more than the graph read-out reads), in seconds
  (goal: at most 1.3x).
- ``--readout-views``: whole ``fit`` calls with the read-out's views of the
  images read (the default on images of 16 pixels and more) against the
  same fits without them (``READOUT_VIEWS`` set to 0 for the call), on the
  digits centred in 28x28 frames and on 3,000 generated RGB scenes of 32
  pixels (``backbone="small_cnn"``), ``--epochs`` each; the estimator's
  defaults otherwise (goal: at most 1.1x, what runs once after training).
- ``--folder``: ``fit`` from a folder of ``--n-samples`` JPEG files of
  ``--file-size`` pixels decoded to ``--image-size``, with the decoded-image
  cache (``ImageSource(cache="auto")``) and without it, against ``fit`` from
  the same pixels as an in-memory uint8 array; images per second of the
  epochs after the first (goal with the cache: >= 0.9 of the array) and of
  whole calls.
- ``--compare-to PATH``: ``fit`` of the skcueco source tree at ``PATH`` (e.g.
  a ``git worktree`` of an older commit) against this one, each round in a
  fresh process per side.

Examples
--------
GPU, the reference setting (ResNet-18 at 32x32, batch 512, bf16, channels-last)::

    python benchmarks/throughput.py --device cuda --backbone resnet18 \\
        --batch-size 512 --n-samples 51200 --epochs 3 --amp bf16

CPU, small CNN on 32 px RGB, against an older checkout::

    git worktree add /tmp/base HEAD~1
    python benchmarks/throughput.py --device cpu --backbone small_cnn \\
        --batch-size 256 --n-samples 2048 --epochs 1 --rounds 5 --compare-to /tmp/base

Fits of a quality data set, with an option of the estimator set on both
sides (here ``cluster_negatives="drop"``, which leaves out negatives in the
second of the 2 epochs; ``all.npz`` is an image set of one's own)::

    python benchmarks/throughput.py --device cpu --backbone auto --threads 1 \\
        --dataset all.npz --batch-size 256 --epochs 2 --rounds 3 --no-transform \\
        --set cluster_negatives=drop --set queue_size=4096 --compare-to /tmp/base

CPU precision and the decoded-image cache, as measured for docs/training.rst
and docs/inputs.rst::

    python benchmarks/throughput.py --cpu-precision --device cpu \
        --batch-size 256 --n-samples 2048 --epochs 2 --rounds 3
    python benchmarks/throughput.py --folder --device cpu --backbone small_cnn \
        --batch-size 256 --n-samples 1000 --epochs 3 --rounds 3

Seconds on a CPU, as CI runs it so the script cannot rot::

    python benchmarks/throughput.py --quick
"""

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from skcueco import CueCoEmbedder
from skcueco.augment import make_augmentation
from skcueco.backbones import build_backbone
from skcueco.callbacks import Callback
from skcueco.nn import KeyQueue, ProjectionHead, ema_update, info_nce


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    p.add_argument("--backbone", default="auto",
                   help="CueCoEmbedder backbone name: auto, small_cnn, resnet18, resnet50")
    p.add_argument("--image-size", type=int, default=32, help="height = width of the RGB images")
    p.add_argument("--batch-size", type=int, default=512, help="training batch size")
    p.add_argument("--n-samples", type=int, default=51200, help="synthetic uint8 images")
    p.add_argument("--epochs", type=int, default=3, help="epochs per timed fit call")
    p.add_argument("--queue-size", type=int, default=4096, help="MoCo key queue length")
    p.add_argument("--amp", default="auto", help="auto, bf16, fp16 or off")
    p.add_argument("--channels-last", default="auto", choices=["auto", "on", "off"],
                   help="memory format of both sides; auto: CueCoEmbedder's rule")
    p.add_argument("--rounds", type=int, default=3,
                   help="rounds; each runs both sides once, in alternating order")
    p.add_argument("--steps", type=int, default=10, help="timed steps per round (--queue)")
    p.add_argument("--repeats", type=int, default=50,
                   help="calls per round and side (--latency)")
    p.add_argument("--queue", type=int, nargs=2, metavar=("A", "B"), default=None,
                   help="compare training steps with queues of A and B keys")
    p.add_argument("--batch-sizes", type=int, nargs=2, metavar=("A", "B"), default=None,
                   help="compare whole fit calls at batch sizes A and B")
    p.add_argument("--latency", action="store_true",
                   help="transform of 1 and 10 images against a bare forward")
    p.add_argument("--layout", action="store_true",
                   help="fit and transform channels-last against contiguous NCHW")
    p.add_argument("--progress", action="store_true",
                   help="fit with the per-batch progress bar (verbose=2) against no bar")
    p.add_argument("--per-image", action="store_true",
                   help="default mode: also time the loop that augments image by image "
                        "(per-image dataset transforms, as lightly and torchvision do)")
    p.add_argument("--lightly-style", action="store_true",
                   help="default mode: also time MoCo v2 as written with lightly (PIL "
                        "transforms per image in a DataLoader; lightly's own modules when "
                        "it is installed, torchvision's transforms otherwise)")
    p.add_argument("--cluster-targets", action="store_true",
                   help="fit seconds with cluster_targets='graph' against 'centroids' (digits)")
    p.add_argument("--readout-views", action="store_true",
                   help="fit seconds with the read-out's views against without (28x28, 32x32)")
    p.add_argument("--centred-digits", action="store_true",
                   help="with --cluster-targets: the digits centred in 28x28 frames too")
    p.add_argument("--large-set", type=int, default=0, metavar="N",
                   help="with --cluster-targets: N generated 28x28 shapes too")
    p.add_argument("--cpu-precision", action="store_true",
                   help="bf16 against float32 fit and transform on the CPU, and the "
                        "probe/kNN change of bf16 transform")
    p.add_argument("--precision-backbones", nargs="+", default=["small_cnn", "resnet18"],
                   help="--cpu-precision: backbones timed")
    p.add_argument("--quality-samples", type=int, default=3072,
                   help="--cpu-precision: shapes images (2/3 train, 1/3 test); 0 skips")
    p.add_argument("--quality-epochs", type=int, default=10,
                   help="--cpu-precision: epochs of the model whose embeddings are compared")
    p.add_argument("--folder", action="store_true",
                   help="fit from JPEG files (with and without the decoded-image cache) "
                        "against the same pixels in memory")
    p.add_argument("--file-size", type=int, default=256,
                   help="--folder: height = width of the JPEG files")
    p.add_argument("--threads", type=int, default=None,
                   help="torch intra-op threads (default: PyTorch's own)")
    p.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                   help="wall: elapsed seconds; cpu: processor seconds of this process "
                        "(for a loaded machine; best with --threads 1)")
    p.add_argument("--compare-to", metavar="PATH", default=None,
                   help="time fit of the skcueco tree at PATH against this one")
    p.add_argument("--fit-samples", type=int, default=None,
                   help="default mode: fit on the first FIT_SAMPLES images only (all of "
                        "them are transformed); --cluster-targets: the first of each set")
    p.add_argument("--no-transform", action="store_true",
                   help="default mode: skip the transform comparison")
    p.add_argument("--dataset", default=None, metavar="NAME",
                   help="default mode and --compare-to: fit the training split of this "
                        "quality data set (benchmarks/quality.py: a name or an .npz file) "
                        "instead of random RGB images")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="default mode and --compare-to: a parameter of the timed "
                        "estimator, e.g. cluster_negatives=drop (repeatable)")
    p.add_argument("--fit-once", action="store_true",
                   help="internal (--compare-to): time one fit, print JSON")
    p.add_argument("--quick", action="store_true",
                   help="tiny CPU run of the default mode (seconds)")
    args = p.parse_args(argv)
    if args.folder and args.epochs < 2:
        p.error("--folder times the epochs after the first: it needs --epochs >= 2")
    if args.quick:
        args.device, args.backbone, args.image_size = "cpu", "small_cnn", 16
        args.batch_size, args.n_samples, args.epochs, args.queue_size = 64, 512, 1, 256
        args.rounds = 1
    return args


def synthetic_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --clock cpu: seconds of processor time of this process (all its threads),
# steadier than the wall clock on a machine that other processes load
CLOCK = {"now": time.perf_counter}


def timed(fn, device):
    sync(device)
    t = CLOCK["now"]()
    fn()
    sync(device)
    return CLOCK["now"]() - t


def alternate(sides, rounds):
    """``{name: [value per round]}`` of ``sides`` (name -> callable), order alternating."""
    names = list(sides)
    results = {name: [] for name in names}
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            results[name].append(sides[name]())
    return results


def summary(values, unit, scale=1.0):
    med = statistics.median(values) * scale
    return f"{med:10.4g} {unit} (spread {min(values) * scale:.4g}-{max(values) * scale:.4g})"


def report(title, results, unit, higher_is_better, goal=None, scale=1.0):
    (a, va), (b, vb) = results.items()
    print(f"{title}")
    for name, values in results.items():
        print(f"  {name:34s} {summary(values, unit, scale)}")
    ratio = statistics.median(va) / statistics.median(vb)
    per_round = statistics.median(x / y for x, y in zip(va, vb))
    print(f"  ratio {a} / {b}: {ratio:.3f} (median of per-round ratios {per_round:.3f})"
          + (f" (goal {goal})" if goal else ""))
    return ratio


def amp_param(amp):
    return False if amp == "off" else amp


def channels_last_param(setting):
    return {"auto": "auto", "on": True, "off": False}[setting]


def make_estimator(args, **overrides):
    params = {
        "backbone": args.backbone, "batch_size": args.batch_size,
        "max_epochs": args.epochs, "queue_size": args.queue_size, "cluster_warmup": 0,
        "amp": amp_param(args.amp), "channels_last": channels_last_param(args.channels_last),
        "device": args.device, "random_state": 0,
    }
    params.update(settings(args))
    params.update(overrides)
    return CueCoEmbedder(**params)


def settings(args):
    """The ``--set`` parameters, values read as Python literals where they are."""
    if not args.set:
        return {}
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from clusters import parse_setting

    return dict(parse_setting(text) for text in args.set)


def fit_rate(X, args, device, **overrides):
    """Images/s of one whole ``fit`` call; the fitted estimator is kept in ``LAST``."""
    est = make_estimator(args, **overrides)
    seconds = timed(lambda: est.fit(X), device)
    LAST["est"] = est
    steps = len(X) // est.batch_size
    return steps * est.batch_size * args.epochs / seconds


LAST = {}


def bare_moco(args, device, amp_dtype, channels_last, queue_size, per_image=False):
    """A minimal MoCo v2 loop, what a user would write by hand: ``step(rows)``."""
    torch.manual_seed(0)
    backbone, dim = build_backbone(args.backbone, input_kind="image",
                                   input_shape=(3, args.image_size, args.image_size))
    f_q = torch.nn.Sequential(backbone, ProjectionHead(dim, 2048, 128)).to(device)
    f_k = copy.deepcopy(f_q).requires_grad_(False)
    if channels_last:
        f_q.to(memory_format=torch.channels_last)
        f_k.to(memory_format=torch.channels_last)
    queue = KeyQueue(queue_size, 128).to(device)
    aug = make_augmentation("auto", input_kind="image", n_channels=3,
                            image_size=(args.image_size, args.image_size))
    gen = torch.Generator(device=device).manual_seed(0)
    lr = 0.06 * args.batch_size / 256
    opt = torch.optim.SGD(f_q.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)

    def views(x):
        if per_image:
            # per-image dataset transforms, then collation
            return (torch.cat([aug(x[i:i + 1], gen) for i in range(len(x))]),
                    torch.cat([aug(x[i:i + 1], gen) for i in range(len(x))]))
        return aug(x, gen), aug(x, gen)

    def step(rows):
        if device.type == "cuda":
            rows = rows.pin_memory()
        x = rows.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
        v1, v2 = views(x)
        if channels_last:
            v1 = v1.contiguous(memory_format=torch.channels_last)
            v2 = v2.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            q1, q2 = F.normalize(f_q(v1), dim=1), F.normalize(f_q(v2), dim=1)
            with torch.no_grad():
                k1, k2 = F.normalize(f_k(v1), dim=1), F.normalize(f_k(v2), dim=1)
            loss = 0.5 * (info_nce(q1, k2, queue.keys) + info_nce(q2, k1, queue.keys))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(f_k, f_q, 0.99)
        queue.enqueue(torch.cat([k1, k2]).float())

    return step


def bare_fit_rate(X, args, device, amp_dtype, channels_last, per_image=False):
    """Images/s of a whole bare training run (model building included)."""
    def run():
        step = bare_moco(args, device, amp_dtype, channels_last,
                         min(args.queue_size, len(X)), per_image=per_image)
        steps = len(X) // args.batch_size
        for epoch in range(args.epochs):
            order = np.random.default_rng(epoch).permutation(len(X))
            for i in range(steps):
                step(torch.from_numpy(X[np.sort(order[i * args.batch_size:
                                                      (i + 1) * args.batch_size])]))
    seconds = timed(run, device)
    return (len(X) // args.batch_size) * args.batch_size * args.epochs / seconds


class _PILImages(torch.utils.data.Dataset):
    """uint8 HWC rows as PIL images through a two-view transform (per image)."""

    def __init__(self, X, transform):
        self.X, self.transform = X, transform

    def __len__(self):
        return len(self.X)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.X[i]))


def lightly_style_fit_rate(X, args, device, amp_dtype, channels_last):
    """Images/s of MoCo v2 as written with lightly: PIL transforms per image, a DataLoader.

    With lightly installed its own building blocks are used (``MoCoV2Transform``,
    ``MoCoProjectionHead``, ``NTXentLoss`` with a memory bank, ``update_momentum``);
    without it the same recipe in torchvision transforms and this library's
    queue and loss. The backbone is this library's, so that only the data
    path and the training-step code differ.
    """
    import torchvision.transforms as T
    try:
        from lightly.loss import NTXentLoss
        from lightly.models.modules import MoCoProjectionHead
        from lightly.models.utils import deactivate_requires_grad, update_momentum
        from lightly.transforms import MoCoV2Transform
        have_lightly = True
    except ImportError:
        have_lightly = False
    size = args.image_size

    def run():
        torch.manual_seed(0)
        backbone, dim = build_backbone(args.backbone, input_kind="image",
                                       input_shape=(3, size, size))
        queue_size = min(args.queue_size, len(X))
        if have_lightly:
            view = MoCoV2Transform(input_size=size, gaussian_blur=0.0)
            head = MoCoProjectionHead(dim, 2048, 128)
            criterion = NTXentLoss(temperature=0.2, memory_bank_size=(queue_size, 128))
        else:
            one = T.Compose([
                T.RandomResizedCrop(size, scale=(0.2, 1.0)),
                T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
                T.RandomGrayscale(p=0.2), T.RandomHorizontalFlip(), T.ToTensor(),
                T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            ])

            def view(img):
                return one(img), one(img)
            head = ProjectionHead(dim, 2048, 128)
            queue = KeyQueue(queue_size, 128).to(device)
        f_q = torch.nn.Sequential(backbone, head).to(device)
        f_k = copy.deepcopy(f_q).requires_grad_(False)
        if have_lightly:
            deactivate_requires_grad(f_k)
        if channels_last:
            f_q.to(memory_format=torch.channels_last)
            f_k.to(memory_format=torch.channels_last)
        opt = torch.optim.SGD(f_q.parameters(), lr=0.06 * args.batch_size / 256,
                              momentum=0.9, weight_decay=5e-4)
        loader = torch.utils.data.DataLoader(
            _PILImages(X, view), batch_size=args.batch_size, shuffle=True, drop_last=True,
            pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0))
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        for _ in range(args.epochs):
            for v1, v2 in loader:
                v1 = v1.to(device, non_blocking=True).contiguous(memory_format=fmt)
                v2 = v2.to(device, non_blocking=True).contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=amp_dtype,
                                    enabled=amp_dtype is not None):
                    q1, q2 = f_q(v1), f_q(v2)
                    with torch.no_grad():
                        k1, k2 = f_k(v1), f_k(v2)
                    if have_lightly:
                        loss = 0.5 * (criterion(q1, k2) + criterion(q2, k1))
                    else:
                        q1, q2, k1, k2 = (F.normalize(t, dim=1) for t in (q1, q2, k1, k2))
                        loss = 0.5 * (info_nce(q1, k2, queue.keys)
                                      + info_nce(q2, k1, queue.keys))
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                if have_lightly:
                    update_momentum(f_q, f_k, m=0.99)
                else:
                    ema_update(f_k, f_q, 0.99)
                    queue.enqueue(torch.cat([k1, k2]).float())

    seconds = timed(run, device)
    LAST["lightly"] = have_lightly
    return (len(X) // args.batch_size) * args.batch_size * args.epochs / seconds


def bare_forward(est, channels_last):
    """A plain ``model.eval()`` forward of uint8 rows, optionally channels-last."""
    model = est.encoder_.eval()
    if channels_last:
        model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    c, h, w = est.image_shape_
    device = est.device_

    @torch.no_grad()
    def forward(X, batch=256):
        out = []
        for s in range(0, len(X), batch):
            rows = torch.from_numpy(X[s:s + batch]).to(device)
            x = rows.view(-1, h, w, c).permute(0, 3, 1, 2).float() / 255
            x = x.contiguous(memory_format=torch.channels_last if channels_last
                             else torch.contiguous_format)
            out.append(model(x).float().cpu())
        return torch.cat(out)
    return forward


def main_default(X_all, args, device, amp_dtype, channels_last):
    X = X_all[:args.fit_samples]
    sides = {
        "CueCoEmbedder.fit": lambda: fit_rate(X, args, device),
        "bare MoCo v2 loop": lambda: bare_fit_rate(X, args, device, amp_dtype, channels_last),
    }
    if args.per_image:
        sides["per-image augmentation loop"] = lambda: bare_fit_rate(
            X, args, device, amp_dtype, channels_last, per_image=True)
    if args.lightly_style:
        sides["lightly-style loop"] = lambda: lightly_style_fit_rate(
            X, args, device, amp_dtype, channels_last)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    results = alternate(sides, args.rounds)
    ratio = report("fit (whole calls)", dict(list(results.items())[:2]), "img/s", True,
                   goal=">= 0.90")
    if "per-image augmentation loop" in results:
        report("fit against the per-image augmentation loop",
               {k: results[k] for k in ("CueCoEmbedder.fit", "per-image augmentation loop")},
               "img/s", True, goal=">= 1.8")
    if "lightly-style loop" in results:
        built = "lightly's" if LAST.get("lightly") else "torchvision's (lightly not installed)"
        report(f"fit against the lightly-style loop ({built} building blocks)",
               {k: results[k] for k in ("CueCoEmbedder.fit", "lightly-style loop")},
               "img/s", True, goal=">= 1.8")
    kind = "GPU allocated" if device.type == "cuda" else "process max RSS"
    print(f"  peak memory ({kind}): {peak_memory_mb(device):.0f} MiB")
    t_ratio = None
    if not args.no_transform:
        est = LAST["est"]
        forward = bare_forward(est, channels_last=True)
        X = X_all
        est.transform(X[:256])  # warm-up of both sides' kernels
        forward(X[:256])
        results = alternate({
            "CueCoEmbedder.transform": lambda: len(X) / timed(lambda: est.transform(X), device),
            "bare channels-last forward": lambda: len(X) / timed(lambda: forward(X), device),
        }, args.rounds)
        t_ratio = report(f"transform of {len(X)} images", results, "img/s", True,
                         goal=">= 0.95")
    return ratio, t_ratio


def main_queue(X, args, device, amp_dtype, channels_last):
    a, b = args.queue
    rows = torch.from_numpy(X[:args.batch_size])
    steps = {n: bare_moco(args, device, amp_dtype, channels_last, n) for n in (a, b)}
    for step in steps.values():
        step(rows)  # warm-up

    def per_step(n):
        return timed(lambda: [steps[n](rows) for _ in range(args.steps)], device) / args.steps

    results = alternate({f"queue {a}": lambda: per_step(a),
                         f"queue {b}": lambda: per_step(b)}, args.rounds)
    ratio = report(f"training step, batch {args.batch_size}", results, "ms", False,
                   scale=1e3)
    print(f"  queue {b} costs {1 / ratio - 1:+.1%} per step over queue {a} (goal <= +20%)")
    return 1 / ratio


def main_latency(X, args, device):
    est = make_estimator(args, max_epochs=1).fit(X)
    forward = bare_forward(est, channels_last=False)
    ratios = []
    for n in (1, 10):
        rows = X[:n]
        est.transform(rows)  # warm-up, and the one-off batch-shape probe
        forward(rows)

        def per_call(fn, rows=rows):
            return timed(lambda: [fn(rows) for _ in range(args.repeats)], device) / args.repeats

        results = alternate({f"transform of {n}": lambda: per_call(est.transform),
                             f"bare forward of {n}": lambda: per_call(forward)}, args.rounds)
        ratios.append(report(f"latency, {n} image(s)", results, "ms", False, goal="<= 2",
                             scale=1e3))
    return ratios


def main_layout(X, args, device):
    est = {}

    def fit(flag):
        rate = fit_rate(X, args, device, channels_last=flag)
        est[flag] = LAST["est"]
        return rate

    results = alternate({"fit channels-last": lambda: fit(True),
                         "fit NCHW": lambda: fit(False)}, args.rounds)
    fit_ratio = report("fit by memory format", results, "img/s", True)
    results = alternate({
        "transform channels-last": lambda: len(X) / timed(lambda: est[True].transform(X), device),
        "transform NCHW": lambda: len(X) / timed(lambda: est[False].transform(X), device),
    }, args.rounds)
    return fit_ratio, report("transform by memory format", results, "img/s", True)


def main_batch_sizes(X, args, device):
    """Whole ``fit`` calls at two batch sizes, same epochs, alternating order."""
    a, b = args.batch_sizes
    results = alternate({f"fit batch {a}": lambda: fit_rate(X, args, device, batch_size=a),
                         f"fit batch {b}": lambda: fit_rate(X, args, device, batch_size=b)},
                        args.rounds)
    return report(f"fit by batch size ({a} against {b})", results, "img/s", True)


def main_progress(X, args, device):
    """Cost of ``verbose=2`` (a per-batch bar that reads the loss about once a
    second) against ``verbose=0``, whole ``fit`` calls in alternating order;
    the bar writes to a discarded stream so the terminal does not count."""
    import contextlib

    def fit(verbose):
        with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink):
            return fit_rate(X, args, device, verbose=verbose)

    results = alternate({"fit verbose=2 (per-batch bar)": lambda: fit(2),
                         "fit verbose=0": lambda: fit(0)}, args.rounds)
    return report("fit with and without the per-batch progress bar", results, "img/s", True,
                  goal=">= 0.98")


def main_cluster_targets(args):
    """Whole ``fit`` calls with graph targets against centroid targets, alternating order."""
    import warnings

    from sklearn.datasets import load_digits

    sets = {"digits": load_digits().data}
    if args.centred_digits:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from quality import load_dataset

        sets["centred digits (28x28)"] = load_dataset("digits28")[0]
    if args.large_set:
        from skcueco._synthetic import make_shapes

        sets["shapes (28x28)"] = make_shapes(args.large_set, image_size=28, random_state=0)[0]
    ratios = {}
    for name, X in sets.items():
        X = X[:args.fit_samples]

        def fit(targets, X=X):
            est = CueCoEmbedder(max_epochs=args.epochs, random_state=0, device=args.device,
                                cluster_targets=targets)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return timed(lambda: est.fit(X), torch.device("cpu"))

        results = alternate({"fit cluster_targets='graph'": lambda: fit("graph"),
                             "fit cluster_targets='centroids'": lambda: fit("centroids")},
                            args.rounds)
        ratios[name] = report(f"fit seconds by cluster targets, {name}, {len(X)} images, "
                              f"{args.epochs} epochs", results, "s", False, goal="<= 1.3")
    return ratios


def main_readout_views(args):
    """Whole ``fit`` calls with the read-out's views against without, alternating order."""
    import warnings

    import skcueco._readout as readout_module

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from quality import load_dataset

    sets = {"centred digits (28x28)": (load_dataset("digits28")[0], {}),
            "RGB scenes (32x32)": (load_dataset("scenes32rgb")[0],
                                   {"backbone": "small_cnn"})}
    views = readout_module.READOUT_VIEWS
    ratios = {}
    for name, (X, params) in sets.items():
        X = X[:args.fit_samples]

        def fit(n_views, X=X, params=params):
            est = CueCoEmbedder(max_epochs=args.epochs, random_state=0, device=args.device,
                                **params)
            readout_module.READOUT_VIEWS = n_views
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return timed(lambda: est.fit(X), torch.device("cpu"))
            finally:
                readout_module.READOUT_VIEWS = views

        results = alternate({f"fit with {views} views in the read-out": lambda: fit(views),
                             "fit without views": lambda: fit(0)}, args.rounds)
        ratios[name] = report(f"fit seconds with and without the read-out's views, {name}, "
                              f"{len(X)} images, {args.epochs} epochs", results, "s", False,
                              goal="<= 1.1")
    return ratios


def cpu_bf16_capability():
    """One line on what PyTorch reports of this processor's bf16 arithmetic."""
    from skcueco.training.device import cpu_has_native_bf16

    caps = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    flags = ", ".join(f"{k}={caps[k]}" for k in ("avx512_bf16", "amx_bf16") if k in caps)
    return (f"cpu: {caps.get('cpu_name', 'unknown')}, capability "
            f"{torch.backends.cpu.get_cpu_capability()}, {flags or 'no bf16 flags reported'}"
            f"; native bf16: {cpu_has_native_bf16()} (amp='auto' trains in "
            f"{'bf16' if cpu_has_native_bf16() else 'float32'})")


def bf16_transform(est, X):
    """``est.transform(X)`` with the encoder under a CPU bf16 autocast."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return est.transform(X)


def main_cpu_precision(X, args):
    """bf16 against float32 on the CPU: whole fits, transform, and embedding quality."""
    args.device = "cpu"
    print(cpu_bf16_capability())
    fit_ratios, transform_ratios = [], []
    for backbone in args.precision_backbones:
        est = {}

        def fit(amp, backbone=backbone):
            rate = fit_rate(X, args, torch.device("cpu"), backbone=backbone, amp=amp)
            est[amp] = LAST["est"]
            return rate

        for amp in ("bf16", False):  # one-off costs (kernel set-up) out of the timing
            make_estimator(args, backbone=backbone, amp=amp, max_epochs=1).fit(
                X[:2 * args.batch_size])
        results = alternate({"fit amp='bf16'": lambda: fit("bf16"),
                             "fit amp=False": lambda: fit(False)}, args.rounds)
        fit_ratios.append(report(f"{backbone}: fit bf16 against float32 (whole calls)",
                                 results, "img/s", True))
        model = est[False]
        bf16_transform(model, X[:256])  # warm-up of both precisions' kernels
        model.transform(X[:256])
        results = alternate({
            "transform under bf16 autocast": lambda: len(X) / timed(
                lambda: bf16_transform(model, X), torch.device("cpu")),
            "transform float32": lambda: len(X) / timed(
                lambda: model.transform(X), torch.device("cpu")),
        }, args.rounds)
        transform_ratios.append(report(f"{backbone}: transform bf16 against float32",
                                       results, "img/s", True))
    if args.quality_samples:
        precision_quality(args)
    return fit_ratios + transform_ratios


def precision_quality(args):
    """How far bf16 ``transform`` moves the embeddings of a trained model, and
    what that does to the linear probe and kNN accuracy."""
    from skcueco._synthetic import make_shapes
    from skcueco.evaluation import evaluate_features

    X, y = make_shapes(args.quality_samples, image_size=32, n_channels=3, random_state=0)
    n_train = 2 * len(X) // 3
    est = CueCoEmbedder(backbone="small_cnn", max_epochs=args.quality_epochs, device="cpu",
                        random_state=0).fit(X[:n_train])
    full = est.transform(X)
    half = bf16_transform(est, X)
    diff = np.abs(full - half)
    cos = np.sum(full * half, 1) / (np.linalg.norm(full, axis=1) * np.linalg.norm(half, axis=1))
    print(f"shapes32rgb ({n_train} train / {len(X) - n_train} test images, small_cnn, "
          f"{args.quality_epochs} epochs, trained with amp='auto'): transform under bf16 "
          f"autocast against float32")
    print(f"  embeddings (standardised): max abs difference {diff.max():.4g}, mean "
          f"{diff.mean():.4g}; cosine similarity min {cos.min():.5f}, mean {cos.mean():.5f}")
    scores = {}
    for name, Z in (("float32", full), ("bf16", half)):
        table = evaluate_features(Z[:n_train], y[:n_train], Z[n_train:], y[n_train:],
                                  random_state=0)
        scores[name] = dict(zip(table["protocol"] + " " + table["metric"], table["value"]))
    for key in ("linear accuracy", "knn accuracy", "kmeans nmi"):
        a, b = scores["float32"][key], scores["bf16"][key]
        print(f"  {key:16s} float32 {a:.4f}  bf16 {b:.4f}  change {b - a:+.4f}")
    return scores


class EpochClock(Callback):
    """Seconds of each epoch on ``CLOCK``."""

    def __init__(self):
        self.seconds, self._start = [], None

    def on_epoch_begin(self, trainer, epoch):
        self._start = CLOCK["now"]()

    def on_epoch_end(self, trainer, epoch, logs):
        self.seconds.append(CLOCK["now"]() - self._start)


def write_jpegs(X, folder):
    from PIL import Image

    paths = []
    for i, image in enumerate(X):
        path = os.path.join(folder, f"{i:06d}.jpg")
        Image.fromarray(image).save(path, quality=90)
        paths.append(path)
    return paths


def main_folder(args):
    """``fit`` from JPEG files, with and without the cache, against the array."""
    import tempfile

    from skcueco import ImageSource

    args.device = "cpu"
    big = synthetic_images(args.n_samples, args.file_size)
    # smooth images, as photographs are: JPEG sizes and decode times like real ones
    big = np.asarray(torch.nn.functional.avg_pool2d(
        torch.from_numpy(big).permute(0, 3, 1, 2).float(), 9, 1, 4
    ).round().to(torch.uint8).permute(0, 2, 3, 1))
    with tempfile.TemporaryDirectory() as folder:
        paths = write_jpegs(big, folder)
        del big
        size = args.image_size
        array = ImageSource(paths, image_size=size, mode="RGB", cache=False)[:]
        array = array.reshape(len(paths), size, size, 3)
        device = torch.device("cpu")
        later = {}

        def fit(X, name):
            epochs = EpochClock()
            rate = fit_rate(X, args, device, callbacks=[epochs])
            steps = len(paths) // LAST["est"].batch_size_
            later.setdefault(name, []).append(
                steps * LAST["est"].batch_size_ * (args.epochs - 1) / sum(epochs.seconds[1:]))
            return rate

        sides = {
            "array": lambda: fit(array, "array"),
            "folder, cache='auto'": lambda: fit(
                ImageSource(paths, image_size=size, mode="RGB"), "folder, cache='auto'"),
            "folder, cache=False": lambda: fit(
                ImageSource(paths, image_size=size, mode="RGB", cache=False),
                "folder, cache=False"),
        }
        whole = alternate(sides, args.rounds)
        loading = {}

        def read(X, name):
            """Images/s of the loader alone over the epochs after the first."""
            from skcueco.data.loaders import make_loader

            # every row in every epoch: the first reads all files
            loader = make_loader(X, batch_size=args.batch_size, shuffle=True,
                                 generator=torch.Generator().manual_seed(0))
            seconds = [timed(lambda: [None for _ in loader], device)
                       for _ in range(args.epochs)]
            loading.setdefault(name, []).append(len(X) * (args.epochs - 1) / sum(seconds[1:]))
            return sum(seconds)

        rows = array.reshape(len(paths), -1)
        alternate({
            "array": lambda: read(rows, "array"),
            "folder, cache='auto'": lambda: read(
                ImageSource(paths, image_size=size, mode="RGB"), "folder, cache='auto'"),
            "folder, cache=False": lambda: read(
                ImageSource(paths, image_size=size, mode="RGB", cache=False),
                "folder, cache=False"),
        }, args.rounds)
    print(f"{args.n_samples} JPEG files of {args.file_size}x{args.file_size} px read at "
          f"{size}x{size}, {args.backbone}, batch {args.batch_size}, {args.epochs} epochs, "
          f"decoded rows {args.n_samples * size * size * 3 / 2**20:.1f} MiB, "
          f"threads={torch.get_num_threads()}, clock={args.clock}")
    ratio = report("epochs after the first: folder with the cache against the array",
                   {k: later[k] for k in ("folder, cache='auto'", "array")}, "img/s", True,
                   goal=">= 0.9")
    report("epochs after the first: folder without the cache against the array",
           {k: later[k] for k in ("folder, cache=False", "array")}, "img/s", True)
    report("loader alone, epochs after the first: folder with the cache against the array",
           {k: loading[k] for k in ("folder, cache='auto'", "array")}, "img/s", True)
    report("loader alone, epochs after the first: folder without the cache against the array",
           {k: loading[k] for k in ("folder, cache=False", "array")}, "img/s", True)
    report("whole fit calls: folder with the cache against the array",
           {k: whole[k] for k in ("folder, cache='auto'", "array")}, "img/s", True)
    report("whole fit calls: folder without the cache against the array",
           {k: whole[k] for k in ("folder, cache=False", "array")}, "img/s", True)
    return ratio


def main_compare(args, argv=None):
    """``fit`` of this tree against the tree at ``--compare-to``, fresh processes."""
    here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    trees = {"this tree": here, f"tree at {args.compare_to}": args.compare_to}
    forwarded = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--fit-once"]
    i = forwarded.index("--compare-to")
    forwarded = forwarded[:i] + forwarded[i + 2:]

    def run(tree):
        env = dict(os.environ, PYTHONPATH=tree)
        out = subprocess.run([sys.executable, os.path.abspath(__file__), *forwarded,
                              "--fit-once"], env=env, check=True, capture_output=True,
                             text=True).stdout
        return json.loads(out.strip().splitlines()[-1])["fit"]

    results = alternate({name: (lambda t=tree: run(t)) for name, tree in trees.items()},
                        args.rounds)
    return report("fit (whole calls, one fresh process each)", results, "img/s", True)


def main(argv=None):
    args = parse_args(argv)
    if args.compare_to and not args.fit_once:
        return main_compare(args, argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.clock == "cpu":
        CLOCK["now"] = time.process_time
    if args.folder:
        return main_folder(args)
    if args.cluster_targets:
        return main_cluster_targets(args)
    if args.readout_views:
        return main_readout_views(args)
    from skcueco.training.device import resolve_device
    from skcueco.training.engine import resolve_amp

    device = resolve_device(args.device)
    amp_dtype = resolve_amp(amp_param(args.amp), device)
    channels_last = args.channels_last == "on" or (
        args.channels_last == "auto" and (device.type == "cuda" or (
            device.type == "cpu" and args.backbone in ("auto", "small_cnn", "resnet18",
                                                       "resnet50"))))
    torch.backends.cudnn.benchmark = True  # what a hand-written loop would set
    if args.dataset:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from quality import load_dataset

        X = load_dataset(args.dataset)[0]
    else:
        X = synthetic_images(args.n_samples, args.image_size)
    if args.fit_once:
        import skcueco
        rate = fit_rate(X, args, device)
        print(json.dumps({"fit": rate, "skcueco": os.path.dirname(skcueco.__file__)}))
        return rate
    print(f"device={device} backbone={args.backbone} image={args.image_size}px "
          f"batch={args.batch_size} samples={args.n_samples} epochs={args.epochs} "
          f"rounds={args.rounds} amp={amp_dtype} channels_last={channels_last} "
          f"threads={torch.get_num_threads()} clock={args.clock} torch={torch.__version__}")
    if args.queue:
        return main_queue(X, args, device, amp_dtype, channels_last)
    if args.latency:
        return main_latency(X, args, device)
    if args.layout:
        return main_layout(X, args, device)
    if args.batch_sizes:
        return main_batch_sizes(X, args, device)
    if args.progress:
        return main_progress(X, args, device)
    if args.cpu_precision:
        return main_cpu_precision(X, args)
    return main_default(X, args, device, amp_dtype, channels_last)


if __name__ == "__main__":
    main()
