"""The main job: fit CueCo on a data set and compare linear-probe accuracies.

Run ``python -m skcueco`` (or the ``skcueco`` console script). Without
``--data`` it uses scikit-learn's digits, which ship with scikit-learn.
``--data`` without ``--labels`` fits on all of the data and reports what
needs no labels: the training loss and the size of each cluster.

The parser needs nothing but the standard library, so ``--help`` and
argument errors answer at once; PyTorch and scikit-learn are imported only
when a job runs.
"""

import argparse
import os
import sys
import time

# keep in sync with skcueco.backbones.BACKBONE_NAMES (a test checks it); not
# imported from there because that module imports torch
BACKBONE_CHOICES = ("auto", "small_cnn", "mlp", "resnet18", "resnet50")

# settings that make the digits demo finish in well under two minutes on two
# CPU cores; everything else is the estimator's default
DEMO_PARAMS = dict(hidden_dim=512)

# the estimator's default: 15 % of the epochs (a test checks that they match)
DEFAULT_CLUSTER_WARMUP = "auto"


class CLIError(Exception):
    """A problem with the command line or its files, reported in one line."""


def prog_name(module):
    """How the program is called in usage lines and error messages.

    Parameters
    ----------
    module : str
        The module run by ``python -m``, e.g. ``"skcueco"``.

    Returns
    -------
    prog : str
        The console script's name (``skcueco``) when run as that script,
        ``python -m <module>`` otherwise.
    """
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not name or name.endswith(".py") or name.startswith("-") or name.startswith("python"):
        return f"python -m {module}"
    return name


def warmup_value(text):
    """Parse ``--cluster-warmup``: ``"auto"`` or a number of epochs.

    Parameters
    ----------
    text : str
        The option's value.

    Returns
    -------
    warmup : int or "auto"

    Raises
    ------
    argparse.ArgumentTypeError
        If ``text`` is neither ``"auto"`` nor an integer of 0 or more.
    """
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected 'auto' or an integer >= 0, got {text!r}")
    return value


def warmup_warning(epochs, warmup, epochs_option="--epochs"):
    """A one-line warning when the clustering term would never switch on.

    Parameters
    ----------
    epochs : int
        Training epochs.
    warmup : int or "auto"
        Epochs trained before the clustering term starts. ``"auto"`` (a
        fraction of the epochs) always leaves epochs with the term on.
    epochs_option : str, default="--epochs"
        How the epochs are named in the message.

    Returns
    -------
    warning : str or None
    """
    if warmup == "auto" or epochs > warmup:
        return None
    return (f"warning: {epochs_option} {epochs} <= --cluster-warmup {warmup}: the clustering "
            "term never switches on (this trains plain MoCo v2); lower --cluster-warmup "
            "or raise --epochs")


def plural(n, word):
    """``"1 epoch"``, ``"2 epochs"``.

    Parameters
    ----------
    n : int
        The count.
    word : str
        The singular noun.

    Returns
    -------
    text : str
    """
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def build_parser(prog=None):
    """The argument parser of the main job.

    Parameters
    ----------
    prog : str, default=None
        Program name for the usage line; default: :func:`prog_name`.

    Returns
    -------
    parser : argparse.ArgumentParser
    """
    parser = argparse.ArgumentParser(
        prog=prog or prog_name("skcueco"),
        description=(
            "Fit a CueCoEmbedder without labels, then compare the accuracy of a "
            "logistic-regression probe on a held-out split for CueCo embeddings, "
            "raw inputs and the same network untrained."
        ),
    )
    parser.add_argument("--data", help="a .npy file of images or feature vectors "
                        "(default: scikit-learn's digits)")
    parser.add_argument("--labels", help="a .npy file of labels for the probe; without "
                        "it, --data is fitted whole and the cluster sizes are reported")
    parser.add_argument("--epochs", type=int, default=40, help="training epochs (default: 40)")
    parser.add_argument("--cluster-warmup", type=warmup_value, default=DEFAULT_CLUSTER_WARMUP,
                        metavar="N", help="epochs trained before the clustering term "
                        "switches on; must be below --epochs for it to be used at all "
                        "(default: auto, 15%% of --epochs)")
    parser.add_argument("--backbone", default="auto", choices=BACKBONE_CHOICES,
                        help="backbone network (default: auto)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per training step (default: the library's size-aware "
                        "rule, 64 on digits)")
    parser.add_argument("--n-clusters", type=int, default=10,
                        help="number of centroids (default: 10)")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:1 or mps (default: auto)")
    parser.add_argument("--test-size", type=float, default=0.25,
                        help="held-out fraction for the probe, with labels (default: 0.25)")
    parser.add_argument("--random-state", type=int, default=0, help="seed (default: 0)")
    parser.add_argument("--save", metavar="PATH",
                        help="write the fitted embedder here (see --save-format)")
    parser.add_argument("--save-format", choices=("safe", "pickle"), default="safe",
                        help="safe (default): tensors and JSON, read back with "
                        "CueCoEmbedder.load(PATH) and never runs code; pickle: joblib, "
                        "read back with joblib.load(PATH), keeps the training state")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def check_args(args):
    """Problems that can be found before anything is imported or trained.

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
        If an argument is invalid or a named file does not exist.
    """
    for option, path in (("--data", args.data), ("--labels", args.labels)):
        if path is not None and not os.path.isfile(path):
            raise CLIError(f"{option}: no such file: {path}")
    if args.labels is not None and args.data is None:
        raise CLIError("--labels needs --data (the digits come with their own labels)")
    if args.epochs < 1:
        raise CLIError(f"--epochs must be at least 1, got {args.epochs}")
    if args.batch_size is not None and args.batch_size < 2:
        raise CLIError(f"--batch-size must be at least 2, got {args.batch_size}")
    if args.n_clusters < 1:
        raise CLIError(f"--n-clusters must be at least 1, got {args.n_clusters}")
    if not 0.0 < args.test_size < 1.0:
        raise CLIError(f"--test-size must be between 0 and 1, got {args.test_size}")
    if args.save is not None:
        folder = os.path.dirname(os.path.abspath(args.save))
        if not os.path.isdir(folder):
            raise CLIError(f"--save: no such folder: {folder}")
    note = warmup_warning(args.epochs, args.cluster_warmup)
    return [] if note is None else [note]


def check_device(name):
    """The torch device named on the command line, if this machine has it.

    Parameters
    ----------
    name : str

    Returns
    -------
    device : torch.device

    Raises
    ------
    CLIError
        If the name is invalid or the device is not available.
    """
    from ..training.device import resolve_device

    try:
        return resolve_device(name)
    except ValueError as exc:
        raise CLIError(f"--device: {exc}") from None


def read_npy(path, option):
    """Read a numeric array from a .npy file, refusing anything else.

    A file without the .npy header (a text or pickle file named ``.npy``)
    and an array of Python objects are refused with a message naming the
    file; nothing is ever unpickled.

    Parameters
    ----------
    path : str
        The file.
    option : str
        The command-line option that named it, e.g. ``"--data"``.

    Returns
    -------
    array : ndarray

    Raises
    ------
    CLIError
        If the file cannot be read or is not a .npy file of numbers.
    """
    import numpy as np

    fmt = np.lib.format
    try:
        with open(path, "rb") as f:
            try:
                major, _ = fmt.read_magic(f)
                read_header = fmt.read_array_header_1_0 if major == 1 else fmt.read_array_header_2_0
                _, _, dtype = read_header(f)
            except ValueError:
                raise CLIError(
                    f"{option}: cannot read {path}: it is not a valid .npy file (it lacks "
                    "the header that numpy.save writes)") from None
        if dtype.hasobject:
            raise CLIError(f"{option}: cannot read {path}: it holds Python objects (dtype "
                           f"{dtype}), not numbers; save a numeric array with numpy.save")
        return np.load(path, allow_pickle=False)
    except OSError as exc:
        raise CLIError(f"{option}: cannot read {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # a damaged file: truncated data, an impossible header
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CLIError(f"{option}: cannot read {path}: it is not a valid .npy file "
                       f"({reason})") from None


def load_data(args):
    """The data, the labels and a name for them.

    Parameters
    ----------
    args : argparse.Namespace

    Returns
    -------
    X : ndarray
    y : ndarray or None
        None when ``--data`` comes without ``--labels``.
    name : str

    Raises
    ------
    CLIError
        If a file cannot be read or the counts differ.
    """
    if args.data is None:
        from sklearn.datasets import load_digits

        digits = load_digits()
        return digits.images, digits.target, "digits (scikit-learn)"
    X = read_npy(args.data, "--data")
    if args.labels is None:
        return X, None, args.data
    y = read_npy(args.labels, "--labels")
    if len(X) != len(y):
        raise CLIError(f"{len(X)} samples in --data but {len(y)} labels in --labels")
    return X, y, args.data


def probe_accuracy(Z_train, y_train, Z_test, y_test):
    """Held-out accuracy of a standardised logistic regression on the features.

    Parameters
    ----------
    Z_train, Z_test : array-like of shape (n_samples, n_features)
        Features of the training and held-out samples.
    y_train, y_test : array-like of shape (n_samples,)
        Their labels.

    Returns
    -------
    accuracy : float
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
    return probe.fit(Z_train, y_train).score(Z_test, y_test)


def run(args, notes=(), prog="skcueco"):
    """Fit, then print the probe table (with labels) or the cluster sizes.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed and checked by :func:`check_args`.
    notes : sequence of str, default=()
        Warnings from :func:`check_args`, printed to stderr once the data and
        the device have been checked, before training.
    prog : str, default="skcueco"
        Program name that starts each warning.

    Returns
    -------
    rows : list of (str, float)
        ``(features, probe accuracy)`` for each row of the table; without
        labels, ``("cluster i", number of samples)`` for each cluster.

    Raises
    ------
    CLIError
        If the data, a parameter or the device is unusable.
    """
    device = check_device(args.device)
    X, y, name = load_data(args)

    from .. import CueCoEmbedder

    if y is None:
        X_train = X
        print(f"Data: {name}, {len(X)} samples without labels: no probe "
              "(--labels adds one)")
    else:
        from sklearn.model_selection import train_test_split

        try:
            X_train, X_test, y_train, y_test = train_test_split(
                X, y, test_size=args.test_size, random_state=args.random_state, stratify=y
            )
        except ValueError as exc:
            raise CLIError(f"cannot split the data for the probe: {exc}") from None
        print(f"Data: {name}, {len(X_train)} training and {len(X_test)} held-out samples")
    params = dict(
        DEMO_PARAMS, backbone=args.backbone, max_epochs=args.epochs,
        cluster_warmup=args.cluster_warmup,
        batch_size="auto" if args.batch_size is None else args.batch_size,
        n_clusters=args.n_clusters, device=str(device),
        random_state=args.random_state, verbose=0 if args.quiet else 1,
    )
    for note in notes:
        print(f"{prog}: {note}", file=sys.stderr)

    start = time.perf_counter()
    try:
        embedder = CueCoEmbedder(**params).fit(X_train)
    except ValueError as exc:  # bad parameters or data, named by the estimator
        raise CLIError(str(exc).splitlines()[0]) from None
    fit_seconds = time.perf_counter() - start

    print()
    if y is None:
        rows = _cluster_sizes(embedder, X_train)
        print(f"{'cluster':<20} {'samples':>15}")
        print(f"{'-' * 20} {'-' * 15}")
        for label, count in rows:
            print(f"{label:<20} {count:>15d}")
        last = embedder.history_.iloc[-1]
        print()
        print(f"final training loss: {last['loss']:.4f} (contrastive {last['contrastive']:.4f}, "
              f"clustering {last['clustering']:.4f})")
    else:
        untrained = CueCoEmbedder(**params)._fit_untrained(X_train)
        flat_train = X_train.reshape(len(X_train), -1)
        flat_test = X_test.reshape(len(X_test), -1)
        rows = [
            ("CueCo embeddings", probe_accuracy(
                embedder.transform(X_train), y_train, embedder.transform(X_test), y_test)),
            ("raw inputs", probe_accuracy(flat_train, y_train, flat_test, y_test)),
            ("untrained network", probe_accuracy(
                untrained.transform(X_train), y_train, untrained.transform(X_test), y_test)),
        ]
        print(f"{'features':<20} {'probe accuracy':>15}")
        print(f"{'-' * 20} {'-' * 15}")
        for label, acc in rows:
            print(f"{label:<20} {acc:>15.4f}")
    print()
    print(f"fit time: {fit_seconds:.1f} s for {plural(embedder.n_iter_, 'epoch')} on "
          f"{embedder.device_} ({type(embedder.encoder_).__name__} backbone, "
          f"{len(embedder.get_feature_names_out())} features)")
    if args.save:
        try:
            if args.save_format == "pickle":
                dump_pickle(embedder, args.save)
                how = "joblib.load"
            else:
                embedder.save(args.save)
                how = "skcueco.CueCoEmbedder.load"
        except OSError as exc:
            raise CLIError(f"--save: {exc}") from None
        print(f"saved the fitted embedder to {args.save} (read it back with {how})")
    return rows


def dump_pickle(obj, path):
    """``joblib.dump(obj, path)``, atomically.

    The pickle goes to a temporary file in the same folder, is flushed and
    ``fsync``-ed, then renamed over ``path``: ``path`` holds either its
    previous content or the complete new file, whatever happens on the way.

    Parameters
    ----------
    obj : object
        What to pickle.
    path : str or path-like
        Destination file; its folder must exist.

    Raises
    ------
    OSError
        If the file cannot be written; ``path`` is left as it was.
    """
    import joblib

    from ..training.checkpoint import atomic_write

    atomic_write(path, lambda file: joblib.dump(obj, file))


def _cluster_sizes(embedder, X):
    import numpy as np

    counts = np.bincount(embedder.predict(X), minlength=len(embedder.cluster_centers_))
    return [(f"cluster {i}", int(n)) for i, n in enumerate(counts)]


def main(argv=None):
    """Entry point of ``python -m skcueco`` and the ``skcueco`` command.

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
        run(args, notes=check_args(args), prog=parser.prog)
    except CLIError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
