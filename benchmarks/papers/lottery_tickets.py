#!/usr/bin/env python
"""Lottery tickets on LeNet-300-100 / MNIST (Frankle & Carbin, ICLR 2019, Figures 3 and 4), per pruning round.

    python benchmarks/papers/lottery_tickets.py [--seeds 3] [--rounds 15] [--iterations 2000]
        [--long-iterations 6000] [--quick]

Winning tickets come from the ``lottery`` sparsifier itself (nas.sparse.lottery): one training run
per round, then 20% of every hidden layer's surviving weights and 10% of the output layer's are
pruned by magnitude and the survivors reset to θ0 (Adam lr 1.2e-3, batch 60, Gaussian Glorot init,
MNIST normalised by mean/std, 55K train / 5K validation held out of the training set / 10K test).
The control is the paper's random re-initialisation: the same round's mask on a fresh Glorot draw,
trained on the same batches. Every ``--eval-every`` iterations the validation loss is measured; the
early-stopping iteration is the one of minimum validation loss, and the test accuracy is reported
there and at the end of the run. Seeds change the initialisation, the validation split and the
batch order. The paper trains 50K iterations per round; the default here is 2,000 (about 2.2
epochs) so the run fits a shared 2-core CPU, which cuts the runs off near the dense network's
minimum of validation loss. The early-stopping claims are therefore measured on long runs too:
the dense network, the P_m = 21.1% ticket (θ0 under the round-7 mask) and its re-initialisation,
each trained ``--long-iterations`` steps on the same batches.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from _report import machine, mean_std
from torch import nn

from nas import registry
from nas.sparse.lottery import LotteryTicket
from nas.sparse.masks import masks, prunable_weights, set_mask
from nas.training import evaluate

LENET = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
VALIDATION = 5_000
BATCH, LR = 60, 1.2e-3


@dataclass
class Split:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


@dataclass
class Run:
    """One training run: test accuracy (%) at its end and at its early-stopping iteration."""

    accuracy_end: float
    accuracy_early_stop: float
    early_stop_iteration: int


def load_split(data_dir: Path, seed: int) -> Split:
    """MNIST with ``VALIDATION`` training examples, drawn by ``seed``, held out for early stopping."""
    data = registry.datasets.create("mnist", {}).load(data_dir)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    val, train = order[:VALIDATION], order[VALIDATION:]
    return Split(x[train], y[train], x[val], y[val], torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))


def lenet(seed: int) -> nn.Module:
    """LeNet-300-100 as the sparse_mlp search space builds it, with Gaussian Glorot weights and zero biases."""
    space = registry.search_spaces.create("sparse_mlp", {"width_choices": [100, 300], "activation_choices": ["relu"]})
    model = space.build(LENET, (1, 28, 28), 10)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module, attr in prunable_weights(model).values():
            weight = getattr(module, attr)
            fan_out, fan_in = weight.shape
            weight.normal_(0.0, (2.0 / (fan_in + fan_out)) ** 0.5, generator=gen)  # = nn.init.xavier_normal_
            module.bias.zero_()
    return model


def batches(n: int, seed: int) -> Iterator[torch.Tensor]:
    """Indices of batches of ``BATCH`` examples, epoch after epoch of a fresh shuffle."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        yield from torch.randperm(n, generator=gen).split(BATCH)


def train_run(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Split,
    iterations: int,
    eval_every: int,
    order_seed: int,
    after_step: Callable[[int], None] = lambda iteration: None,
) -> Run:
    """Train ``iterations`` steps, tracking the validation loss every ``eval_every`` and at the end.

    Evaluation sees each step's weights before ``after_step`` runs: at the last step of a round the
    sparsifier's hook prunes and rewinds, so the run is measured first.
    """
    best_loss, best_iteration, best_state = float("inf"), 0, None
    order = batches(len(data.x_train), order_seed)
    for iteration in range(1, iterations + 1):
        model.train()
        batch = next(order)
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(data.x_train[batch]), data.y_train[batch]).backward()
        optimizer.step()
        if iteration % eval_every == 0 or iteration == iterations:
            loss, _ = evaluate(model, data.x_val, data.y_val)
            if loss < best_loss:
                best_loss, best_iteration = loss, iteration
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        if iteration == iterations:
            _, accuracy_end = evaluate(model, data.x_test, data.y_test)
            final_state = {k: v.clone() for k, v in model.state_dict().items()}
            model.load_state_dict(best_state)
            _, accuracy_early_stop = evaluate(model, data.x_test, data.y_test)
            model.load_state_dict(final_state)
        after_step(iteration)
    return Run(100 * accuracy_end, 100 * accuracy_early_stop, best_iteration)


def remaining_percent(model: nn.Module) -> float:
    """Share of the prunable weights still unmasked (Frankle & Carbin's P_m), in percent."""
    weights = [getattr(module, attr) for module, attr in prunable_weights(model).values()]
    return 100 * sum(int(torch.count_nonzero(w)) for w in weights) / sum(w.numel() for w in weights)


def reinit_seed(seed: int, r: int) -> int:
    """Seed of the random re-initialisation control of round ``r``: a fresh draw from the same initialiser."""
    return 10_000 + 1000 * seed + r


def masked(model: nn.Module, mask: dict[str, torch.Tensor]) -> nn.Module:
    for name, (module, attr) in prunable_weights(model).items():
        set_mask(module, attr, mask[name])
    return model


def one_seed(seed: int, data: Split, rounds: int, iterations: int, eval_every: int) -> list[dict[str, object]]:
    """Per round: P_m, the winning ticket's run and (from round 1) its random re-initialisation's run."""
    model = lenet(seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    lottery = LotteryTicket(LotteryTicket.Params(rounds=rounds))  # 20% hidden / 10% output, reset to θ0
    lottery.attach(model, optimizer, (rounds + 1) * iterations, None)
    rows: list[dict[str, object]] = []
    for r in range(rounds + 1):
        row: dict[str, object] = {"round": r, "pm": remaining_percent(model)}
        mask = {name: m.clone() for name, m in masks(model).items()}
        order_seed = 1000 * seed + r
        offset = r * iterations
        row["ticket"] = train_run(
            model, optimizer, data, iterations, eval_every, order_seed, lambda i: lottery.on_step(model, offset + i)
        )
        if r:
            control = masked(lenet(reinit_seed(seed, r)), mask)
            row["reinit"] = train_run(
                control, torch.optim.Adam(control.parameters(), lr=LR), data, iterations, eval_every, order_seed
            )
        row["mask"] = mask
        rows.append(row)
        print(f"  seed {seed} round {r:2d}  P_m {row['pm']:5.1f}%  " + "  ".join(
            f"{kind} {run.accuracy_early_stop:.2f}% @ {run.early_stop_iteration}"
            for kind in ("ticket", "reinit") if (run := row.get(kind)) is not None
        ), file=sys.stderr, flush=True)  # fmt: skip
    return rows


def long_runs(seed: int, data: Split, row: dict[str, object], iterations: int, eval_every: int) -> dict[str, Run]:
    """Early stopping with room to stop: dense, the round's ticket (θ0 under its mask) and its re-initialisation.

    All three start from the same draws as in the sweep and see the same batches for ``iterations`` steps.
    """
    mask, r = row["mask"], int(row["round"])
    nets = {
        "dense": lenet(seed),
        "ticket": masked(lenet(seed), mask),
        "reinit": masked(lenet(reinit_seed(seed, r)), mask),
    }
    runs = {}
    for kind, net in nets.items():
        optimizer = torch.optim.Adam(net.parameters(), lr=LR)
        runs[kind] = train_run(net, optimizer, data, iterations, eval_every, order_seed=1000 * seed + 999)
        print(f"  seed {seed} long {kind}: {runs[kind]}", file=sys.stderr, flush=True)
    return runs


def table(results: list[list[dict[str, object]]]) -> str:
    """Markdown: one line per round, mean ± std over seeds."""

    def cell(r: int, kind: str, field: str, digits: int) -> str:
        values = [float(getattr(rows[r][kind], field)) for rows in results if kind in rows[r]]
        return mean_std(values, digits) if values else "—"

    lines = [
        "| round | P_m % | ticket acc @ early stop | ticket acc, end | ticket early-stop iter "
        "| reinit acc @ early stop | reinit acc, end | reinit early-stop iter |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in range(len(results[0])):
        pm = results[0][r]["pm"]
        cells = [
            cell(r, kind, field, digits)
            for kind in ("ticket", "reinit")
            for field, digits in (("accuracy_early_stop", 2), ("accuracy_end", 2), ("early_stop_iteration", 0))
        ]
        lines.append(f"| {r} | {pm:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def long_table(long: list[dict[str, Run]], pm: float, iterations: int) -> str:
    """Markdown: the long runs, mean ± std over seeds."""
    lines = [
        f"| network ({iterations} iterations) | P_m % | early-stop iteration | test acc @ early stop | test acc, end |",
        "|---|---:|---:|---:|---:|",
    ]
    for kind, label, share in (("dense", "dense", 100.0), ("ticket", "winning ticket", pm), ("reinit", "reinit", pm)):
        cells = [
            mean_std([float(getattr(runs[kind], field)) for runs in long], digits)
            for field, digits in (("early_stop_iteration", 0), ("accuracy_early_stop", 2), ("accuracy_end", 2))
        ]
        lines.append(f"| {label} | {share:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def claims(results: list[list[dict[str, object]]], long: list[dict[str, Run]]) -> str:
    """The paper's LeNet claims beside ours: accuracies (at early stop) from the sweep, iterations from long runs."""

    def mean(r: int, kind: str) -> float:
        return statistics.fmean(float(getattr(rows[r][kind], "accuracy_early_stop")) for rows in results)

    pms = [float(row["pm"]) for row in results[0]]
    rounds = len(pms) - 1
    dense = mean(0, "ticket")

    def at(target: float) -> int | None:
        r = min(range(rounds + 1), key=lambda i: abs(pms[i] - target))
        return r if abs(pms[r] - target) < 0.5 else None

    def listed(rs: list[int]) -> str:
        return ", ".join(f"{pms[r]:.1f}%" for r in rs) or "none"

    below = [r for r in range(1, rounds + 1) if mean(r, "ticket") < dense]
    reinit_below = [r for r in range(1, rounds + 1) if mean(r, "reinit") < dense]
    lines = [
        "| claim (Frankle & Carbin 2019, LeNet-300-100) | paper | ours |",
        "|---|---|---|",
        f"| dense test accuracy | ≈98% | {dense:.2f}% |",
        "| winning tickets at or above dense accuracy down to | P_m = 3.6% (below dense only at 2.9%) "
        f"| {pms[min(below) - 1] if below else pms[-1]:.1f}%; rounds below dense: {listed(below)} |",
        f"| random re-initialisation below dense from | P_m = 21.1% | rounds below dense: {listed(reinit_below)} |",
    ]
    if (r := at(13.5)) is not None:
        lines.append(f"| ticket accuracy at P_m = 13.5% vs dense | +0.3 pt | {mean(r, 'ticket') - dense:+.2f} pt |")
    if (r := at(3.6)) is not None:
        lines.append(
            f"| ticket accuracy at P_m = 3.6% vs dense | back to dense | {mean(r, 'ticket') - dense:+.2f} pt "
            f"(reinit {mean(r, 'reinit') - dense:+.2f} pt) |"
        )
    if (r := at(21.1)) is not None:
        gap = mean(r, "ticket") - mean(r, "reinit")
        lines.append(f"| ticket vs its reinit at P_m = 21.1%: accuracy | +0.5 pt | {gap:+.2f} pt |")
    if long:

        def iteration(kind: str) -> float:
            return statistics.fmean(runs[kind].early_stop_iteration for runs in long)

        lines += [
            f"| ticket's early stopping at P_m ≈ 21% vs dense (long runs) | 38% earlier "
            f"| {100 * (1 - iteration('ticket') / iteration('dense')):.0f}% earlier |",
            f"| ticket vs its reinit at P_m ≈ 21%: early stopping (long runs) | 2.51× faster "
            f"| {iteration('reinit') / iteration('ticket'):.2f}× |",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--rounds", type=int, default=15, help="pruning rounds (15: P_m = 3.6%%)")
    parser.add_argument("--iterations", type=int, default=2000, help="training iterations per round (paper: 50K)")
    parser.add_argument(
        "--long-iterations",
        type=int,
        default=6000,
        help="iterations of the early-stopping runs at P_m = 21.1%% (needs rounds >= 7; 0: skip them)",
    )
    parser.add_argument("--eval-every", type=int, default=100, help="iterations between validation losses")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (keep a shared machine usable)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 7 rounds of 150 iterations")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.rounds, args.iterations, args.long_iterations, args.eval_every = 1, 7, 150, 300, 50
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("NAS_DATA_DIR", "/work/shared/data"))

    start = time.perf_counter()
    results, long = [], []
    for seed in range(args.seeds):
        data = load_split(data_dir, seed)
        rows = one_seed(seed, data, args.rounds, args.iterations, args.eval_every)
        results.append(rows)
        if args.long_iterations and args.rounds >= 7:
            long.append(long_runs(seed, data, rows[7], args.long_iterations, args.eval_every))
    minutes = (time.perf_counter() - start) / 60
    print(f"command: `python benchmarks/papers/lottery_tickets.py{''.join(' ' + a for a in sys.argv[1:])}`")
    print(f"setup: {args.seeds} seed(s), {args.rounds} rounds of {args.iterations} iterations, long runs "
          f"{args.long_iterations} iterations, validation every {args.eval_every}; {minutes:.1f} min")  # fmt: skip
    print(f"machine: {machine()}\n")
    print(table(results) + "\n")
    if long:
        print(long_table(long, float(results[0][7]["pm"]), args.long_iterations) + "\n")
    print(claims(results, long))


if __name__ == "__main__":
    main()
