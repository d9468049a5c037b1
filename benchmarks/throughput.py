"""Training and inference throughput of CueCoEmbedder against bare PyTorch.

Prints, from one run on one device:

- ``fit``: images/s of ``CueCoEmbedder.fit`` (CueCo: InfoNCE + clustering,
  engine, callbacks) and of a minimal hand-written MoCo v2 loop with the same
  backbone, batch size, queue, augmentations, precision and memory format;
  their ratio (goal >= 0.9).
- ``transform``: images/s of ``CueCoEmbedder.transform`` and of a bare
  ``model.eval()`` forward over the same batches; their ratio (goal >= 0.95).
- peak memory (GPU: ``torch.cuda.max_memory_allocated``; CPU: max RSS).

Both sides start from the same uint8 array in host memory. Steady state only:
the first epoch (cuDNN autotuning, k-means initialisation) is not timed.

Examples
--------
GPU, the reference setting (ResNet-18 at 32x32, batch 512, bf16, channels-last)::

    python benchmarks/throughput.py --device cuda --backbone resnet18 \\
        --batch-size 512 --n-samples 51200 --epochs 3 --amp bf16

Seconds on a CPU, as CI runs it so the script cannot rot::

    python benchmarks/throughput.py --quick
"""

import argparse
import copy
import resource
import time

import numpy as np
import torch
import torch.nn.functional as F

from skcueco import CueCoEmbedder
from skcueco.augment import make_augmentation
from skcueco.backbones import build_backbone
from skcueco.nn import KeyQueue, ProjectionHead, ema_update, info_nce


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--backbone", default="auto")
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-samples", type=int, default=51200)
    p.add_argument("--epochs", type=int, default=3, help="timed epochs after one untimed")
    p.add_argument("--queue-size", type=int, default=4096)
    p.add_argument("--amp", default="auto", help="auto, bf16, fp16 or off")
    p.add_argument("--quick", action="store_true", help="tiny CPU run (seconds)")
    args = p.parse_args(argv)
    if args.quick:
        args.device, args.backbone, args.image_size = "cpu", "small_cnn", 16
        args.batch_size, args.n_samples, args.epochs, args.queue_size = 64, 512, 1, 256
    return args


def synthetic_images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def peak_memory_mb(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def bench_fit(X, args):
    est = CueCoEmbedder(
        backbone=args.backbone, batch_size=args.batch_size, max_epochs=args.epochs + 1,
        queue_size=args.queue_size, cluster_warmup=0, amp=amp_param(args.amp),
        device=args.device, random_state=0,
    )
    est.fit(X)
    seconds = est.history_["seconds"].iloc[1:].sum()
    steps = len(X) // args.batch_size
    return steps * args.batch_size * args.epochs / seconds, est


def amp_param(amp):
    return False if amp == "off" else amp


def bench_bare_moco(X, args, device, amp_dtype, channels_last):
    """A minimal MoCo v2 loop: what a user would write by hand."""
    torch.manual_seed(0)
    backbone, dim = build_backbone(args.backbone, input_kind="image",
                                   input_shape=(3, args.image_size, args.image_size))
    f_q = torch.nn.Sequential(backbone, ProjectionHead(dim, 2048, 128)).to(device)
    f_k = copy.deepcopy(f_q).requires_grad_(False)
    if channels_last:
        f_q.to(memory_format=torch.channels_last)
        f_k.to(memory_format=torch.channels_last)
    queue = KeyQueue(min(args.queue_size, len(X)), 128).to(device)
    aug = make_augmentation("auto", input_kind="image", n_channels=3,
                            image_size=(args.image_size, args.image_size))
    gen = torch.Generator(device=device).manual_seed(0)
    lr = 0.06 * args.batch_size / 256
    opt = torch.optim.SGD(f_q.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    steps = len(X) // args.batch_size
    order = np.random.default_rng(0).permutation(len(X))
    timed_images, timed_seconds = 0, 0.0
    for epoch in range(args.epochs + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        for i in range(steps):
            idx = np.sort(order[i * args.batch_size:(i + 1) * args.batch_size])
            rows = torch.from_numpy(X[idx])
            if device.type == "cuda":
                rows = rows.pin_memory()
            x = rows.to(device, non_blocking=True).permute(0, 3, 1, 2).float() / 255
            v1, v2 = aug(x, gen), aug(x, gen)
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
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if epoch > 0:
            timed_images += steps * args.batch_size
            timed_seconds += time.perf_counter() - start
    return timed_images / timed_seconds


def bench_transform(est, X, device, repeats=3):
    est.transform(X[: est.batch_size])  # warm-up
    best_ours = best_bare = float("inf")
    model, pre = est.encoder_, est._preprocess
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        est.transform(X)
        best_ours = min(best_ours, time.perf_counter() - t)
        t = time.perf_counter()
        with torch.no_grad():
            out = []
            for s in range(0, len(X), est.batch_size):
                rows = torch.from_numpy(X[s:s + est.batch_size]).to(device)
                out.append(model(pre(rows)).float().cpu())
        best_bare = min(best_bare, time.perf_counter() - t)
    return len(X) / best_ours, len(X) / best_bare


def main(argv=None):
    args = parse_args(argv)
    from skcueco.training.device import resolve_device
    from skcueco.training.engine import resolve_amp

    device = resolve_device(args.device)
    amp_dtype = resolve_amp(amp_param(args.amp), device)
    channels_last = device.type == "cuda"
    torch.backends.cudnn.benchmark = True  # what a hand-written loop would set
    X = synthetic_images(args.n_samples, args.image_size)
    print(f"device={device} backbone={args.backbone} image={args.image_size}px "
          f"batch={args.batch_size} samples={args.n_samples} timed_epochs={args.epochs} "
          f"amp={amp_dtype} channels_last={channels_last} torch={torch.__version__}")

    reset_peak(device)
    bare = bench_bare_moco(X, args, device, amp_dtype, channels_last)
    bare_mem = peak_memory_mb(device)
    reset_peak(device)
    ours, est = bench_fit(X, args)
    ours_mem = peak_memory_mb(device)
    t_ours, t_bare = bench_transform(est, X, device)

    print(f"fit       CueCoEmbedder {ours:10.0f} img/s   bare MoCo v2 {bare:10.0f} img/s   "
          f"ratio {ours / bare:.3f} (goal >= 0.90)")
    print(f"transform CueCoEmbedder {t_ours:10.0f} img/s   bare forward {t_bare:10.0f} img/s   "
          f"ratio {t_ours / t_bare:.3f} (goal >= 0.95)")
    kind = "GPU allocated" if device.type == "cuda" else "process max RSS so far"
    print(f"peak memory ({kind}): CueCoEmbedder.fit {ours_mem:.0f} MiB, "
          f"bare loop {bare_mem:.0f} MiB")
    if device.type == "cuda":
        hours = 50000 * 1000 / ours / 3600
        print(f"CIFAR-10 x 1000 epochs at this rate: {hours * 60:.0f} minutes")
    return ours / bare, t_ours / t_bare


if __name__ == "__main__":
    main()
