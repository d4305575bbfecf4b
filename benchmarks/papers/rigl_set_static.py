#!/usr/bin/env python
"""RigL vs SET vs a static random mask (Evci et al. 2020, "Rigging the Lottery"), LeNet-300-100 on MNIST.

    python benchmarks/papers/rigl_set_static.py [--seeds 3] [--epochs 3] [--quick]

Every model is sparse from the first step at 90% and 95%, with the nonzeros spread over the layers
by Erdős–Rényi-Kernel or uniformly: ``rigl`` and ``set`` update their masks every ΔT = 100 steps
until 75% of training (drop fraction 0.3, cosine-decayed), ``random`` keeps its initial mask. A
dense LeNet-300-100 is the reference. All train the same epochs through the workers' trainer
(``nas.training.run_trial``; SGD with momentum, batch 100). A seed is a job seed: the trainer
derives one torch seed per (job seed, architecture), so at a given seed every method starts from
the same initial weights and sees the same batches -- the comparisons below are paired per seed.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _report import machine, mean_std

from nas.specs import JobSpec, TrainingSpec
from nas.training import run_trial

LENET = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
METHODS = ("rigl", "set", "random")
DISTRIBUTIONS = ("erk", "uniform")


def trial(method: str, sparsity: float, distribution: str, seed: int, args: argparse.Namespace) -> dict[str, float]:
    """Train LeNet-300-100 under ``method``; its test accuracy (%) and fraction of nonzero weights."""
    params: dict[str, Any] = {"sparsity": sparsity, "distribution": distribution}
    if method != "random":
        params["update_interval"] = args.update_interval
    spec = JobSpec(
        search_space={"name": "sparse_mlp", "params": {"width_choices": [100, 300], "activation_choices": ["relu"]}},
        dataset={"name": "mnist", "params": {"train_limit": args.train_limit}},
        sparsifier={"name": method, "params": params},
        training={"epochs": args.epochs, "batch_size": 100, "lr": args.lr, "optimizer": "sgd", "momentum": 0.9},
        seed=seed,
    )
    outcome = run_trial(spec, LENET, args.data_dir, lambda epoch, metrics: None)
    weights = sum(math.prod(layer["shape"]) for layer in outcome.layers)
    nonzeros = sum(layer["density"] * math.prod(layer["shape"]) for layer in outcome.layers)
    return {"accuracy": 100 * outcome.metrics["accuracy"], "density": nonzeros / weights}


def paired(a: list[float], b: list[float]) -> str:
    """Mean ± std of the per-seed differences a - b, and in how many seeds a was at least b."""
    gaps = [x - y for x, y in zip(a, b)]
    return f"{mean_std(gaps)} pt ({sum(g >= 0 for g in gaps)}/{len(gaps)} seeds ≥)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="job seeds 0 .. N-1")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of every model")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95])
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (momentum 0.9)")
    parser.add_argument("--update-interval", type=int, default=100, help="ΔT of rigl and set, in steps")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training examples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (keep a shared machine usable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, 10K examples, ΔT = 10")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.train_limit, args.update_interval = 1, 1, 10_000, 10
    args.data_dir = Path(os.environ.get("NAS_DATA_DIR", "/work/shared/data"))
    torch.set_num_threads(args.threads)

    start = time.perf_counter()
    configs = [("random", 0.0, "uniform")] + [
        (method, s, dist) for dist in DISTRIBUTIONS for method in METHODS for s in args.sparsities
    ]
    acc: dict[tuple[str, float, str], list[float]] = {config: [] for config in configs}
    density: dict[tuple[str, float, str], list[float]] = {config: [] for config in configs}
    for seed in range(args.seeds):
        for config in configs:
            result = trial(*config, seed, args)
            acc[config].append(result["accuracy"])
            density[config].append(result["density"])
            print(f"  seed {seed} {config}: {result}", file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - start) / 60

    examples = args.train_limit or 60_000
    trained = examples - math.ceil(examples * TrainingSpec().val_fraction)  # the trainer holds the validation split out
    steps = args.epochs * math.ceil(trained / 100)
    print(f"- command: `python benchmarks/papers/rigl_set_static.py{''.join(' ' + a for a in sys.argv[1:])}`")
    print(f"- setup: {args.seeds} seed(s), {args.epochs} epochs ({steps} steps), SGD lr {args.lr} momentum 0.9, "
          f"batch 100, {trained} training examples (of {examples}: the validation split held out); "
          f"ΔT {args.update_interval}, T_end {math.floor(0.75 * steps)}, α 0.3 cosine; {minutes:.1f} min")  # fmt: skip
    print(f"- machine: {machine()}\n")

    dense = acc[("random", 0.0, "uniform")]
    print(f"Test accuracy %, mean ± std over seeds (dense LeNet-300-100: {mean_std(dense)}).\n")
    print("| method | distribution | " + " | ".join(f"{100 * s:g}% sparse" for s in args.sparsities) + " |")
    print("|---|---|" + "---:|" * len(args.sparsities))
    for dist in DISTRIBUTIONS:
        for method in METHODS:
            cells = " | ".join(mean_std(acc[(method, s, dist)]) for s in args.sparsities)
            print(f"| {'static random' if method == 'random' else method} | {dist} | {cells} |")
    worst = max(abs(d - (1 - s)) for (_, s, _), ds in density.items() if s for d in ds)
    print(f"\nNonzero fraction of the trained weights: at most {worst:.4f} from 1 − S in every run "
          "(grown weights start at zero, so a few may still be zero at the end).\n")  # fmt: skip

    print("| claim (Evci et al. 2020) | paper | ours: paired difference per seed |")
    print("|---|---|---|")
    for s in args.sparsities:
        for dist in DISTRIBUTIONS:
            cell = f"{100 * s:g}% {dist}"
            print(f"| RigL ≥ SET, {cell} | yes | {paired(acc[('rigl', s, dist)], acc[('set', s, dist)])} |")
            print(f"| SET ≥ static, {cell} | yes | {paired(acc[('set', s, dist)], acc[('random', s, dist)])} |")
        for method in METHODS:
            gaps = paired(acc[(method, s, "erk")], acc[(method, s, "uniform")])
            paper = "yes (R50 90%: RigL 73.07 vs 72.02)" if method == "rigl" else "yes"
            print(f"| ERK ≥ uniform, {method}, {100 * s:g}% | {paper} | {gaps} |")
    if 0.9 in args.sparsities:
        print(f"| RigL (ERK) at 90% within ~0.5 pt of dense | yes | {paired(acc[('rigl', 0.9, 'erk')], dense)} |")


if __name__ == "__main__":
    main()
