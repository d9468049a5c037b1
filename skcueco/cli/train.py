"""Command-line training, on one process or under ``torchrun``.

One process::

    python -m skcueco.train --cifar10 data/ --recipe cifar10 --out cueco.pt

Four GPUs on one machine (the process group is set up from torchrun's
environment; every process loads the data, trains its shard, and rank 0
writes the model)::

    torchrun --nproc_per_node=4 -m skcueco.train --cifar10 data/ --recipe cifar10 \\
        --out cueco.pt

Two machines with 8 GPUs each (run on both, with the first one's address)::

    torchrun --nnodes=2 --nproc_per_node=8 --rdzv-backend=c10d \\
        --rdzv-endpoint=HOST:29500 -m skcueco.train --imagenet100 /data/imagenet \\
        --recipe imagenet100 --out cueco.pt --checkpoint-dir ckpt/

``--batch-size`` is per process; the learning rate follows the global batch.
"""

import argparse
import sys
from pathlib import Path

import numpy as np

from .. import CueCoEmbedder
from ..training.distributed import (
    DEFAULT_TIMEOUT_S,
    init_distributed,
    is_main_process,
    shutdown_distributed,
)
from ..callbacks import Checkpoint


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m skcueco.train",
        description="Train a CueCoEmbedder without labels and save it (rank 0).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a .npy array of images, or a folder of images "
                        "(class sub-folders allowed)")
    source.add_argument("--cifar10", metavar="ROOT", help="CIFAR-10 in torchvision's layout")
    source.add_argument("--cifar100", metavar="ROOT", help="CIFAR-100 in torchvision's layout")
    source.add_argument("--imagenet100", metavar="ROOT",
                        help="ImageNet in ImageFolder layout; the ImageNet-100 classes are used")
    parser.add_argument("--recipe", help="cifar10, cifar100 or imagenet100 hyper-parameters")
    parser.add_argument("--epochs", type=int, help="override the recipe's max_epochs")
    parser.add_argument("--batch-size", type=int, help="per process; overrides the recipe")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--checkpoint-dir", help="save the training state here every epoch")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --checkpoint-dir")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a process waits for the others before failing")
    parser.add_argument("--out", required=True, help="where to write the model (save format)")
    parser.add_argument("--quiet", action="store_true")
    return parser


def load_data(args):
    """The training images named on the command line."""
    from ..data import datasets

    if args.cifar10:
        return datasets.load_cifar10(args.cifar10, train=True)[0]
    if args.cifar100:
        return datasets.load_cifar100(args.cifar100, train=True)[0]
    if args.imagenet100:
        return datasets.load_imagenet100(args.imagenet100, split="train")[0]
    path = Path(args.data)
    if path.suffix == ".npy":
        return np.load(path, allow_pickle=False)
    if path.is_dir():
        return str(path)  # CueCoEmbedder reads folders of images lazily
    raise SystemExit(f"error: --data must be a .npy file or a folder, got {args.data}")


def main(argv=None):
    """Entry point of ``python -m skcueco.train``."""
    args = build_parser().parse_args(argv)
    if args.resume and not args.checkpoint_dir:
        raise SystemExit("error: --resume needs --checkpoint-dir")
    init_distributed(timeout_s=args.timeout)
    params = {}
    if args.recipe:
        from ..recipes import recipe

        params.update(recipe(args.recipe))
    if args.epochs:
        params["max_epochs"] = args.epochs
    if args.batch_size:
        params["batch_size"] = args.batch_size
    params.update(device=args.device, num_workers=args.workers,
                  random_state=args.random_state, verbose=0 if args.quiet else 1)
    resume_from = None
    if args.checkpoint_dir:
        params["callbacks"] = [Checkpoint(args.checkpoint_dir)]
        saved = sorted(Path(args.checkpoint_dir).glob("epoch-*.pt"))
        if args.resume and saved:
            resume_from = saved[-1]
    X = load_data(args)
    embedder = CueCoEmbedder(**params).fit(X, resume_from=resume_from)
    embedder.save(args.out)
    if is_main_process():
        last = embedder.history_.iloc[-1]
        print(f"trained {embedder.n_iter_} epochs on {embedder.device_}: final loss "
              f"{last['loss']:.4f}; model written to {args.out}")
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
