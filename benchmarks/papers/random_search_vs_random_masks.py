"""Random search vs random masks at 50/75/90% node sparsity (Farahani 2024, arXiv 2403.08265).

    python benchmarks/papers/random_search_vs_random_masks.py [--seeds 0 1 2 3 4] [--sparsities 0.5 0.75 0.9]

The paper applies random search to the node space of an overparameterised network and finds the
sub-networks it selects neither more accurate nor faster to converge than random sub-networks at
the same sparsity. Here, per seed and node sparsity s:

* the parent is LeNet-300-100 (``sparse_mlp`` with widths 300, 100), initialised from the seed;
* a node mask keeps round((1 - s) · width) units of each hidden layer and masks their incoming
  rows and outgoing columns (``nas.sparse.masks.set_mask``), so removed units have no effect;
* **RS**: ``--candidates`` random node masks, each trained for one epoch from the parent's
  initial weights and scored by validation loss; the best one is trained for ``--epochs`` from
  the initial weights again;
* **random**: one more random node mask, trained the same way from the same initial weights.

Both report test accuracy after the last epoch and the epoch of best validation accuracy. The
pairs (RS trial as the found one, random as its control) go through
``nas.strategies.random_search.control_comparison``, the helper a ``random`` job with
``random_mask_control`` uses; the significance test is a paired t-test over seeds (scipy), the
Wilcoxon signed-rank p-value is printed beside it (with 5 pairs it cannot go below 0.0625).
In-process training on an MNIST subsample (the last ``--val`` training images are the
validation split); no server.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from scipy import stats  # noqa: E402

from benchmarks.papers._report import machine, mean_std  # noqa: E402
from nas import registry  # noqa: E402
from nas.sparse.masks import set_mask  # noqa: E402
from nas.specs import Trial, TrialState  # noqa: E402
from nas.strategies.random_search import control_comparison  # noqa: E402
from nas.training import evaluate  # noqa: E402

PARENT = {"depth": 2, "width_0": 300, "width_1": 100, "activation": "relu"}
HIDDEN = ("fc0", "fc1")
NEXT = {"fc0": "fc1", "fc1": "out"}


def node_masks(model: torch.nn.Module, sparsity: float, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Kept units per hidden layer, as boolean vectors: round((1 - sparsity) * width) of them, at random."""
    keep = {}
    for name in HIDDEN:
        width = getattr(model, name).out_features
        k = max(1, round((1 - sparsity) * width))
        chosen = torch.randperm(width, generator=gen)[:k]
        keep[name] = torch.zeros(width, dtype=torch.bool).index_fill_(0, chosen, True)
    return keep


def apply(model: torch.nn.Module, keep: dict[str, torch.Tensor]) -> None:
    """Mask every removed unit's incoming row and outgoing column."""
    rows = {name: keep[name][:, None].expand_as(getattr(model, name).weight) for name in HIDDEN}
    cols = {NEXT[name]: keep[name][None, :].expand_as(getattr(model, NEXT[name]).weight) for name in HIDDEN}
    for name in ("fc0", "fc1", "out"):
        mask = torch.ones_like(getattr(model, name).weight, dtype=torch.bool)
        if name in rows:
            mask &= rows[name]
        if name in cols:
            mask &= cols[name]
        set_mask(getattr(model, name), "weight", mask)


def train(init: dict[str, torch.Tensor], keep: dict[str, torch.Tensor], data: dict[str, torch.Tensor], epochs: int,
          seed: int, space: Any, shape: tuple[int, ...], classes: int) -> dict[str, Any]:
    """Train the masked parent from ``init``; validation loss/accuracy per epoch, test accuracy at the end."""
    model = space.build(PARENT, shape, classes)
    model.load_state_dict(init)
    apply(model, keep)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order = torch.Generator().manual_seed(seed)
    history = []
    for _ in range(epochs):
        model.train()
        for batch in torch.randperm(len(data["x_train"]), generator=order).split(64):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(data["x_train"][batch]), data["y_train"][batch]).backward()
            optimizer.step()
        history.append(evaluate(model, data["x_val"], data["y_val"]))
    _, test_accuracy = evaluate(model, data["x_test"], data["y_test"])
    best_epoch = 1 + int(np.argmax([acc for _, acc in history]))
    return {"val_loss": history[-1][0], "history": history, "test_accuracy": test_accuracy, "best_val_epoch": best_epoch}


def load(args: argparse.Namespace) -> tuple[dict[str, torch.Tensor], tuple[int, ...], int]:
    dataset = registry.datasets.create("mnist", {"train_limit": args.train_limit + args.val, "test_limit": args.test_limit})
    splits = dataset.load(args.data_dir)
    x, y = torch.from_numpy(splits.x_train), torch.from_numpy(splits.y_train)
    data = {
        "x_train": x[: -args.val], "y_train": y[: -args.val], "x_val": x[-args.val:], "y_val": y[-args.val:],
        "x_test": torch.from_numpy(splits.x_test), "y_test": torch.from_numpy(splits.y_test),
    }
    return data, splits.input_shape, splits.num_classes


def run_one(sparsity: float, seed: int, args: argparse.Namespace, data: dict[str, torch.Tensor], shape: tuple[int, ...],
            classes: int) -> dict[str, Any]:
    space = registry.search_spaces.create("sparse_mlp", {"max_depth": 2, "width_choices": [100, 300]})
    torch.manual_seed(seed)
    init = {k: v.clone() for k, v in space.build(PARENT, shape, classes).state_dict().items()}
    gen = torch.Generator().manual_seed(10_000 + seed)
    candidates = [node_masks(space.build(PARENT, shape, classes), sparsity, gen) for _ in range(args.candidates)]
    control_mask = node_masks(space.build(PARENT, shape, classes), sparsity, gen)
    scores = [train(init, keep, data, 1, seed, space, shape, classes)["val_loss"] for keep in candidates]
    best = candidates[int(np.argmin(scores))]
    found = train(init, best, data, args.epochs, seed, space, shape, classes)
    control = train(init, control_mask, data, args.epochs, seed, space, shape, classes)
    return {"sparsity": sparsity, "seed": seed, "search_scores": scores, "rs": found, "random": control}


def as_trials(results: list[dict[str, Any]]) -> list[Trial]:
    """The pairs as a ``random`` job with ``random_mask_control`` records them (control.parent_id = found)."""
    now = datetime.now(timezone.utc)
    trials = []
    for i, r in enumerate(results):
        found = Trial(id=f"rs-{i}", job_id="bench", number=2 * i, state=TrialState.complete, arch=PARENT,
                      metrics={"accuracy": r["rs"]["test_accuracy"]}, created_at=now)
        control = Trial(id=f"random-{i}", job_id="bench", number=2 * i + 1, state=TrialState.complete, arch=PARENT,
                        parent_id=found.id, metrics={"accuracy": r["random"]["test_accuracy"]}, created_at=now)
        trials += [found, control]
    return trials


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--sparsities", type=float, nargs="+", default=[0.5, 0.75, 0.9])
    parser.add_argument("--candidates", type=int, default=10, help="node masks random search tries per seed")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--train-limit", type=int, default=6000)
    parser.add_argument("--val", type=int, default=2000)
    parser.add_argument("--test-limit", type=int, default=2000)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("NAS_DATA_DIR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "papers" / "results")
    args = parser.parse_args()
    torch.set_num_threads(1)

    started = time.perf_counter()
    data, shape, classes = load(args)
    results = []
    for sparsity in args.sparsities:
        for seed in args.seeds:
            results.append(run_one(sparsity, seed, args, data, shape, classes))
            r = results[-1]
            print(f"s={sparsity} seed={seed}: RS {r['rs']['test_accuracy']:.4f} (best val @{r['rs']['best_val_epoch']}) "
                  f"random {r['random']['test_accuracy']:.4f} (@{r['random']['best_val_epoch']})", file=sys.stderr, flush=True)

    lines = [
        f"`python benchmarks/papers/random_search_vs_random_masks.py --seeds {' '.join(map(str, args.seeds))} "
        f"--candidates {args.candidates} --epochs {args.epochs} --train-limit {args.train_limit}` "
        f"({(time.perf_counter() - started) / 60:.1f} min)",
        "",
        f"Machine: {machine()}",
        "",
        "| node sparsity | RS-best test acc | random test acc | RS − random | paired t-test p | Wilcoxon p "
        "| best-val epoch RS | best-val epoch random | verdict |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    summary = {}
    for sparsity in args.sparsities:
        rows = [r for r in results if r["sparsity"] == sparsity]
        rs = [r["rs"]["test_accuracy"] for r in rows]
        rnd = [r["random"]["test_accuracy"] for r in rows]
        comparison = control_comparison(as_trials(rows))
        t_p = float(stats.ttest_rel(rs, rnd).pvalue) if len(rows) > 1 and rs != rnd else 1.0
        diff_std = statistics.stdev([a - b for a, b in zip(rs, rnd)]) if len(rows) > 1 else 0.0
        significant = t_p < 0.05
        verdict = ("significant difference (disagrees with the paper)" if significant
                   else "no significant difference (agrees with the paper)")
        summary[sparsity] = {"rs": rs, "random": rnd, "t_p": t_p, "wilcoxon_p": comparison.p_value,
                             "mean_diff": comparison.mean_difference, "diff_std": diff_std,
                             "rs_wins": comparison.found_wins, "pairs": comparison.pairs}
        lines.append(
            f"| {sparsity:.0%} | {mean_std(rs, 4)} | {mean_std(rnd, 4)} | {comparison.mean_difference:+.4f} ± {diff_std:.4f} "
            f"| {t_p:.3f} | {comparison.p_value if comparison.p_value is None else round(comparison.p_value, 3)} "
            f"| {mean_std([r['rs']['best_val_epoch'] for r in rows], 1)} "
            f"| {mean_std([r['random']['best_val_epoch'] for r in rows], 1)} | {verdict} |"
        )
    text = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "random_search_vs_random_masks.json").write_text(json.dumps({"results": results, "summary": summary}, indent=1))
    (args.out / "random_search_vs_random_masks.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
