"""``nas hardware``: calibrate the latency predictor on this machine, and say how accurate it is.

These commands run locally (no server): they time models on this machine's target and keep what
they learn under ``$NAS_HOME/latency``, where the server and its workers find it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

if TYPE_CHECKING:
    from nas.latency.predictor import Predictor
    from nas.timing.targets import TargetIdentity

hardware_app = typer.Typer(help="Latency targets: calibrate and evaluate the latency predictor.", no_args_is_help=True)
_err = Console(stderr=True)

Target = Annotated[str, typer.Option("--target", help="cpu, or cuda where a GPU is present")]
CalibrationTarget = Annotated[str, typer.Option(
    "--target", help="cpu, cuda where a GPU is present, or one of your agent targets (calibrated through its "
    "agents by the server at NAS_URL, with NAS_API_KEY)")]
Threads = Annotated[int, typer.Option("--threads", min=1, help="torch threads while timing (part of the target)")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="examples per forward pass (part of the target)")]


def _fail(message: str) -> typer.Exit:
    _err.print(f"[red]error:[/red] {message}")
    return typer.Exit(1)


@hardware_app.command("targets")
def targets() -> None:
    """The latency targets present on this machine."""
    from nas.latency import describe_targets

    for target in describe_targets():
        print(f"{target['name']}\t{target['device']}\t{target['description']}")


@hardware_app.command()
def calibrate(
    target: CalibrationTarget = "cpu",
    threads: Threads = 1,
    batch_size: BatchSize = 1,
    quick: Annotated[bool, typer.Option("--quick", help="a few hundred samples, 1-3 minutes")] = False,
    seed: Annotated[int, typer.Option(help="seed of the sampled layers and models")] = 0,
    statistic: Annotated[str, typer.Option(help="per-call statistic the predictor targets")] = "p10_ms",
    runtime: Annotated[Optional[str], typer.Option(
        help="an agent target's runtime to calibrate (default: the first its online agents offer)")] = None,
) -> None:
    """Time layers and whole models on this machine, fit a predictor and store it under NAS_HOME; for an
    agent target, the server sends the models to its agents and stores the predictor fitted from what they report."""
    if target not in ("cpu", "cuda"):
        _calibrate_through_agents(target, quick, runtime)
        return
    from nas.latency import TargetUnavailable
    from nas.latency.calibrate import calibrate as run

    if statistic not in ("p10_ms", "p25_ms", "median_ms", "normalized_ms", "normalized_p10_ms", "normalized_p25_ms"):
        raise _fail(f"--statistic must be p10_ms, p25_ms, median_ms or a normalized_* variant, got {statistic!r}")
    started = time.perf_counter()

    def progress(message: str) -> None:
        _err.print(f"[{time.perf_counter() - started:6.1f} s] {message}")

    try:
        result = run(target, threads, batch_size, quick=quick, seed=seed, progress=progress, statistic=statistic)
    except TargetUnavailable as exc:
        raise _fail(str(exc)) from None
    meta = result["meta"]
    print(f"calibrated {result['predictor'].identity.key()} in {meta['calibration_minutes']:.1f} min: "
          f"{meta['layer_samples']} layer samples, {meta['models']} models")  # fmt: skip
    print(f"predictor: {result['paths']['predictor']}")
    print(f"data: {result['paths']['data']}")


def _calibrate_through_agents(target: str, quick: bool, runtime: str | None) -> None:
    """Start the calibration on the server, follow its progress on stderr, print the predictor's accuracy."""
    from nas.cli import _client

    started = time.perf_counter()
    with _client() as client:
        calibration = client.calibrate_target(target, quick=quick, runtime=runtime)
        _err.print(f"calibrating target {target} ({calibration['runtime']}, {'quick' if quick else 'full'}) "
                   f"through its agents: calibration {calibration['id']}")  # fmt: skip
        shown = None
        while calibration["state"] == "measuring":
            if calibration["progress"] != shown and calibration["progress"]:
                shown = calibration["progress"]
                _err.print(f"[{time.perf_counter() - started:6.1f} s] {shown}")
            time.sleep(2.0)
            calibration = client.calibration(target, calibration["id"])
        if calibration["state"] != "done":
            raise _fail(f"calibration of target {target} failed: {calibration['error']}")
        found = client.target(target)
    predictor = next((p for p in found["predictors"] if p["runtime"] == calibration["runtime"]), None)
    print(f"calibrated target {target} ({calibration['runtime']}) in {(time.perf_counter() - started) / 60:.1f} min: "
          f"predictor version {calibration['predictor_version']}")  # fmt: skip
    if predictor is not None and predictor["within_10"] is not None:
        print(f"held-out models within ±10%: {predictor['within_10']:.1%}, Spearman ρ {predictor['spearman']:.3f}, "
              f"noise ceiling {predictor['noise_ceiling_within_10']:.1%} ({predictor['models']} models)")  # fmt: skip


@hardware_app.command()
def evaluate(
    target: Target = "cpu",
    threads: Threads = 1,
    batch_size: BatchSize = 1,
    statistic: Annotated[Optional[str], typer.Option(help="default: the one the calibration used")] = None,
    output: Annotated[Optional[Path], typer.Option("--json", help="also write the rows as JSON here")] = None,
) -> None:
    """Accuracy on held-out models, families and sparsity levels, beside the noise ceiling and baselines."""
    from nas.latency import TargetUnavailable
    from nas.latency import evaluate as ev
    from nas.latency import store
    from nas.timing.targets import identity

    try:
        target_id = identity(target, threads, batch_size)
    except TargetUnavailable as exc:
        raise _fail(str(exc)) from None
    path = store.path_for("data", target_id)
    if not path.is_file():
        raise _fail(f"no calibration data for {target_id.key()} at {path}; run `nas hardware calibrate` first")
    data = store.read_json(path)
    statistic = statistic or data["meta"].get("statistic", "p10_ms")
    bundled = _bundled(target_id)
    rows = ev.evaluate(data, statistic, bundled=bundled)
    layers = ev.layer_accuracy(data)
    cost_us = _prediction_cost_us(target_id)
    print(f"# Latency predictor on {target_id.device} ({target_id.key()}), statistic {statistic}\n")
    print(ev.markdown(rows))
    print("\nLayer models (held-out fifth of the layer samples):\n")
    print("| kind | n | ±10% | MAPE | Spearman ρ |\n|---|---|---|---|---|")
    for row in layers:
        print(f"| {row['kind']} | {row['n']} | {100 * row['acc10']:.1f}% | {100 * row['mape']:.1f}% | {row['spearman']:.3f} |")
    meta = data["meta"]
    print(f"\ncalibration: {meta.get('mode')} mode, {meta.get('calibration_minutes')} min "
          f"({meta.get('layer_samples')} layer samples, {meta.get('models')} models); "
          f"one prediction: {cost_us:.0f} µs (median, small models, trace included)")  # fmt: skip
    print(ev.summary_line(rows))
    if output is not None:
        output.write_text(json.dumps({"rows": rows, "layers": layers, "meta": meta, "prediction_us": cost_us}, indent=1))


def _bundled(target_id: TargetIdentity) -> Predictor | None:
    """The package's default predictor for the target, if it ships one."""
    from nas.latency import store

    for path in store.bundled_predictors():
        predictor = store.load_predictor_file(path)
        if predictor.identity.target == target_id.target:
            return predictor
    return None


def _prediction_cost_us(target_id: TargetIdentity, count: int = 12) -> float:
    """Median wall time of ``predict`` on small zoo models (tracing included), in microseconds."""
    import random
    import statistics

    from nas.latency import predict
    from nas.latency.zoo import FAMILIES, sample

    rng = random.Random(99)
    models = [sample(FAMILIES[i % len(FAMILIES)], rng, seed=i) for i in range(count)]
    times = []
    for drawn in models:
        args = (drawn.model, drawn.input_shape, target_id.target)
        predict(*args, num_threads=target_id.num_threads, batch_size=target_id.batch_size)  # warm caches
        start = time.perf_counter()
        predict(*args, num_threads=target_id.num_threads, batch_size=target_id.batch_size)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


if __name__ == "__main__":  # pragma: no cover
    sys.exit(hardware_app())
