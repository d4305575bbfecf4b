#!/usr/bin/env python
"""SR-STE vs STE at 2:4 and 1:4 (Zhou et al., ICLR 2021) on LeNet-300-100 / MNIST: accuracy and SAD.

    python benchmarks/papers/srste_vs_ste.py [--seeds 3] [--epochs 3] [--quick]

Every run is one trial of the service's trainer (``nas.training.run_trial``) on the full MNIST
training set, SGD with momentum 0.9, lr 0.05, weight decay 5e-5 (the paper's ResNet-50 config),
batch 128; the ``nm`` sparsifier recomputes the N:M mask from the dense weights every forward
pass and reports SAD, the fraction of mask entries that flipped during each epoch. Rows:

- dense: the same network unpruned (``magnitude`` at sparsity 0);
- STE and SR-STE with the paper's λ_W = 2e-4;
- SR-STE with λ_W scaled to this run's length: the paper trains ResNet-50 for 120 ImageNet epochs
  (≈600K steps at batch 256, mean cosine lr ≈ 0.05), so its refining term integrates to
  Σ lr·λ_W ≈ 6; here λ_W = 6 / (lr · steps) gives the pruned weights the same total decay.

Seeds change the initialisation and the batch order.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from _report import machine, mean_std

from nas.specs import JobSpec, TrainingSpec
from nas.training import run_trial

LENET = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
LR, BATCH, MOMENTUM, WEIGHT_DECAY = 0.05, 128, 0.9, 5e-5
PAPER_DECAY_BUDGET = 600_000 * 0.05 * 2e-4  # steps x mean lr x λ_W of the paper's ResNet-50 run


@dataclass
class Config:
    label: str
    pattern: str  # "dense" or "N:M"
    sparsifier: dict[str, Any]


@dataclass(frozen=True)
class Run:
    accuracy: float  # %
    sad: list[float]  # per epoch, % of mask entries


def configs(scaled_lambda: float) -> list[Config]:
    rows = [Config("dense", "dense", {"name": "magnitude", "params": {"sparsity": 0.0}})]
    for n, m in ((2, 4), (1, 4)):
        nm = {"n": n, "m": m}
        rows += [
            Config("STE", f"{n}:{m}", {"name": "nm", "params": {**nm, "method": "ste"}}),
            Config("SR-STE λ_W=2e-4", f"{n}:{m}", {"name": "nm", "params": {**nm, "lambda_w": 2e-4}}),
            Config(
                f"SR-STE λ_W={scaled_lambda:.3g}",
                f"{n}:{m}",
                {"name": "nm", "params": {**nm, "lambda_w": scaled_lambda}},
            ),
        ]
    return rows


def run(config: Config, seed: int, epochs: int, dataset: dict[str, Any], data_dir: Path) -> Run:
    job = JobSpec.model_validate(
        {
            "search_space": {"name": "sparse_mlp"},
            "dataset": dataset,
            "sparsifier": config.sparsifier,
            "training": {
                "epochs": epochs, "batch_size": BATCH, "optimizer": "sgd", "lr": LR,
                "momentum": MOMENTUM, "weight_decay": WEIGHT_DECAY,
            },
            "seed": seed,
        }
    )  # fmt: skip
    sad: list[float] = []
    outcome = run_trial(job, LENET, data_dir, lambda epoch, metrics: sad.append(100 * metrics.get("sad", 0.0)))
    return Run(100 * outcome.metrics["accuracy"], sad)


def table(results: list[tuple[Config, list[Run]]]) -> str:
    dense = statistics.fmean(r.accuracy for r in results[0][1])
    lines = [
        "| pattern | method | test accuracy (%) | Δ vs dense (pt) | SAD per epoch, mean (%) | SAD last epoch (%) |",
        "|---|---|---|---|---|---|",
    ]
    for config, runs in results:
        acc = [r.accuracy for r in runs]
        if config.pattern == "dense":
            lines.append(f"| dense | — | {mean_std(acc)} | — | — | — |")
            continue
        lines.append(
            f"| {config.pattern} | {config.label} | {mean_std(acc)} | {statistics.fmean(acc) - dense:+.2f} | "
            f"{mean_std([statistics.fmean(r.sad) for r in runs], 3)} | {mean_std([r.sad[-1] for r in runs], 3)} |"
        )
    return "\n".join(lines)


def claims(results: list[tuple[Config, list[Run]]]) -> str:
    """The paper's claims beside ours; SR-STE vs STE as paired differences (same seed: same init and batches)."""
    runs = {(c.pattern, c.label): r for c, r in results}
    paper = {"2:4": "77.0", "1:4": "75.9"}
    lines = [
        "| claim (Zhou et al. 2021) | paper (ResNet-50, ImageNet) | ours (LeNet-300-100, MNIST) |",
        "|---|---|---|",
    ]
    for (pattern, label), sr in runs.items():
        if not label.startswith("SR-STE"):
            continue
        ste = runs[pattern, "STE"]
        d_acc = [a.accuracy - b.accuracy for a, b in zip(sr, ste)]
        d_sad = [statistics.fmean(a.sad) - statistics.fmean(b.sad) for a, b in zip(sr, ste)]
        lines.append(
            f"| {pattern}, {label}: at least as accurate as STE | yes (SR-STE {paper[pattern]}) | "
            f"{'yes' if statistics.fmean(d_acc) >= 0 else 'no'}: Δ {mean_std(d_acc)} pt |"
        )
        lines.append(
            f"| {pattern}, {label}: lower SAD than STE | yes | "
            f"{'yes' if statistics.fmean(d_sad) < 0 else 'no'}: Δ {mean_std(d_sad, 3)} % of entries per epoch |"
        )
    dense = statistics.fmean(r.accuracy for r in runs["dense", "dense"])
    best = max(statistics.fmean(r.accuracy for r in rs) for (pattern, _), rs in runs.items() if pattern == "2:4")
    lines.append(
        f"| 2:4 within 0.3 pt of dense | yes: 77.0 vs ≈77.3 | {'yes' if best - dense >= -0.3 else 'no'}: "
        f"best 2:4 {best - dense:+.2f} pt |"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs per run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (keep a shared machine usable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch on 6,000 training images")
    args = parser.parse_args()
    dataset: dict[str, Any] = {"name": "mnist"}
    train_size = 60_000
    if args.quick:
        args.seeds, args.epochs, train_size = 1, 1, 6_000
        dataset["params"] = {"train_limit": train_size}
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("NAS_DATA_DIR", "/work/shared/data"))
    trained = train_size - math.ceil(train_size * TrainingSpec().val_fraction)  # less the validation split
    steps = args.epochs * -(-trained // BATCH)
    scaled_lambda = min(PAPER_DECAY_BUDGET / (LR * steps), 1.0)  # nm caps λ_W at 1 (short --quick runs)

    start = time.perf_counter()
    results = [
        (config, [run(config, seed, args.epochs, dataset, data_dir) for seed in range(args.seeds)])
        for config in configs(scaled_lambda)
    ]
    minutes = (time.perf_counter() - start) / 60
    print(f"command: `python benchmarks/papers/srste_vs_ste.py{''.join(' ' + a for a in sys.argv[1:])}`")
    print(
        f"setup: LeNet-300-100 on MNIST ({trained} training images of {train_size}: the validation split held out), "
        f"{args.seeds} seed(s), {args.epochs} epoch(s) "
        f"= {steps} steps, SGD lr {LR} momentum {MOMENTUM} wd {WEIGHT_DECAY}, batch {BATCH}; {minutes:.1f} min"
    )
    print(f"machine: {machine()}\n")
    print(table(results) + "\n")
    print(claims(results))


if __name__ == "__main__":
    main()
