#!/usr/bin/env python
"""SuperTickets (You et al., ECCV 2022) vs "search -> train -> prune -> retrain", at equal sparsity, with total compute.

    python benchmarks/papers/supertickets_vs_pipeline.py [--seeds 3] [--train 3000] [--test 1000] [--quick]

Both arms search the same ``supernet`` space (a small MobileNet-style supernet: stem 8 channels,
stride 2; two stages of 16 and 24 channels, stride 2 each; 1-3 blocks per stage, expansion 2/3/4,
depthwise kernel 3/5) on the first ``--train`` MNIST training images (the last 500 of them held
out for the pipeline's selection) and report test accuracy on the first ``--test`` test images,
at ``--targets`` unstructured sparsities (default 50% and 80%; the whole supernet has 29K
parameters, and at 90% both arms fall near chance in this short a run: ``--targets 0.7 0.9``
shows it). Adam, lr 3e-3, batch 64, one thread.

* **SuperTickets** (this project's ``supertickets`` strategy, :mod:`nas.supertickets.two_in_one`):
  one two-in-one supernet training of ``--super-epochs`` epochs, twice: with the sandwich rule
  (largest, smallest and one random sub-network per step, the strategy's default) and training
  the whole supernet only (as the paper's HR-NAS-based code does); BN-scale L1 slimming, rho 1.8e-4 ramped over the first
  interval; global magnitude pruning +10% every half epoch up to the largest target, a smaller
  target's ticket cut after half an epoch at it), then each ticket evaluated as cut and after
  ``--retrain`` epochs of fine-tuning under its mask.
* **Pipeline**: random search of ``--candidates`` sub-networks, each trained dense for one epoch
  and ranked on the held-out images; the winner trained from scratch for ``--train-epochs``
  epochs; then, per sparsity, one-shot global magnitude pruning (the "without retraining" number)
  and ``--retrain`` epochs of fine-tuning under the mask.

Every accuracy is the model as a trial's ending leaves it: BatchNorm statistics re-estimated under
its masks on ``nas.training.CALIBRATION_BATCHES`` training batches, no weight updated. The retrained
accuracy is also shown before that recalibration (the running statistics fine-tuning left), which
is what the service reported before its trial ending recalibrated.

Compute is counted two ways, side by side in one run: dense training FLOPs (every forward pass
the arm runs in train mode, at the dense FLOPs of the sub-network it runs, times 3 for the
backward pass when gradients are on) and the process CPU seconds of the arm (single thread;
evaluation passes included in both arms alike). Seeds change the initialisation, data order and
the sub-networks sampled. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path

import torch
from _report import machine, mean_std
from torch import nn

from nas import registry
from nas.arch import fingerprint
from nas.sparse.masks import magnitude_prune
from nas.sparse.stats import model_stats, weight_sparsity
from nas.specs import JobSpec
from nas.supertickets.train import train
from nas.supertickets.schedule import schedule
from nas.supertickets.two_in_one import Settings, two_in_one, use_ticket
from nas.training import CALIBRATION_BATCHES, Data, evaluate, recalibrate_batchnorm, weight_optimizer

SPACE = {
    "stem_channels": 8,
    "stem_stride": 2,
    "stage_channels": [16, 24],
    "stage_strides": [2, 2],
    "depth_choices": [1, 2, 3],
    "expand_choices": [2, 3, 4],
    "kernel_choices": [3, 5],
}
BATCH = 64  # every training and calibration batch
INTERVAL = 0.5  # epochs between SuperTickets' pruning steps
ARMS = {
    "supertickets": "SuperTickets, sandwich rule (the strategy's default)",
    "supertickets_single": "SuperTickets, whole supernet only (as the paper's code)",
    "pipeline": "search → train → prune → retrain",
}
HOLDOUT = 500


class FlopCounter:
    """Dense training FLOPs of every forward pass a model runs in train mode (x3 with gradients on)."""

    def __init__(self, space) -> None:
        self.space = space
        self.total = 0.0
        self._cache: dict[str, float] = {}

    def attach(self, model: nn.Module) -> None:
        model.register_forward_pre_hook(self._count)

    def _count(self, model: nn.Module, args: tuple) -> None:
        if not model.training:
            return
        layout = getattr(model, "active", None) or model.layout
        arch = self.space.arch_of(layout)
        key = fingerprint(arch)
        if key not in self._cache:
            built = self.space.build(arch, (layout.in_channels, 28, 28), layout.num_classes)
            self._cache[key] = model_stats(built, (layout.in_channels, 28, 28))["flops"]
        self.total += args[0].shape[0] * self._cache[key] * (3 if torch.is_grad_enabled() else 1)


def load(data_dir: Path, n_train: int, n_test: int) -> tuple[Data, Data]:
    """(training data for both arms, the pipeline's selection data): MNIST's first images."""
    splits = registry.datasets.create("mnist", {"train_limit": n_train, "test_limit": n_test}).load(data_dir)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    xt, yt = torch.from_numpy(splits.x_test), torch.from_numpy(splits.y_test)
    shape = tuple(splits.input_shape)
    train, held = (x[:-HOLDOUT], y[:-HOLDOUT]), (x[-HOLDOUT:], y[-HOLDOUT:])  # epochs report on the held-out images
    fit = Data(*train, *held, xt, yt, shape, splits.num_classes)
    select = Data(*train, *held, *held, shape, splits.num_classes)
    return fit, select


def spec_for(epochs: int) -> JobSpec:
    return JobSpec.model_validate(
        {
            "search_space": {"name": "supernet", "params": SPACE},
            "dataset": {"name": "mnist"},
            "training": {"epochs": epochs, "batch_size": BATCH, "lr": 3e-3},
        }
    )


def quiet(epoch: int, metrics: dict[str, float]) -> None:
    pass


def flops_of(model: nn.Module) -> tuple[float, float]:
    stats = model_stats(model, (1, 28, 28))
    return stats["flops"], stats["nonzero_flops"]


def trial_end_accuracy(model: torch.nn.Module, data: Data, seed: int) -> float:
    """Test accuracy as a trial's ending leaves the model: BatchNorm statistics re-estimated under its masks."""
    recalibrate_batchnorm(model, data.x_train, BATCH, CALIBRATION_BATCHES, seed)
    return evaluate(model, data.x_test, data.y_test)[1]


def supertickets_arm(space, data: Data, args: argparse.Namespace, seed: int, sandwich: bool) -> dict:
    counter = FlopCounter(space)
    start = time.process_time()
    settings = Settings(tuple(args.targets), 0.1, INTERVAL, False, 1.8e-4, 0.1, 0.05, sandwich, 1, 20)
    spec = spec_for(args.super_epochs)
    original_build = space.build_supernet

    def counted_supernet(*a, **k):
        supernet = original_build(*a, **k)
        counter.attach(supernet)
        return supernet

    space.build_supernet = counted_supernet
    result = two_in_one(space, data, spec, settings, quiet, seed)
    rows = {}
    retrain_spec = spec_for(args.retrain)
    for level, ticket in result.ticket_models.items():
        row = {"params": sum(p.numel() for p in ticket.parameters()), "arch": result.tickets[[t["sparsity"] for t in result.tickets].index(level)]["arch"]}
        row["flops"], row["nonzero_flops"] = flops_of(ticket)
        counter.attach(ticket)
        use_ticket(ticket, data, retrain_spec, 0, quiet, seed)
        row["direct"] = trial_end_accuracy(ticket, data, seed)
        use_ticket(ticket, data, retrain_spec, args.retrain, quiet, seed + 1)
        row["retrained_stale"] = evaluate(ticket, data.x_test, data.y_test)[1]
        row["retrained"] = trial_end_accuracy(ticket, data, seed + 1)
        row["sparsity"] = weight_sparsity(ticket)
        rows[level] = row
    return {"rows": rows, "flops": counter.total, "cpu_s": time.process_time() - start}


def pipeline_arm(space, data: Data, select: Data, args: argparse.Namespace, seed: int) -> dict:
    counter = FlopCounter(space)
    start = time.process_time()
    rng = random.Random(seed)
    search_spec = spec_for(1)
    best, best_accuracy = None, -1.0
    for i in range(args.candidates):  # search: one dense epoch each, ranked on held-out images
        arch = space.sample(rng)
        torch.manual_seed(seed * 1000 + i)
        model = space.build(arch, data.input_shape, data.num_classes)
        counter.attach(model)
        train(model, weight_optimizer(model.parameters(), search_spec.training), select, search_spec, seed + i, quiet, 1)
        accuracy = evaluate(model, select.x_test, select.y_test)[1]
        if accuracy > best_accuracy:
            best, best_accuracy = arch, accuracy
    train_spec = spec_for(args.train_epochs)  # train the winner from scratch
    torch.manual_seed(seed)
    dense = space.build(best, data.input_shape, data.num_classes)
    counter.attach(dense)
    train(dense, weight_optimizer(dense.parameters(), train_spec.training), data, train_spec, seed, quiet, args.train_epochs)
    dense_accuracy = evaluate(dense, data.x_test, data.y_test)[1]
    state = {k: v.clone() for k, v in dense.state_dict().items()}
    retrain_spec = spec_for(args.retrain)
    rows = {}
    for level in args.targets:  # prune, then retrain, per sparsity
        model = space.build(best, data.input_shape, data.num_classes)
        model.load_state_dict(state)
        counter.attach(model)
        magnitude_prune(model, level, {}, "global")
        row = {"params": sum(p.numel() for p in model.parameters()), "arch": best, "sparsity": weight_sparsity(model)}
        row["flops"], row["nonzero_flops"] = flops_of(model)
        row["direct"] = trial_end_accuracy(model, data, seed)
        train(model, weight_optimizer(model.parameters(), retrain_spec.training), data, retrain_spec, seed + 7, quiet, args.retrain)
        row["retrained_stale"] = evaluate(model, data.x_test, data.y_test)[1]
        row["retrained"] = trial_end_accuracy(model, data, seed + 7)
        rows[level] = row
    return {"rows": rows, "flops": counter.total, "cpu_s": time.process_time() - start, "dense": dense_accuracy}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--train", type=int, default=3000, help="MNIST training images (the last 500 held out for selection)")
    parser.add_argument("--test", type=int, default=1000, help="MNIST test images")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.5, 0.8], help="sparsities compared")
    parser.add_argument("--super-epochs", type=int, default=None, help="two-in-one supernet epochs (default: every half-epoch interval of the schedule, plus one)")
    parser.add_argument("--candidates", type=int, default=4, help="sub-networks the pipeline's search trains")
    parser.add_argument("--train-epochs", type=int, default=4, help="epochs the pipeline trains its winner")
    parser.add_argument("--retrain", type=int, default=2, help="fine-tuning epochs after pruning (both arms)")
    parser.add_argument("--quick", action="store_true", help="1 seed, 1,500 images: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.train, args.test = 1, 1500, 500
    args.targets = sorted(args.targets)
    if args.super_epochs is None:
        args.super_epochs = math.ceil((len(schedule(args.targets, 0.1)) + 1) * INTERVAL)
    torch.set_num_threads(1)
    data_dir = Path(os.environ.get("NAS_DATA_DIR") or Path(__file__).resolve().parents[3] / "shared" / "data")
    data, select = load(data_dir, args.train, args.test)
    results: dict[str, list[dict]] = {name: [] for name in ARMS}
    for seed in range(args.seeds):
        arms = {
            "supertickets": supertickets_arm(registry.search_spaces.create("supernet", SPACE), data, args, seed, True),
            "supertickets_single": supertickets_arm(registry.search_spaces.create("supernet", SPACE), data, args, seed, False),
            "pipeline": pipeline_arm(registry.search_spaces.create("supernet", SPACE), data, select, args, seed),
        }
        for name, arm in arms.items():
            results[name].append(arm)
            cells = "  ".join(
                f"{lv:.0%}: direct {r['direct']:.3f} retrained {r['retrained']:.3f} params {r['params']} nzFLOPs {r['nonzero_flops']/1e6:.2f}M"
                for lv, r in arm["rows"].items()
            )
            print(f"seed {seed} {name}: {cells}  train GFLOPs {arm['flops']/1e9:.1f}  CPU {arm['cpu_s']:.0f}s", file=sys.stderr, flush=True)

    print(f"\nMachine: {machine()}\n")
    print(f"MNIST: first {args.train - HOLDOUT} training images (+{HOLDOUT} held out for the pipeline's selection), "
          f"first {args.test} test images; {args.seeds} seeds; mean ± std.\n")
    print("| method | sparsity | test acc. as cut (no retrain) | test acc. retrained, BN not recalibrated | test acc. retrained (trial ending) | params | dense MFLOPs | nonzero MFLOPs | training GFLOPs (whole arm) | CPU s (whole arm) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, label in ARMS.items():
        arms = results[name]
        for level in args.targets:
            rows = [a["rows"][level] for a in arms]
            print(
                f"| {label} | {level:.0%} | {mean_std([100 * r['direct'] for r in rows], 1)} | "
                f"{mean_std([100 * r['retrained_stale'] for r in rows], 1)} | "
                f"{mean_std([100 * r['retrained'] for r in rows], 1)} | {statistics.fmean(r['params'] for r in rows):.0f} | "
                f"{statistics.fmean(r['flops'] for r in rows) / 1e6:.2f} | {statistics.fmean(r['nonzero_flops'] for r in rows) / 1e6:.2f} | "
                f"{mean_std([a['flops'] / 1e9 for a in arms], 1)} | {mean_std([a['cpu_s'] for a in arms], 0)} |"
            )
    dense = [a["dense"] for a in results["pipeline"]]
    print(f"\nPipeline's dense winner before pruning: {mean_std([100 * d for d in dense], 1)}% test accuracy.")
    for name in ("supertickets", "supertickets_single"):
        for kind in ("direct", "retrained"):
            wins = sum(
                st["rows"][lv][kind] >= pl["rows"][lv][kind]
                for st, pl in zip(results[name], results["pipeline"])
                for lv in args.targets
            )
            print(f"{ARMS[name]} {kind} ≥ pipeline {kind} in {wins} of {args.seeds * len(args.targets)} (seed, sparsity) pairs.")
    for name in ARMS:
        for level in args.targets:
            archs = [a["rows"][level]["arch"] for a in results[name]]
            print(f"{name} {level:.0%} archs: {archs}", file=sys.stderr)


if __name__ == "__main__":
    main()
