"""``nas hardware calibrate --quick`` and ``nas hardware evaluate`` end to end, as CI runs them."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest


def run(args: list[str], home: Path, timeout: int) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NAS_HOME": str(home), "OMP_NUM_THREADS": "1"}
    return subprocess.run(["nas", "hardware", *args], env=env, capture_output=True, text=True, timeout=timeout)


def test_calibrate_quick_then_evaluate(tmp_path: Path) -> None:
    home = tmp_path / "home"
    calibrated = run(["calibrate", "--target", "cpu", "--quick"], home, timeout=420)
    assert calibrated.returncode == 0, calibrated.stderr
    assert "calibrated cpu-" in calibrated.stdout and "layer samples" in calibrated.stdout
    predictors = list((home / "latency" / "predictors").glob("cpu-*.json"))
    data = list((home / "latency" / "data").glob("cpu-*.json"))
    assert len(predictors) == 1 and len(data) == 1
    stored = json.loads(predictors[0].read_text())
    assert stored["format"] == "nas-latency-predictor" and stored["meta"]["mode"] == "quick"

    report = tmp_path / "evaluation.json"
    evaluated = run(["evaluate", "--target", "cpu", "--json", str(report)], home, timeout=300)
    assert evaluated.returncode == 0, evaluated.stderr
    out = evaluated.stdout
    for text in ("| split |", "same distribution", "held-out families", "noise ceiling ±10%", "FLOPs-only",
                 "roofline-only", "| kind |", "one prediction:"):  # fmt: skip
        assert text in out, out
    rows = json.loads(report.read_text())["rows"]
    main = next(r for r in rows if r["split"] == "same distribution" and r["models"] == "all")
    assert main["n"] >= 20 and 0 <= main["acc10"] <= 1 and 0 <= main["ceiling10"] <= 1

    # the server side now predicts with this machine's predictor
    from nas.latency import predict_details
    from nas.latency.zoo import sample

    import random

    os.environ["NAS_HOME"] = str(home)
    try:
        drawn = sample("cnn", random.Random(0))
        assert predict_details(drawn.model, drawn.input_shape)["predictor"]["source"] == "machine"
    finally:
        del os.environ["NAS_HOME"]


def test_evaluate_without_calibration_says_what_to_do(tmp_path: Path) -> None:
    result = run(["evaluate"], tmp_path / "empty", timeout=120)
    assert result.returncode == 1 and "run `nas hardware calibrate` first" in " ".join(result.stderr.split())  # the terminal may wrap it


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the refusal without a GPU")
def test_calibrating_cuda_without_a_gpu_is_refused(tmp_path: Path) -> None:
    result = run(["calibrate", "--target", "cuda", "--quick"], tmp_path / "home", timeout=120)
    assert result.returncode == 1 and "not available on this machine" in result.stderr
