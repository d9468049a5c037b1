"""The command-line programs: names, fast help, defaults, and the trainer
(``python -m skcueco.train``)."""

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from skcueco import CueCoEmbedder
from skcueco.cli import main as cli_main
from skcueco.cli import train as cli_train

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv0, expected", [
    ("/venv/bin/skcueco", "skcueco"),
    ("C:\\venv\\Scripts\\skcueco.exe", "skcueco.exe"),
    (str(ROOT / "skcueco" / "__main__.py"), "python -m skcueco"),
    ("-c", "python -m skcueco"),
    ("", "python -m skcueco"),
])
def test_prog_name_follows_how_the_program_was_started(monkeypatch, argv0, expected):
    if "\\" in argv0 and os.sep == "/":
        argv0 = argv0.replace("\\", "/")
    monkeypatch.setattr(sys, "argv", [argv0])
    assert cli_main.prog_name("skcueco") == expected


def test_console_script_usage_names_the_script():
    script = shutil.which("skcueco", path=sysconfig.get_path("scripts"))
    if script is None:
        pytest.skip("the skcueco console script is not installed (pip install -e .)")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, check=True)
    assert result.stdout.startswith("usage: skcueco ")


def test_trainer_help_names_the_module():
    result = subprocess.run([sys.executable, "-m", "skcueco.train", "--help"],
                            capture_output=True, text=True, check=True)
    assert result.stdout.startswith("usage: python -m skcueco.train ")
    for option in ("--cluster-warmup", "--cluster-targets", "--save-format", "--recipe"):
        assert option in result.stdout


def test_parsing_the_command_line_imports_neither_torch_nor_sklearn():
    # as `python -m skcueco --help` and the console script do: the package's
    # own __init__ runs first, so it must not import them either
    code = """
import sys
import skcueco
from skcueco.cli import main, train
main.build_parser().parse_args(["--epochs", "3"])
train.build_parser().parse_args(["--data", "x.npy", "--out", "m.pt"])
heavy = sorted(m for m in ("torch", "sklearn", "numpy", "pandas") if m in sys.modules)
print(",".join(heavy))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.strip() == ""


def test_the_package_imports_its_estimators_on_first_use():
    code = """
import sys
import skcueco
before = "torch" in sys.modules
from skcueco import CueCoClassifier, CueCoEmbedder, ImageSource
from skcueco._embedder import CueCoEmbedder as direct
print(before, "torch" in sys.modules, CueCoEmbedder is direct, sorted(skcueco.__all__) == sorted(
    n for n in dir(skcueco) if n in skcueco.__all__))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True, cwd=ROOT)
    assert result.stdout.split() == ["False", "True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'CueCoNothing'"):
        import skcueco

        skcueco.CueCoNothing


def test_cli_defaults_match_the_library():
    from skcueco.backbones import BACKBONE_NAMES
    from skcueco.training.distributed import DEFAULT_TIMEOUT_S

    assert cli_main.BACKBONE_CHOICES == tuple(BACKBONE_NAMES)
    assert cli_train.DEFAULT_TIMEOUT_S == DEFAULT_TIMEOUT_S
    defaults = CueCoEmbedder().get_params()
    assert cli_train.DEFAULT_MAX_EPOCHS == defaults["max_epochs"]
    assert cli_main.DEFAULT_CLUSTER_WARMUP == defaults["cluster_warmup"]
    from skcueco.recipes import recipe_names

    assert sorted(cli_train.RECIPE_NAMES) == recipe_names()


@pytest.mark.parametrize("n, expected", [(0, "0 epochs"), (1, "1 epoch"), (2, "2 epochs")])
def test_plural(n, expected):
    assert cli_main.plural(n, "epoch") == expected


# -- python -m skcueco.train ------------------------------------------------------


def _train_status_and_stderr(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli_train.main(argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv, message", [
    (["--data", "missing.npy"], "--data: no such file or folder: missing.npy"),
    (["--cifar10", "no/such/root"], "--cifar10: no such folder: no/such/root"),
    (["--data", "README.rst"], "--data must be a .npy file or a folder, got README.rst"),
    (["--data", "skcueco", "--resume"], "--resume needs --checkpoint-dir"),
    (["--data", "skcueco", "--epochs", "0"], "--epochs must be at least 1, got 0"),
])
def test_trainer_errors_are_one_line_with_status_2(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status, lines = _train_status_and_stderr([*argv, "--out", "m.pt"], capsys)
    assert status == 2
    assert len(lines) == 1 and lines[0].endswith(message), lines


def test_trainer_out_folder_must_exist(tmp_path, capsys):
    status, lines = _train_status_and_stderr(
        ["--data", str(tmp_path), "--out", str(tmp_path / "no" / "m.pt")], capsys)
    assert status == 2 and lines[0].endswith(f"--out: no such folder: {tmp_path / 'no'}")


def test_trainer_unavailable_device(tmp_path, capsys):
    np.save(tmp_path / "X.npy", np.zeros((8, 8, 8), dtype=np.uint8))
    status, lines = _train_status_and_stderr(
        ["--data", str(tmp_path / "X.npy"), "--device", "cuda:99", "--epochs", "1",
         "--out", str(tmp_path / "m.pt")], capsys)
    assert status == 2 and len(lines) == 1 and "error: --device:" in lines[0]


def test_trainer_warns_when_the_warmup_covers_the_run(tmp_path):
    args = cli_train.build_parser().parse_args(
        ["--data", str(tmp_path), "--recipe", "cifar10", "--epochs", "10",
         "--out", str(tmp_path / "m.pt")])
    (note,) = cli_train.check_args(args)  # the recipe's warm-up is 10 epochs
    assert note.startswith("warning: --epochs 10 <= --cluster-warmup 10: the clustering "
                           "term never switches on")
    args.cluster_warmup = 2
    assert cli_train.check_args(args) == []
    args.cluster_warmup = "auto"
    assert cli_train.check_args(args) == []


def test_trainer_passes_the_cluster_targets(tmp_path, capsys):
    parse = cli_train.build_parser().parse_args
    base = ["--data", str(tmp_path), "--out", str(tmp_path / "m.pt")]
    assert "cluster_targets" not in cli_train.training_params(parse(base))
    for targets in ("graph", "centroids"):
        params = cli_train.training_params(parse([*base, "--cluster-targets", targets]))
        assert params["cluster_targets"] == targets
    with pytest.raises(SystemExit) as info:
        parse([*base, "--cluster-targets", "kmeans"])
    assert info.value.code == 2
    assert "--cluster-targets: invalid choice: 'kmeans'" in capsys.readouterr().err


def _images(n=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8), dtype=np.uint8)


def test_trainer_writes_the_safe_format(tmp_path, capsys):
    np.save(tmp_path / "X.npy", _images())
    out = tmp_path / "m.pt"
    assert cli_train.main(["--data", str(tmp_path / "X.npy"), "--epochs", "2",
                           "--cluster-warmup", "1", "--batch-size", "32", "--device", "cpu",
                           "--quiet", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "trained 2 epochs on cpu" in captured.out
    assert "warning" not in captured.err
    model = CueCoEmbedder.load(out)
    assert model.cluster_warmup == 1 and model.batch_size == 32
    assert model.transform(_images(3)).shape[0] == 3


def test_trainer_writes_a_pickle_on_request(tmp_path, capsys):
    import joblib

    np.save(tmp_path / "X.npy", _images())
    out = tmp_path / "m.joblib"
    cli_train.main(["--data", str(tmp_path / "X.npy"), "--epochs", "1", "--batch-size", "32",
                    "--device", "cpu", "--quiet", "--save-format", "pickle",
                    "--out", str(out)])
    captured = capsys.readouterr()
    assert "trained 1 epoch on cpu" in captured.out
    assert "warning" not in captured.err  # the default warm-up is a fraction of the run
    assert joblib.load(out).n_iter_ == 1


# -- python -m skcueco: data without labels, the order of errors, .npy files -------------


FAST_MAIN = ["--epochs", "2", "--cluster-warmup", "1", "--batch-size", "64",
             "--n-clusters", "2", "--quiet", "--device", "cpu"]


def _main_status_and_stderr(argv, capsys):
    with pytest.raises(SystemExit) as info:
        cli_main.main(argv)
    return info.value.code, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("save_format", ["safe", "pickle"])
def test_data_without_labels_fits_reports_clusters_and_saves(tmp_path, capsys, save_format):
    import joblib

    X = _images(80)
    np.save(tmp_path / "X.npy", X)
    out = tmp_path / "model"
    assert cli_main.main(["--data", str(tmp_path / "X.npy"), *FAST_MAIN, "--save", str(out),
                          "--save-format", save_format]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert "80 samples without labels: no probe" in captured.out
    assert "probe accuracy" not in captured.out
    sizes = [int(line.split()[-1]) for line in captured.out.splitlines()
             if re.match(r"cluster \d+ ", line)]
    assert len(sizes) == 2 and sum(sizes) == 80  # every sample, no held-out split
    assert "final training loss: " in captured.out
    assert "for 2 epochs on cpu" in captured.out
    model = CueCoEmbedder.load(out) if save_format == "safe" else joblib.load(out)
    assert model.n_iter_ == 2
    # the sizes printed are the fitted model's clusters of the data
    assert np.bincount(model.predict(X), minlength=2).tolist() == sizes
    assert f"final training loss: {model.history_['loss'].iloc[-1]:.4f}" in captured.out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "model"]


def test_run_returns_the_cluster_sizes_without_labels(tmp_path, capsys):
    np.save(tmp_path / "X.npy", _images(80))
    args = cli_main.build_parser().parse_args(["--data", str(tmp_path / "X.npy"), *FAST_MAIN])
    rows = cli_main.run(args)
    assert [name for name, _ in rows] == ["cluster 0", "cluster 1"]
    assert sum(n for _, n in rows) == 80


@pytest.mark.parametrize("extra, message", [
    # each error used to be hidden behind "--labels is required with --data"
    (["--data", "{tmp}/missing.npy"], "--data: no such file: {tmp}/missing.npy"),
    (["--data", "{tmp}/X.npy", "--epochs", "0"], "--epochs must be at least 1, got 0"),
    (["--data", "{tmp}/X.npy", "--batch-size", "1"], "--batch-size must be at least 2, got 1"),
    (["--data", "{tmp}/X.npy", "--save", "{tmp}/no/m.pt"], "--save: no such folder: {tmp}/no"),
    # checked in the order of the options: the first one wrong is reported
    (["--data", "{tmp}/missing.npy", "--epochs", "0"], "--data: no such file: {tmp}/missing.npy"),
    (["--data", "{tmp}/X.npy", "--labels", "{tmp}/none.npy", "--epochs", "0"],
     "--labels: no such file: {tmp}/none.npy"),
    (["--epochs", "0", "--test-size", "2"], "--epochs must be at least 1, got 0"),
    (["--labels", "{tmp}/X.npy"], "--labels needs --data (the digits come with their own labels)"),
    (["--n-clusters", "0"], "--n-clusters must be at least 1, got 0"),
])
def test_main_errors_come_in_the_order_of_the_options(tmp_path, capsys, extra, message):
    np.save(tmp_path / "X.npy", _images(16))
    argv = [a.format(tmp=tmp_path) for a in extra]
    status, lines = _main_status_and_stderr(argv, capsys)
    assert status == 2
    assert len(lines) == 1 and lines[0].endswith(message.format(tmp=tmp_path)), lines


def test_unlabeled_data_on_a_device_this_machine_lacks(tmp_path, capsys):
    np.save(tmp_path / "X.npy", _images(16))
    status, lines = _main_status_and_stderr(
        ["--data", str(tmp_path / "X.npy"), "--device", "cuda:99", "--epochs", "1"], capsys)
    assert status == 2 and len(lines) == 1 and "error: --device:" in lines[0]


def _not_npy_files(tmp_path):
    import pickle

    text = tmp_path / "text.npy"
    text.write_text("1 2 3\n4 5 6\n")
    pickled = tmp_path / "pickled.npy"
    pickled.write_bytes(pickle.dumps(np.arange(6)))
    short = tmp_path / "short.npy"
    short.write_bytes(b"\x93NU")
    truncated = tmp_path / "truncated.npy"
    np.save(truncated, np.arange(1000, dtype=np.float64))
    truncated.write_bytes(truncated.read_bytes()[:500])
    return {text: "not a valid .npy file", pickled: "not a valid .npy file",
            short: "not a valid .npy file", truncated: "not a valid .npy file"}


def _objects_file(tmp_path):
    path = tmp_path / "objects.npy"
    np.save(path, np.array([1, "a", None], dtype=object), allow_pickle=True)
    return path


def _assert_names_the_file_and_never_suggests_unpickling(lines, option, path, reason):
    assert len(lines) == 1, lines
    assert f"error: {option}: cannot read {path}: " in lines[0]
    assert reason in lines[0]
    said = lines[0].replace(str(path), "PATH")
    for unsafe in ("allow_pickle", "unsafe", "pickle", "trust"):
        assert unsafe not in said, said


@pytest.mark.parametrize("option", ["--data", "--labels"])
def test_main_refuses_files_that_are_not_npy_and_never_suggests_unpickling(
        tmp_path, capsys, option):
    np.save(tmp_path / "X.npy", _images(6))
    np.save(tmp_path / "y.npy", np.arange(6) % 2)
    cases = {**_not_npy_files(tmp_path), _objects_file(tmp_path): "holds Python objects"}
    for path, reason in cases.items():
        argv = ["--data", str(tmp_path / "X.npy"), "--labels", str(tmp_path / "y.npy")]
        argv[argv.index(option) + 1] = str(path)
        status, lines = _main_status_and_stderr([*argv, *FAST_MAIN], capsys)
        assert status == 2
        _assert_names_the_file_and_never_suggests_unpickling(lines, option, path, reason)


def test_trainer_refuses_files_that_are_not_npy_and_never_suggests_unpickling(tmp_path, capsys):
    cases = {**_not_npy_files(tmp_path), _objects_file(tmp_path): "holds Python objects"}
    for path, reason in cases.items():
        status, lines = _train_status_and_stderr(
            ["--data", str(path), "--device", "cpu", "--out", str(tmp_path / "m.pt")], capsys)
        assert status == 2
        _assert_names_the_file_and_never_suggests_unpickling(lines, "--data", path, reason)
    assert not (tmp_path / "m.pt").exists()


def test_read_npy_reads_what_numpy_save_wrote(tmp_path):
    X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    np.save(tmp_path / "X.npy", X)
    np.testing.assert_array_equal(cli_main.read_npy(str(tmp_path / "X.npy"), "--data"), X)


@pytest.mark.parametrize("argv, message", [
    # --data comes before --resume in the options: its error is the one reported
    (["--data", "missing.npy", "--resume"], "--data: no such file or folder: missing.npy"),
    (["--data", "missing.npy", "--epochs", "0"], "--data: no such file or folder: missing.npy"),
    (["--data", "skcueco", "--epochs", "0", "--resume"], "--epochs must be at least 1, got 0"),
    (["--data", "skcueco", "--workers", "-1"], "--workers must be at least 0, got -1"),
    (["--data", "skcueco", "--timeout", "0"], "--timeout must be above 0, got 0.0"),
])
def test_trainer_errors_come_in_the_order_of_the_options(argv, message, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    status, lines = _train_status_and_stderr([*argv, "--out", "m.pt"], capsys)
    assert status == 2
    assert len(lines) == 1 and lines[0].endswith(message), lines


def test_dump_pickle_leaves_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    import joblib

    path = tmp_path / "m.joblib"
    cli_main.dump_pickle({"old": 1}, path)
    assert joblib.load(path) == {"old": 1}

    def broken_dump(obj, file):
        file.write(b"half a pickle")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(joblib, "dump", broken_dump)
    with pytest.raises(OSError, match="No space left"):
        cli_main.dump_pickle({"new": 2}, path)
    monkeypatch.undo()
    assert joblib.load(path) == {"old": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.joblib"]  # no temporary file left
