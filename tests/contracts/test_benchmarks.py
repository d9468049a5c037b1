"""The benchmark scripts keep running (their figures are not asserted as timings)."""

import importlib.util
import math
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.filterwarnings(  # two quick epochs on a few images end collapsed
    "ignore::skcueco.training.run.TrainingCollapseWarning")
def test_throughput_quick_mode_prints_ratios(capsys):
    fit_ratio, transform_ratio = _load("throughput").main(
        ["--quick", "--per-image", "--lightly-style"])
    out = capsys.readouterr().out
    assert "CueCoEmbedder.fit" in out and "bare MoCo v2" in out
    assert "fit against the per-image augmentation loop" in out and "goal >= 1.8" in out
    assert "fit against the lightly-style loop" in out
    assert out.count("goal >= 1.8") == 2
    assert "CueCoEmbedder.transform" in out and "peak memory" in out
    for ratio in (fit_ratio, transform_ratio):
        assert math.isfinite(ratio) and ratio > 0


def test_throughput_queue_and_latency_modes_print_ratios(capsys):
    tiny = ["--device", "cpu", "--backbone", "small_cnn", "--image-size", "8",
            "--batch-size", "16", "--n-samples", "64", "--rounds", "2"]
    throughput = _load("throughput")
    extra = throughput.main(tiny + ["--queue", "32", "256", "--steps", "1"])
    ratios = throughput.main(tiny + ["--latency", "--repeats", "2"])
    progress = throughput.main(tiny + ["--progress", "--epochs", "1"])
    batches = throughput.main(tiny + ["--batch-sizes", "8", "16", "--epochs", "1"])
    captured = capsys.readouterr()
    out = captured.out
    assert "queue 256 costs" in out and "latency, 10 image(s)" in out
    assert "fit verbose=2 (per-batch bar)" in out and "goal >= 0.98" in out
    assert "fit by batch size (8 against 16)" in out and "fit batch 8" in out
    assert "img/s" not in captured.err  # the bar's own output is discarded
    assert all(math.isfinite(r) and r > 0 for r in [extra, *ratios, progress, batches])


@pytest.mark.filterwarnings("ignore::skcueco.training.run.TrainingCollapseWarning")
def test_throughput_cluster_targets_mode_prints_the_ratio(capsys):
    ratios = _load("throughput").main(["--cluster-targets", "--device", "cpu", "--epochs", "2",
                                       "--rounds", "1", "--fit-samples", "400",
                                       "--large-set", "450"])
    out = capsys.readouterr().out
    assert "fit seconds by cluster targets, digits, 400 images, 2 epochs" in out
    assert "fit seconds by cluster targets, shapes (28x28), 400 images, 2 epochs" in out
    assert "fit cluster_targets='graph'" in out and "goal <= 1.3" in out
    assert list(ratios) == ["digits", "shapes (28x28)"]
    assert all(math.isfinite(r) and r > 0 for r in ratios.values())


@pytest.mark.filterwarnings("ignore::skcueco.training.run.TrainingCollapseWarning")
def test_throughput_readout_views_mode_prints_the_ratio_and_restores_the_views(capsys):
    import skcueco._readout as readout_module

    views = readout_module.READOUT_VIEWS
    ratios = _load("throughput").main(["--readout-views", "--device", "cpu", "--epochs", "1",
                                       "--rounds", "1", "--fit-samples", "200"])
    out = capsys.readouterr().out
    assert "fit seconds with and without the read-out's views, centred digits (28x28), " \
        "200 images, 1 epochs" in out
    assert f"fit with {views} views in the read-out" in out and "goal <= 1.1" in out
    assert list(ratios) == ["centred digits (28x28)", "RGB scenes (32x32)"]
    assert all(math.isfinite(r) and r > 0 for r in ratios.values())
    assert readout_module.READOUT_VIEWS == views


def test_throughput_cpu_precision_and_folder_modes_print_ratios(capsys):
    tiny = ["--device", "cpu", "--backbone", "small_cnn", "--image-size", "8",
            "--batch-size", "16", "--n-samples", "64", "--rounds", "1", "--epochs", "2",
            "--queue-size", "32"]
    throughput = _load("throughput")
    precision = throughput.main(tiny + ["--cpu-precision", "--precision-backbones", "small_cnn",
                                        "--quality-samples", "96", "--quality-epochs", "1"])
    folder = throughput.main(tiny + ["--folder", "--file-size", "16"])
    out = capsys.readouterr().out
    assert "native bf16: " in out and "capability" in out
    assert "small_cnn: fit bf16 against float32" in out
    assert "small_cnn: transform bf16 against float32" in out
    assert "max abs difference" in out and "linear accuracy" in out and "knn accuracy" in out
    assert "epochs after the first: folder with the cache against the array" in out
    assert "goal >= 0.9" in out and "loader alone" in out
    assert all(math.isfinite(r) and r > 0 for r in [*precision, folder])


@pytest.mark.filterwarnings("ignore::skcueco.training.run.TrainingCollapseWarning")
def test_throughput_compares_trees_on_a_data_set_with_options_set(tmp_path, capsys):
    import numpy as np

    throughput = _load("throughput")
    options = ["--set", "cluster_negatives=drop", "--set", "queue_size=32"]
    est = throughput.make_estimator(throughput.parse_args(options))
    assert est.cluster_negatives == "drop" and est.queue_size == 32
    rng = np.random.default_rng(0)
    data = tmp_path / "tiny.npz"
    np.savez(data, X=rng.integers(0, 256, (80, 8, 8), dtype=np.uint8), y=np.arange(80) % 4)
    ratio = throughput.main(["--device", "cpu", "--backbone", "small_cnn", "--batch-size", "16",
                             "--epochs", "2", "--rounds", "1", "--no-transform",
                             "--dataset", str(data), *options,
                             "--compare-to", str(BENCHMARKS.parent)])
    out = capsys.readouterr().out
    assert "fit (whole calls, one fresh process each)" in out
    assert math.isfinite(ratio) and ratio > 0
