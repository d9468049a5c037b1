"""The command-line programs: names, fast help, defaults, and the trainer
(``python -m skcueco.train``)."""

import os
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

ROOT = Path(__file__).resolve().parents[1]


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
    for option in ("--cluster-warmup", "--save-format", "--recipe"):
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
