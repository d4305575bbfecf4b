#!/usr/bin/env python
"""A user's trained MLP made sparse three ways, compared at equal measured latency (3 seeds).

    python benchmarks/model_sparsity.py [--seeds 0 1 2] [--sparsity 0.9] [--trials 16] [--quick]

The model a user brings: LeNet-300-100 (784-300-100-10) trained dense on MNIST (20,000 training
images, 5,000 of the test set; Adam, 4 epochs). From its trained weights, three ways to a sparse
model, each one-shot layer-wise magnitude pruning (``nas.sparse.masks.magnitude_prune``) then the
same fine-tuning (2 epochs, masks fixed):

- **uniform at S** (no search): every layer at the overall sparsity S. Its sparse inference model
  (``nas.sparse.inference.to_inference``: dense, CSR or shrunk per layer, whichever times faster)
  sets the latency budget (at batch 64, where the layers' work, not the call overhead, is what a
  sparsity changes; at batch 1 LeNet runs in about 0.03 ms whatever its sparsity).
- **searched**: a sparsity per layer chosen by Optuna's TPE (the sampler of the ``tpe`` strategy)
  among ``LEVELS``; a candidate whose measured sparse inference latency is over the budget (plus
  ``--tolerance``, the timing's noise) is
  refused before any training, as the job's latency filter does; the others are scored by their
  accuracy on a validation split held out of the training images after a short fine-tune
  (``--probe-steps``). The best is fine-tuned like the others.
- **uniform at the searched overall sparsity**: every layer at the sparsity the searched
  allocation has overall, so the allocation alone differs from the searched one.

Reported per seed and as mean ± std over seeds: test accuracy, overall sparsity, and the median
latency (``nas.latency.measure``, batch 64, one thread) of each sparse inference model, all three
timed again side by side at the end so slow phases of a shared machine hit them alike.
Nothing is asserted; the target (the searched allocation at least as accurate as uniform at equal
latency) is checked in the printed table.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "papers"))
from _report import machine, mean_std  # noqa: E402

from nas import registry  # noqa: E402
from nas.latency import measure  # noqa: E402
from nas.sparse.inference import to_inference  # noqa: E402
from nas.sparse.masks import magnitude_prune, masks, prunable_weights  # noqa: E402

INPUT = (1, 28, 28)
LEVELS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98)


def lenet() -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(784, 300), nn.ReLU(), nn.Linear(300, 100), nn.ReLU(), nn.Linear(100, 10),
    )  # fmt: skip


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: float, seed: int, lr: float = 1e-3) -> None:
    """Adam, batches of 128, for ``epochs`` passes (a fraction runs that share of one); masks stay as set."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    steps = round(epochs * -(-len(x) // 128))
    done = 0
    model.train()
    while done < steps:
        for batch in torch.randperm(len(x), generator=generator).split(128):
            if done == steps:
                break
            optimizer.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            optimizer.step()
            done += 1
    model.eval()


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def pruned(dense: nn.Module, layer_sparsity: dict[str, float]) -> nn.Module:
    """A copy of ``dense`` with each weight masked to its sparsity by magnitude (layer-wise)."""
    model = copy.deepcopy(dense)
    magnitude_prune(model, 0.0, layer_sparsity, scope="layer")
    return model


def overall(model: nn.Module) -> float:
    """Zero weights over all prunable weights."""
    kept = masks(model)
    return 1.0 - sum(float(m.sum()) for m in kept.values()) / sum(m.numel() for m in kept.values())


def latency_ms(model: nn.Module, batch: int, min_run_time: float = 0.2) -> float:
    """Median latency of ``model``'s sparse inference model at ``batch`` on one thread."""
    inference, _ = to_inference(model, INPUT, batch_size=batch)
    return measure(inference, INPUT, batch_size=batch, num_threads=1, min_run_time=min_run_time)["median_ms"]


def search(
    dense: nn.Module, names: list[str], budget_ms: float, data: dict[str, torch.Tensor], args: argparse.Namespace,
    seed: int,
) -> tuple[dict[str, float], dict[str, int]]:
    """TPE over a sparsity per layer; candidates over ``budget_ms`` are refused untrained. The best allocation."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed, n_startup_trials=4))
    counts = {"refused": 0, "trained": 0}

    def objective(trial: optuna.Trial) -> float:
        allocation = {name: trial.suggest_categorical(name, LEVELS) for name in names}
        model = pruned(dense, allocation)
        if latency_ms(model, args.batch, min_run_time=0.1) > budget_ms * (1 + args.tolerance):
            counts["refused"] += 1
            return 0.0
        counts["trained"] += 1
        fit(model, data["x_fit"], data["y_fit"], args.probe_steps / -(-len(data["x_fit"]) // 128), seed)
        return accuracy(model, data["x_val"], data["y_val"])

    # the uniform allocation is the first candidate: the search starts from what it must beat
    study.enqueue_trial({name: args.sparsity for name in names})
    study.optimize(objective, n_trials=args.trials)
    return dict(study.best_params), counts


def run_seed(seed: int, args: argparse.Namespace, data_dir: Path) -> dict[str, Any]:
    torch.manual_seed(seed)
    splits = registry.datasets.create("mnist", {"train_limit": args.train_limit, "test_limit": 5000}).load(data_dir)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, fit_part = order[: len(x) // 10], order[len(x) // 10 :]
    data = {"x_fit": x[fit_part], "y_fit": y[fit_part], "x_val": x[val], "y_val": y[val]}
    x_test, y_test = torch.from_numpy(splits.x_test), torch.from_numpy(splits.y_test)

    dense = lenet()
    fit(dense, x, y, args.epochs, seed)
    names = list(prunable_weights(dense))

    uniform = pruned(dense, dict.fromkeys(names, args.sparsity))
    budget = latency_ms(uniform, args.batch)
    allocation, counts = search(dense, names, budget, data, args, seed)
    searched = pruned(dense, allocation)
    same_overall = pruned(dense, dict.fromkeys(names, round(overall(searched), 4)))

    models = {"searched": searched, "uniform_same_sparsity": same_overall, "uniform_at_S": uniform}
    for name, model in models.items():
        fit(model, x, y, args.finetune_epochs, seed + 1000)
    rows: dict[str, Any] = {name: {"accuracy": accuracy(m, x_test, y_test), "sparsity": overall(m), "latency": []}
                            for name, m in models.items()}  # fmt: skip
    for _ in range(args.rounds):  # side by side, so a slow phase of the machine hits all three
        for name, model in models.items():
            rows[name]["latency"].append(latency_ms(model, args.batch))
    for row in rows.values():
        row["latency_ms"] = statistics.median(row.pop("latency"))
    return {
        "seed": seed, "dense_accuracy": accuracy(dense, x_test, y_test), "dense_latency_ms": measure(
            dense, INPUT, batch_size=args.batch, num_threads=1)["median_ms"],
        "budget_ms": budget, "allocation": allocation, "search": counts, **rows,
    }  # fmt: skip


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    methods = ("searched", "uniform_same_sparsity", "uniform_at_S")
    lines = [
        f"Command: `{' '.join(['python benchmarks/model_sparsity.py', *sys.argv[1:]])}`",
        f"Machine: {machine()}",
        "",
        f"LeNet-300-100 on MNIST ({args.train_limit} training images, 5000 test), S = {args.sparsity}; "
        f"dense test accuracy {mean_std([r['dense_accuracy'] * 100 for r in results])} %, dense latency "
        f"{mean_std([r['dense_latency_ms'] for r in results], 4)} ms.",
        "",
        f"| method | test accuracy % | overall sparsity | latency ms (batch {args.batch}, 1 thread) |",
        "|---|---|---|---|",
    ]
    for method in methods:
        lines.append(
            f"| {method} | {mean_std([r[method]['accuracy'] * 100 for r in results])} | "
            f"{mean_std([r[method]['sparsity'] for r in results], 3)} | "
            f"{mean_std([r[method]['latency_ms'] for r in results], 4)} |"
        )
    lines += ["", "Per seed (accuracy %, latency ms; searched allocation):"]
    for r in results:
        cells = ", ".join(f"{m} {r[m]['accuracy'] * 100:.2f} / {r[m]['latency_ms']:.4f}" for m in methods)
        lines.append(f"- seed {r['seed']}: {cells}; budget {r['budget_ms']:.4f} ms; allocation "
                     f"{json.dumps(r['allocation'])}; search {r['search']}")  # fmt: skip
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sparsity", type=float, default=0.9, help="overall sparsity S of the uniform baseline")
    parser.add_argument("--trials", type=int, default=16, help="candidates the search draws")
    parser.add_argument("--probe-steps", type=int, default=60, help="fine-tuning steps that score a candidate")
    parser.add_argument("--epochs", type=float, default=4, help="dense training epochs")
    parser.add_argument("--finetune-epochs", type=float, default=2, help="fine-tuning epochs of every final model")
    parser.add_argument("--train-limit", type=int, default=20000)
    parser.add_argument("--batch", type=int, default=64, help="batch size the latency is measured at")
    parser.add_argument("--tolerance", type=float, default=0.05,
                        help="a candidate may be this fraction slower than the budget (the timing's noise)")
    parser.add_argument("--rounds", type=int, default=5, help="side-by-side latency rounds at the end")
    parser.add_argument("--data-dir", type=Path, default=None, help="holds mnist/ (default: NAS_DATA_DIR)")
    parser.add_argument("--quick", action="store_true", help="one seed, few trials: checks the script runs")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.trials, args.train_limit, args.rounds, args.epochs = [0], 5, 3000, 1, 1
    data_dir = args.data_dir or Path(os.environ.get("NAS_DATA_DIR", Path(__file__).resolve().parents[2] / "shared/data"))
    torch.set_num_threads(1)
    results = [run_seed(seed, args, data_dir) for seed in args.seeds]
    print(report(results, args))


if __name__ == "__main__":
    main()
