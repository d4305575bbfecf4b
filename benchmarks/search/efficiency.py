"""Search efficiency: hypervolume of (accuracy, measured latency) after N trials, per strategy.

    python benchmarks/search/efficiency.py [--trials 30] [--seeds 0 1 2] [--spaces sparse_mlp sparse_cnn]

For every search space, strategy (``random``, ``tpe``, ``nsga2``) and seed, the registered strategy
class runs ask/tell for ``--trials`` sequential trials (one at a time, as a job with
``max_concurrent: 1``) with objectives accuracy (max) and ``latency_ms`` (min). Trials run
in-process through ``nas.training.run_trial`` on an MNIST subsample, not through the server, to
save the service's per-trial overhead; the metrics are the ones a job records, and the strategies
rank on validation accuracy as in a job, while the hypervolume below is of the test accuracy.

Every architecture is trained once with one training seed and its metrics are cached (in
``--cache``), so a strategy that proposes an architecture another strategy or seed already tried
gets the identical result: the comparison is between search strategies on one fixed, measured
table, as in tabular NAS benchmarks, and reruns are cheap. Only the search seed varies between
repetitions.

Hypervolume: accuracy and latency are min-max normalised over every architecture the run
evaluated, and the reference point is 10% beyond the worst of both (latency 1.1, accuracy -0.1).
The target (issue 5): our best strategy reaches random search's final hypervolume (mean over
seeds) within a third of the trials.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from nas import registry  # noqa: E402
from nas.arch import fingerprint  # noqa: E402
from nas.specs import JobSpec, Trial, TrialState  # noqa: E402
from nas.strategies.base import WAIT  # noqa: E402

STRATEGIES = ("random", "tpe", "nsga2")
OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]

SPACES: dict[str, dict[str, Any]] = {
    "sparse_mlp": {
        "search_space": {"name": "sparse_mlp", "params": {
            "min_depth": 1, "max_depth": 3, "width_choices": [16, 32, 64, 128, 256, 512],
            "activation_choices": ["relu"], "layer_sparsity_choices": [0.5, 0.8, 0.9, 0.95, 0.98]}},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.9}},
    },
    "sparse_cnn": {
        "search_space": {"name": "sparse_cnn", "params": {
            "families": ["conv"], "conv_min_blocks": 1, "conv_max_blocks": 2, "conv_width_choices": [4, 8, 16],
            "fc_min_depth": 0, "fc_max_depth": 1, "fc_width_choices": [32, 64],
            "layer_sparsity_choices": [0.5, 0.8, 0.95]}},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.8}},
    },
}
# Per space: trials per job and the MNIST subsample (convolutions on 28x28 cost ~10x an MLP here).
DEFAULTS: dict[str, dict[str, int]] = {
    "sparse_mlp": {"trials": 30, "train_limit": 3000, "test_limit": 1000},
    "sparse_cnn": {"trials": 15, "train_limit": 1000, "test_limit": 500},
}


def settings(space: str, args: argparse.Namespace) -> argparse.Namespace:
    """``args`` with this space's defaults for the options not given on the command line."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    return argparse.Namespace(**{**DEFAULTS[space], **given})


def job_spec(space: str, strategy: str, seed: int, args: argparse.Namespace) -> JobSpec:
    return JobSpec.model_validate({
        **SPACES[space],
        "name": f"efficiency-{space}-{strategy}",
        "strategy": {"name": strategy},
        "dataset": {"name": "mnist", "params": {"train_limit": args.train_limit, "test_limit": args.test_limit}},
        "training": {"epochs": args.epochs, "batch_size": 64, "lr": 0.003},
        "objectives": OBJECTIVES,
        "budget": {"max_trials": args.trials, "max_concurrent": 1},
        "seed": seed,
    })


class Table:
    """Metrics per architecture: trained once (training seed 0), cached on disk as JSON."""

    def __init__(self, path: Path, data_dir: Path) -> None:
        self.path = path
        self.data_dir = data_dir
        self.rows: dict[str, dict[str, Any]] = json.loads(path.read_text()) if path.exists() else {}
        self.trained = 0

    def metrics(self, spec: JobSpec, arch: dict[str, Any]) -> dict[str, float]:
        from nas.training import run_trial

        eval_spec = spec.model_copy(update={"seed": 0, "strategy": spec.strategy})
        key = fingerprint({"space": spec.search_space.model_dump(), "sparsifier": spec.sparsifier.model_dump(),
                           "training": spec.training.model_dump(), "dataset": spec.dataset.model_dump(), "arch": arch})
        if key not in self.rows:
            outcome = run_trial(eval_spec, arch, self.data_dir, lambda epoch, metrics: None)
            keep = ("val_accuracy", "accuracy", "latency_ms", "params", "nonzero_params", "sparsity", "train_time_s")
            self.rows[key] = {"arch": arch, **{k: float(outcome.metrics[k]) for k in keep}}
            self.trained += 1
            if self.trained % 10 == 0:
                self.save()
        return {k: v for k, v in self.rows[key].items() if k != "arch"}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.rows, indent=0, sort_keys=True))


def drive(spec: JobSpec, evaluate: Callable[[dict[str, Any]], dict[str, float]]) -> list[Trial]:
    """One job's trials, in order: the registered strategy of ``spec`` asked and told in-process, one
    trial at a time (a job with ``max_concurrent: 1``), each ``complete`` with the metrics ``evaluate``
    gives its architecture.

    It stops where the runner stops such a job: after ``budget.max_trials`` trials, when the strategy
    is done, or once the finished trials' ``train_time_s`` reach ``budget.max_simulated_s``.
    """
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    cls = registry.strategies.get(spec.strategy.name)
    agent = cls.from_history(cls.Params.model_validate(spec.strategy.params), space, spec, [])
    limit = spec.budget.max_simulated_s
    trials: list[Trial] = []
    spent = 0.0
    while len(trials) < spec.budget.max_trials and (limit is None or spent < limit):
        plan = agent.ask()
        if plan is None:
            break
        if plan is WAIT:
            raise RuntimeError(f"{spec.strategy.name} waits with no trial running")
        number = len(trials)
        trial = Trial(id=f"{spec.strategy.name}-{spec.seed}-{number}", job_id=spec.name, number=number,
                      state=TrialState.complete, arch=plan.arch, parent_id=plan.parent_id,
                      metrics=evaluate(plan.arch), created_at=datetime.now(timezone.utc))  # fmt: skip
        agent.tell(trial)
        trials.append(trial)
        spent += trial.metrics.get("train_time_s", 0.0)
    return trials


def search(space_name: str, strategy: str, seed: int, args: argparse.Namespace, table: Table) -> list[dict[str, float]]:
    """One job's trials, in order, each as its (accuracy, latency_ms) metrics."""
    spec = job_spec(space_name, strategy, seed, args)
    return [trial.metrics for trial in drive(spec, lambda arch: table.metrics(spec, arch))]


def hypervolume(points: list[tuple[float, float]]) -> float:
    """2-D hypervolume of normalised (latency, accuracy) points: latency minimised, accuracy maximised,
    reference point (1.1, -0.1)."""
    ref_x, ref_y = 1.1, -0.1
    front: list[tuple[float, float]] = []
    for x, y in sorted(points, key=lambda p: (p[0], -p[1])):
        if x < ref_x and y > ref_y and (not front or y > front[-1][1]):
            front.append((x, y))
    area = 0.0
    for i, (x, y) in enumerate(front):
        next_x = front[i + 1][0] if i + 1 < len(front) else ref_x
        area += (next_x - x) * (y - ref_y)
    return area


def trajectories(runs: dict[tuple[str, str, int], list[dict[str, float]]]) -> dict[tuple[str, str, int], list[float]]:
    """Hypervolume after each trial, normalised per space over every evaluated architecture."""
    out = {}
    for space in {k[0] for k in runs}:
        points = [m for k, trials in runs.items() if k[0] == space for m in trials]
        acc = [m["accuracy"] for m in points]
        lat = [m["latency_ms"] for m in points]
        a_lo, a_hi, l_lo, l_hi = min(acc), max(acc), min(lat), max(lat)

        def norm(m: dict[str, float]) -> tuple[float, float]:
            return ((m["latency_ms"] - l_lo) / (l_hi - l_lo or 1), (m["accuracy"] - a_lo) / (a_hi - a_lo or 1))

        for key, trials in runs.items():
            if key[0] == space:
                normed = [norm(m) for m in trials]
                out[key] = [hypervolume(normed[: n + 1]) for n in range(len(normed))]
    return out


def report(runs: dict[tuple[str, str, int], list[dict[str, float]]], args: argparse.Namespace) -> dict[str, Any]:
    hv = trajectories(runs)
    n = args.trials
    checkpoints = sorted({max(1, n // 3), max(1, 2 * n // 3), n})
    result: dict[str, Any] = {"trials": n, "seeds": args.seeds, "checkpoints": checkpoints, "spaces": {}}
    for space in sorted({k[0] for k in runs}):
        target = statistics.mean(hv[(space, "random", s)][-1] for s in args.seeds)
        rows = {}
        for strategy in STRATEGIES:
            curves = [hv[(space, strategy, s)] for s in args.seeds]
            reach = [next((i + 1 for i, v in enumerate(c) if v >= target), None) for c in curves]
            reached = sorted(r for r in reach if r is not None)
            rows[strategy] = {
                "hv": {c: (statistics.mean(cv[c - 1] for cv in curves), statistics.pstdev(cv[c - 1] for cv in curves))
                       for c in checkpoints},
                "trials_to_random_final": reach,
                "median_trials_to_random_final": (statistics.median(reach) if len(reached) == len(reach) else None),
            }
        best = min((rows[s]["median_trials_to_random_final"] or float("inf"), s) for s in ("tpe", "nsga2"))
        result["spaces"][space] = {"random_final_hv": target, "strategies": rows,
                                   "best": best[1], "target_met": best[0] <= n / 3}
    return result


def markdown(results: dict[str, Any], per_space: dict[str, argparse.Namespace], args: argparse.Namespace,
             wall_s: float, trained: int) -> str:
    lines = [
        f"`python benchmarks/search/efficiency.py --seeds {' '.join(map(str, args.seeds))} --spaces {' '.join(args.spaces)}` "
        f"({wall_s / 60:.1f} min, {trained} architectures trained in this run, the rest from the cache)",
        "",
    ]
    for space, result in results.items():
        a = per_space[space]
        cps = result["checkpoints"]
        lines += [
            f"{space}: {a.trials} trials per job, MNIST {a.train_limit} train / {a.test_limit} test images, "
            f"{a.epochs} epoch(s) per trial",
            "",
            "| strategy | " + " | ".join(f"HV after {c}" for c in cps) + " | trials to random's final HV (per seed) |",
            "|---|" + "---|" * len(cps) + "---|",
        ]
        info = result["spaces"][space]
        for strategy, row in info["strategies"].items():
            cells = " | ".join(f"{row['hv'][c][0]:.3f} ± {row['hv'][c][1]:.3f}" for c in cps)
            reach = ", ".join("—" if r is None else str(r) for r in row["trials_to_random_final"])
            lines.append(f"| {strategy} | {cells} | {reach} |")
        verdict = "met" if info["target_met"] else "missed"
        lines += ["", f"Random's final HV (mean of seeds) {info['random_final_hv']:.3f}; best strategy {info['best']} "
                      f"(median over seeds); target ≤ {a.trials // 3} trials: {verdict}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=None, help="trials per job (default: 30 sparse_mlp, 15 sparse_cnn)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=list(SPACES))
    parser.add_argument("--train-limit", type=int, default=None, help="MNIST training images (3000 / 1000)")
    parser.add_argument("--test-limit", type=int, default=None, help="MNIST test images (1000 / 500)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--data-dir", type=Path, default=Path(os.environ.get("NAS_DATA_DIR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "search" / "results")
    parser.add_argument("--cache", type=Path, default=None, help="metrics per architecture (default: OUT/efficiency_table.json)")
    args = parser.parse_args()
    torch.set_num_threads(1)

    table = Table(args.cache or args.out / "efficiency_table.json", args.data_dir)
    started = time.perf_counter()
    runs: dict[tuple[str, str, int], list[dict[str, float]]] = {}
    per_space: dict[str, argparse.Namespace] = {}
    for space in args.spaces:
        space_args = per_space[space] = settings(space, args)
        problems = registry.strategies.get("tpe").check_spec(None, job_spec(space, "random", 0, space_args))
        if problems:
            print(f"skipping {space}: {problems[0][1]}", file=sys.stderr)
            continue
        for strategy in STRATEGIES:
            for seed in args.seeds:
                t0 = time.perf_counter()
                runs[(space, strategy, seed)] = search(space, strategy, seed, space_args, table)
                print(f"{space} {strategy} seed {seed}: {time.perf_counter() - t0:.0f} s, table {len(table.rows)}",
                      file=sys.stderr, flush=True)
    table.save()
    results = {space: report({k: v for k, v in runs.items() if k[0] == space}, per_space[space])
               for space in per_space if any(k[0] == space for k in runs)}
    wall = time.perf_counter() - started
    text = markdown(results, per_space, args, wall, table.trained)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "efficiency.json").write_text(json.dumps(results, indent=1, default=str))
    (args.out / "efficiency.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
