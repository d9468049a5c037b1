"""The benchmark scripts keep running (their figures are not asserted as timings)."""

import importlib.util
import math
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_throughput_quick_mode_prints_ratios(capsys):
    fit_ratio, transform_ratio = _load("throughput").main(["--quick"])
    out = capsys.readouterr().out
    assert "fit       CueCoEmbedder" in out and "bare MoCo v2" in out
    assert "transform CueCoEmbedder" in out and "peak memory" in out
    for ratio in (fit_ratio, transform_ratio):
        assert math.isfinite(ratio) and ratio > 0
