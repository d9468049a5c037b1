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
The model is written with :meth:`skcueco.CueCoEmbedder.save` (tensors and
JSON, read back with :meth:`skcueco.CueCoEmbedder.load`); ``--save-format
pickle`` writes a joblib pickle instead.
"""

import argparse
import os
import sys
from pathlib import Path

from .main import (
    DEFAULT_CLUSTER_WARMUP,
    CLIError,
    dump_pickle,
    plural,
    prog_name,
    read_npy,
    warmup_value,
    warmup_warning,
)

RECIPE_NAMES = ("cifar10", "cifar100", "imagenet100")
# the library's defaults, repeated so that --help imports nothing heavy (a
# test checks that they match)
DEFAULT_TIMEOUT_S = 600  # skcueco.training.distributed.DEFAULT_TIMEOUT_S
DEFAULT_MAX_EPOCHS = 100  # CueCoEmbedder(max_epochs=...)


def build_parser(prog=None):
    """The argument parser of the command-line trainer.

    Parameters
    ----------
    prog : str, default=None
        Program name for the usage line; default: ``python -m skcueco.train``.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog=prog or prog_name("skcueco.train"),
        description="Train a CueCoEmbedder without labels and save it (rank 0).",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="a .npy array of images, or a folder of images "
                        "(class sub-folders allowed)")
    source.add_argument("--cifar10", metavar="ROOT", help="CIFAR-10 in torchvision's layout")
    source.add_argument("--cifar100", metavar="ROOT", help="CIFAR-100 in torchvision's layout")
    source.add_argument("--imagenet100", metavar="ROOT",
                        help="ImageNet in ImageFolder layout; the ImageNet-100 classes are used")
    parser.add_argument("--recipe", choices=RECIPE_NAMES,
                        help="the hyper-parameters of one of the method's data sets")
    parser.add_argument("--epochs", type=int, help="override the recipe's max_epochs")
    parser.add_argument("--cluster-warmup", type=warmup_value, metavar="N",
                        help="epochs trained before the clustering term switches on, or "
                        f"auto (default: the recipe's, else {DEFAULT_CLUSTER_WARMUP})")
    parser.add_argument("--cluster-targets", choices=("centroids", "graph"),
                        help="what the clustering term trains towards: centroids (the "
                        "default) or graph (the neighbourhood graph's clusters, refreshed "
                        "every epoch)")
    parser.add_argument("--batch-size", type=int, help="per process; overrides the recipe")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:1 or mps (default: auto)")
    parser.add_argument("--workers", type=int, default=0, help="loader worker processes")
    parser.add_argument("--random-state", type=int, default=0)
    parser.add_argument("--checkpoint-dir", help="save the training state here every epoch")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest checkpoint in --checkpoint-dir")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                        help="seconds a process waits for the others before failing")
    parser.add_argument("--out", required=True, help="where to write the model")
    parser.add_argument("--save-format", choices=("safe", "pickle"), default="safe",
                        help="safe (default): CueCoEmbedder.save, read back with "
                        "CueCoEmbedder.load and never runs code; pickle: joblib")
    parser.add_argument("--quiet", action="store_true")
    return parser


def training_params(args):
    """The estimator parameters the command line asks for.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    params : dict
        Keyword arguments for :class:`~skcueco.CueCoEmbedder` (without
        callbacks).
    """
    params = {}
    if args.recipe:
        from ..recipes import recipe

        params.update(recipe(args.recipe))
    if args.epochs is not None:
        params["max_epochs"] = args.epochs
    if args.cluster_warmup is not None:
        params["cluster_warmup"] = args.cluster_warmup
    if args.cluster_targets is not None:
        params["cluster_targets"] = args.cluster_targets
    if args.batch_size is not None:
        params["batch_size"] = args.batch_size
    params.update(num_workers=args.workers, random_state=args.random_state,
                  verbose=0 if args.quiet else 1)
    return params


def check_args(args):
    """Problems that can be found before the data is read or training starts.

    The options are checked in the order ``--help`` lists them, so the error
    reported is the first one on the command line's list of options.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    warnings : list of str
        One-line warnings to print.

    Raises
    ------
    CLIError
        If an argument is invalid or a named file or folder does not exist.
    """
    for option in ("cifar10", "cifar100", "imagenet100"):
        root = getattr(args, option)
        if root is not None and not os.path.isdir(root):
            raise CLIError(f"--{option}: no such folder: {root}")
    if args.data is not None:
        path = Path(args.data)
        if not path.exists():
            raise CLIError(f"--data: no such file or folder: {args.data}")
        if not (path.is_dir() or path.suffix == ".npy"):
            raise CLIError(f"--data must be a .npy file or a folder, got {args.data}")
    for option in ("epochs", "batch_size"):
        value = getattr(args, option)
        if value is not None and value < 1:
            raise CLIError(f"--{option.replace('_', '-')} must be at least 1, got {value}")
    if args.workers < 0:
        raise CLIError(f"--workers must be at least 0, got {args.workers}")
    if args.resume and not args.checkpoint_dir:
        raise CLIError("--resume needs --checkpoint-dir")
    if not args.timeout > 0:
        raise CLIError(f"--timeout must be above 0, got {args.timeout}")
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise CLIError(f"--out: no such folder: {folder}")
    defaults = {"max_epochs": DEFAULT_MAX_EPOCHS, "cluster_warmup": DEFAULT_CLUSTER_WARMUP}
    params = {**defaults, **training_params(args)}
    note = warmup_warning(params["max_epochs"], params["cluster_warmup"],
                          epochs_option="--epochs" if args.epochs is not None else "epochs")
    return [] if note is None else [note]


def load_data(args):
    """The training images named on the command line.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    X : ndarray, str or ImageSource
        What :meth:`skcueco.CueCoEmbedder.fit` receives.

    Raises
    ------
    CLIError
        If the data cannot be read.
    """
    from ..data import datasets

    try:
        if args.cifar10:
            return datasets.load_cifar10(args.cifar10, train=True)[0]
        if args.cifar100:
            return datasets.load_cifar100(args.cifar100, train=True)[0]
        if args.imagenet100:
            return datasets.load_imagenet100(args.imagenet100, split="train")[0]
        path = Path(args.data)
        if path.is_dir():
            return str(path)  # CueCoEmbedder reads folders of images lazily
    except (OSError, RuntimeError, ValueError) as exc:
        raise CLIError(f"cannot read the training data: {str(exc).splitlines()[0]}") from None
    return read_npy(args.data, "--data")  # a .npy file of numbers, never unpickled


def main(argv=None):
    """Entry point of ``python -m skcueco.train``.

    Parameters
    ----------
    argv : list of str, default=None
        The arguments; default: ``sys.argv[1:]``.

    Returns
    -------
    status : int
        0 on success. Errors exit with status 2 and one line on stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        notes = check_args(args)
        return _train(args, parser.prog, notes)
    except CLIError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _train(args, prog, notes):
    from .. import CueCoEmbedder
    from ..callbacks import Checkpoint
    from ..training.distributed import init_distributed, is_main_process, shutdown_distributed
    from .main import check_device

    params = training_params(args)
    params["device"] = args.device
    if args.device != "auto":
        check_device(args.device)
    init_distributed(timeout_s=args.timeout)
    if is_main_process():
        for note in notes:
            print(f"{prog}: {note}", file=sys.stderr)
    resume_from = None
    if args.checkpoint_dir:
        params["callbacks"] = [Checkpoint(args.checkpoint_dir)]
        if args.resume:
            # the newest checkpoint of the run that owns the folder; a folder
            # mixing runs (or holding other epoch-*.pt files) is refused
            try:
                resume_from = Checkpoint.latest(args.checkpoint_dir)
            except ValueError as exc:
                raise CLIError(f"--resume: {exc}") from None
    X = load_data(args)
    try:
        embedder = CueCoEmbedder(**params).fit(X, resume_from=resume_from)
    except ValueError as exc:  # bad parameters, data or checkpoint, named by the library
        raise CLIError(str(exc).splitlines()[0]) from None
    try:
        if args.save_format == "pickle":
            if is_main_process():
                dump_pickle(embedder, args.out)
        else:
            embedder.save(args.out)  # writes on rank 0 only
    except OSError as exc:
        raise CLIError(f"--out: {exc}") from None
    if is_main_process():
        last = embedder.history_.iloc[-1]
        print(f"trained {plural(embedder.n_iter_, 'epoch')} on {embedder.device_}: final "
              f"loss {last['loss']:.4f}; model written to {args.out} ({args.save_format})")
    shutdown_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
