#!/usr/bin/env python
"""Large-sparse vs small-dense at equal non-zeros (Zhu & Gupta 2017, "To prune, or not to prune"), MLPs on MNIST.

    python benchmarks/papers/gmp_large_sparse_vs_small_dense.py [--seeds 3] [--epochs 5] [--width 1024] [--quick]

A large MLP (784-W-W-10) is pruned by the ``gmp`` sparsifier to 90% and 95% (cubic schedule,
layer-wise, t0 at 10% and s_f reached at 70% of training, Δt = 100 steps); each is matched by a
dense MLP 784-h-h-10 whose h gives the nearest weight count to the sparse model's non-zeros. A
dense large MLP is the reference. Every model trains the same epochs with the same optimizer
(Adam, batch 100) through the workers' trainer (``nas.training.run_trial``), so the sparse
models spend part of their budget being pruned, as in the paper. Test accuracy, mean ± std over
seeds (each seed is a job seed: it changes the initialisation and the batch order).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _report import machine, mean_std

from nas.specs import JobSpec
from nas.training import run_trial

INPUTS, CLASSES = 28 * 28, 10


def weight_count(width: int) -> int:
    """Weights (biases aside) of the MLP 784-width-width-10."""
    return INPUTS * width + width * width + width * CLASSES


def matching_width(nonzeros: float) -> int:
    """The width h whose dense 784-h-h-10 weight count is closest to ``nonzeros``."""
    root = (-(INPUTS + CLASSES) + math.sqrt((INPUTS + CLASSES) ** 2 + 4 * nonzeros)) / 2
    return min((math.floor(root), math.ceil(root)), key=lambda h: abs(weight_count(h) - nonzeros))


def trial(width: int, sparsity: float, seed: int, args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    """Train 784-width-width-10, pruned by gmp to ``sparsity`` (dense if 0); its test accuracy and non-zero weights."""
    sparsifier = (
        {"name": "gmp", "params": {"sparsity": sparsity}}
        if sparsity
        else {"name": "magnitude", "params": {"sparsity": 0.0}}  # no pruning: the dense baselines
    )
    spec = JobSpec(
        search_space={"name": "sparse_mlp", "params": {"width_choices": [width], "activation_choices": ["relu"]}},
        dataset={"name": "mnist", "params": {"train_limit": args.train_limit}},
        sparsifier=sparsifier,
        training={"epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "optimizer": "adam"},
        seed=seed,
    )
    arch = {"depth": 2, "width_0": width, "width_1": width, "activation": "relu"}
    outcome = run_trial(spec, arch, data_dir, lambda epoch, metrics: None)
    nonzeros = sum(round(layer["density"] * math.prod(layer["shape"])) for layer in outcome.layers)
    return {"accuracy": 100 * outcome.metrics["accuracy"], "nonzeros": nonzeros}


def sparse_name(sparsity: float) -> str:
    return f"large sparse {100 * sparsity:g}% (gmp)"


def dense_name(sparsity: float) -> str:
    return f"small dense, as many weights as {100 * sparsity:g}% sparse"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="job seeds 0 .. N-1")
    parser.add_argument("--epochs", type=int, default=5, help="training epochs of every model")
    parser.add_argument("--width", type=int, default=1024, help="hidden width W of the large MLP")
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.9, 0.95], help="gmp final sparsities")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--train-limit", type=int, default=None, help="use only the first N training examples")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (keep a shared machine usable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 1 epoch, width 256, 10K examples")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.epochs, args.width, args.train_limit = 1, 1, 256, 10_000
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("NAS_DATA_DIR", "/work/shared/data"))

    start = time.perf_counter()
    configs = [("large dense", args.width, 0.0)]
    for s in args.sparsities:
        configs.append((sparse_name(s), args.width, s))
        configs.append((dense_name(s), matching_width((1 - s) * weight_count(args.width)), 0.0))
    results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in configs}
    for seed in range(args.seeds):
        for name, width, sparsity in configs:
            results[name].append(trial(width, sparsity, seed, args, data_dir))
            print(f"  seed {seed} {name} (W={width}): {results[name][-1]}", file=sys.stderr, flush=True)
    minutes = (time.perf_counter() - start) / 60

    def accuracies(name: str) -> list[float]:
        return [r["accuracy"] for r in results[name]]

    def gaps(a: str, b: str) -> list[float]:
        return [x - y for x, y in zip(accuracies(a), accuracies(b))]

    script = "benchmarks/papers/gmp_large_sparse_vs_small_dense.py"
    print(f"command: `python {script}{''.join(' ' + a for a in sys.argv[1:])}`")
    examples = "all" if args.train_limit is None else args.train_limit
    print(f"setup: {args.seeds} seed(s), {args.epochs} epochs, Adam lr {args.lr}, batch {args.batch_size}, "
          f"{examples} training examples less the validation tenth; {minutes:.1f} min")  # fmt: skip
    print(f"machine: {machine()}\n")
    print("| model | hidden widths | non-zero weights | test accuracy % |")
    print("|---|---|---:|---:|")
    for name, width, _ in configs:
        nonzeros = statistics.fmean(r["nonzeros"] for r in results[name])
        print(f"| {name} | {width}-{width} | {nonzeros:,.0f} | {mean_std(accuracies(name))} |")
    print("\n| claim (Zhu & Gupta 2017) | paper | ours |")
    print("|---|---|---|")
    for s in args.sparsities:
        gap = gaps(sparse_name(s), dense_name(s))
        print(f"| large-sparse beats small-dense at equal non-zeros, {100 * s:g}% "
              f"| yes (MobileNet, 90%: 66.7 vs 50.6%) | {mean_std(gap)} pt; sparse ahead in "
              f"{sum(g > 0 for g in gap)} of {len(gap)} seeds |")  # fmt: skip
    for s in args.sparsities:
        print(f"| {100 * s:g}% sparse vs the dense large model | minimal loss up to 10× fewer non-zeros "
              f"| {mean_std(gaps(sparse_name(s), 'large dense'))} pt |")  # fmt: skip


if __name__ == "__main__":
    main()
