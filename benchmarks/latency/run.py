#!/usr/bin/env python
"""Latency: measurement noise, predictor accuracy against the noise ceiling and baselines, and costs.

    python benchmarks/latency/run.py [--runtime torch|onnxruntime] [--quick | --plan quick|medium|full]
                                     [--data FILE] [--home DIR] [--out FILE.md]

What it does, start to end (one thread, batch 1, this machine's CPU; ``--runtime onnxruntime`` times
every model as its ONNX export in ONNX Runtime and skips the torch-only step 1):

1. **Measurement protocols.** Ten zoo models, each measured twice, independently, by every
   protocol: ``blocked_autorange`` medians back to back (what ``torch.utils.benchmark`` gives),
   the per-call median, and the per-call 25th and 10th percentiles over interleaved rounds, raw and
   divided by the reference model timed alongside. It prints how often the two measurements of a
   model agree within ±10% and ±5%: the noise ceiling each protocol leaves a predictor.
2. **Calibration** (``nas hardware calibrate``, full, medium or quick; under ``onnxruntime`` through
   :class:`nas.latency.timers.OnnxTimer`) into ``--home`` (a temporary
   ``NAS_HOME`` by default), or ``--data`` to evaluate a calibration made earlier. Its minutes are
   reported.
3. **Accuracy** (``nas hardware evaluate``): ±5%/±10%, MAPE and Spearman's ρ on held-out models
   of the same distribution, held-out families and held-out sparsity levels, for dense and sparse
   models, next to the noise ceiling of the same models and the FLOPs-only and roofline-only
   baselines; per-kind layer accuracy; and the bundled predictor, rescaled, without fitting (a
   true out-of-sample check only when the data is not the calibration the bundled predictor was
   fitted on).
4. **Prediction cost**: median microseconds of one ``predict`` call (tracing included).

Nothing is asserted; it prints markdown tables for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def protocols(count: int, seconds: float) -> list[dict[str, object]]:
    """Two independent measurements of ``count`` zoo models by each protocol, and their agreement."""
    import torch
    from torch.utils import benchmark

    from nas.timing.measure import measure_interleaved
    from nas.latency.zoo import FAMILIES, sample

    torch.set_num_threads(1)
    rng = random.Random(5)
    models = [sample(FAMILIES[i % len(FAMILIES)], rng, {"pattern": "dense"}, seed=i) for i in range(count)]
    entries = [(z.model, z.input_shape) for z in models]

    def blocked() -> list[float]:
        out = []
        for model, shape in entries:
            x = torch.zeros(1, *shape)
            timer = benchmark.Timer("model(x)", globals={"model": model, "x": x}, num_threads=1)
            with torch.no_grad():
                timer.timeit(10)
                out.append(timer.blocked_autorange(min_run_time=seconds).median * 1e3)
        return out

    sessions = [measure_interleaved(entries, min_run_time=seconds, rounds=3) for _ in range(2)]
    blocked_runs = [blocked(), blocked()]
    rows = []

    def agreement(name: str, a: list[float], b: list[float]) -> None:
        error = np.abs(np.asarray(a) / np.asarray(b) - 1)
        rows.append({"protocol": name, "acc10": float(np.mean(error <= 0.10)), "acc5": float(np.mean(error <= 0.05)),
                     "median_gap": float(np.median(error))})  # fmt: skip

    agreement("blocked_autorange median (torch.utils.benchmark)", *blocked_runs)
    for key, name in (
        ("median_ms", "per-call median, 3 interleaved rounds"),
        ("p25_ms", "per-call 25th percentile, 3 interleaved rounds"),
        ("p10_ms", "per-call 10th percentile, 3 interleaved rounds"),
        ("normalized_ms", "per-call median / reference model"),
        ("normalized_p10_ms", "per-call 10th percentile / reference model"),
    ):
        agreement(name, [r[key] for r in sessions[0]], [r[key] for r in sessions[1]])
    return rows


def prediction_cost(count: int = 24) -> dict[str, float]:
    """Median and 90th percentile wall time of ``predict`` on small zoo models, sparse and dense."""
    import torch

    from nas.latency import predict
    from nas.latency.zoo import FAMILIES, sample

    torch.set_num_threads(1)
    rng = random.Random(11)
    models = [sample(FAMILIES[i % len(FAMILIES)], rng, seed=i) for i in range(count)]
    times, cpu = [], []
    for drawn in models:
        predict(drawn.model, drawn.input_shape)
        start, start_cpu = time.perf_counter(), time.process_time()
        predict(drawn.model, drawn.input_shape)
        times.append((time.perf_counter() - start) * 1e6)
        cpu.append((time.process_time() - start_cpu) * 1e6)
    return {"median_us": statistics.median(times), "p90_us": float(np.percentile(times, 90)),
            "cpu_median_us": statistics.median(cpu), "cpu_p90_us": float(np.percentile(cpu, 90))}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="quick calibration (1-3 minutes) and fewer models")
    parser.add_argument("--plan", choices=("quick", "medium", "full"), help="calibration plan (default: full, or quick)")
    parser.add_argument("--runtime", choices=("torch", "onnxruntime"), default="torch",
                        help="the runtime models are timed in: PyTorch eager (sparse layers as CSR where faster) "
                             "or their ONNX export in ONNX Runtime (every layer dense)")  # fmt: skip
    parser.add_argument("--data", type=Path, help="evaluate this calibration data file instead of calibrating")
    parser.add_argument("--home", type=Path, help="NAS_HOME for the calibration (default: a temporary folder)")
    parser.add_argument("--out", type=Path, help="also write the markdown here")
    parser.add_argument("--statistic", default="p10_ms", help="the per-call statistic the predictor targets")
    parser.add_argument("--seed", type=int, default=1,
                        help="calibration seed; the bundled predictor used 0, so 1 keeps its row out of sample")  # fmt: skip
    args = parser.parse_args()

    home = args.home or Path(tempfile.mkdtemp(prefix="nas-latency-"))
    os.environ["NAS_HOME"] = str(home)
    import torch

    from nas.latency import evaluate as ev
    from nas.latency import store
    from nas.latency.calibrate import Plan, calibrate
    from nas.latency.timers import OnnxTimer
    from nas.timing.onnx_timer import onnxruntime_version
    from nas.timing.targets import cpu_model, identity

    torch.set_num_threads(1)
    plan_name = args.plan or ("quick" if args.quick else "full")
    plan = {"quick": Plan.quick, "medium": Plan.medium, "full": Plan.full}[plan_name]()
    onnx = args.runtime == "onnxruntime"
    runtime_label = f"onnxruntime {onnxruntime_version()} (CPU)" if onnx else f"torch {torch.__version__} eager"
    lines = [f"## Latency predictor, {runtime_label} ({plan_name} plan)", ""]
    lines.append(f"Machine: {cpu_model()}, {os.cpu_count()} vCPUs, torch {torch.__version__}, one thread, batch 1; "
                 f"load average at start {os.getloadavg()[0]:.1f}. Date: {time.strftime('%Y-%m-%d')}. "
                 f"Python {platform.python_version()}.")  # fmt: skip
    count = 6 if plan_name == "quick" else 10
    if not onnx:
        lines += ["", f"### Measurement protocols: two independent measurements of the same {count} models", ""]
        lines += ["| protocol | agree ±10% | agree ±5% | median gap |", "|---|---|---|---|"]
        for row in protocols(count, 0.1 if plan_name == "quick" else 0.2):
            lines.append(f"| {row['protocol']} | {100 * row['acc10']:.0f}% | {100 * row['acc5']:.0f}% | "
                         f"{100 * row['median_gap']:.1f}% |")  # fmt: skip
    print("\n".join(lines), flush=True)

    if args.data:
        data = json.loads(args.data.read_text())
    else:
        started = time.perf_counter()
        result = calibrate("cpu", 1, 1, quick=plan_name == "quick", statistic=args.statistic, seed=args.seed,
                           plan=plan, timer=OnnxTimer() if onnx else None,
                           progress=lambda m: print(f"  [{time.perf_counter() - started:6.0f} s] {m}", file=sys.stderr))  # fmt: skip
        data = result["data"]
        print(f"(calibration data: {result['paths']['data']})", file=sys.stderr)
    statistic = data["meta"].get("statistic", args.statistic)
    bundled = None if onnx else next((store.load_predictor_file(p) for p in store.bundled_predictors()), None)
    rows = ev.evaluate(data, statistic, bundled=bundled)
    summary = ev.accuracy_summary(data, statistic)
    layer_rows = ev.layer_accuracy(data)
    cost = prediction_cost()  # the bundled torch predictor's cost; an onnxruntime predictor's is the same work
    meta = data["meta"]
    out = ["", f"### Accuracy (statistic: per-call `{statistic}`; {meta.get('models')} models, "
               f"{meta.get('layer_samples')} layer samples)", "", ev.markdown(rows), "",
           "### Against the targets (same session)", "",
           "| split | ±10% | Spearman ρ | noise ceiling ±10% | target ±10% | nn-Meter / LitePred ±10% |",
           "|---|---|---|---|---|---|",
           f"| same distribution (5-fold) | {ev._pct(summary['within_10'])} | {ev._rho(summary['spearman'])} | "
           f"{ev._pct(summary['noise_ceiling_within_10'])} | ≥ {ev._pct(summary['noise_ceiling_within_10'] - 0.03)} "
           f"| 99.0% / 99.3% |",
           f"| held-out families | {ev._pct(summary['held_out_families_within_10'])} | "
           f"{ev._rho(summary['held_out_families_spearman'])} | {ev._pct(summary['noise_ceiling_within_10'])} | "
           f"≥ {ev._pct(min(0.90, summary['noise_ceiling_within_10'] - 0.05))} | 89.2% (nn-Meter, unseen models) |", "",
           "### Layer models (held-out fifth of the layer samples, timed alone and inside models)", "",
           "| kind | context | n | ±10% | MAPE | Spearman ρ |", "|---|---|---|---|---|---|"]  # fmt: skip
    for row in layer_rows:
        out.append(f"| {row['kind']} | {row['context']} | {row['n']} | {100 * row['acc10']:.1f}% | "
                   f"{100 * row['mape']:.1f}% | {row['spearman']:.3f} |")  # fmt: skip
    out += ["", "### Costs", "", "| what | value |", "|---|---|",
            f"| calibration ({meta.get('mode')}) | {meta.get('calibration_minutes')} min "
            f"(layers {meta.get('layer_minutes')} min) |",
            f"| one `predict` (small models, trace included), wall | median {cost['median_us']:.0f} µs, "
            f"p90 {cost['p90_us']:.0f} µs |",
            f"| one `predict`, CPU time of the process | median {cost['cpu_median_us']:.0f} µs, "
            f"p90 {cost['cpu_p90_us']:.0f} µs |",
            f"| load average at the end | {os.getloadavg()[0]:.1f} |"]  # fmt: skip
    print("\n".join(out))
    if args.out:
        args.out.write_text("\n".join(lines + out) + "\n")
    print(f"\n(target {identity().key()}; NAS_HOME {home})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
