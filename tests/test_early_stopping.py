"""Early-stopping rules: their submission checks, their Tune schedulers' decisions, and a real job.

The schedulers are driven directly with Tune's own ``on_trial_*`` calls and stand-in trial objects
(a scheduler only reads ``trial_id`` and ``config``); the service test runs two 20-trial jobs on
digits through ``nas serve``, with and without ASHA.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError
from ray.tune.schedulers import TrialScheduler

from nas import registry
from nas.specs import JobSpec
from workers import schedulers
from workers.schedulers import tune_scheduler

CONTINUE, STOP = TrialScheduler.CONTINUE, TrialScheduler.STOP


def spec_with(**overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "search_space": {"name": "sparse_mlp"},
        "dataset": {"name": "digits"},
        "training": {"epochs": 9},
    }
    spec.update(overrides)
    return JobSpec.model_validate(spec)


def problems(**overrides: Any) -> list[tuple[tuple[Any, ...], str]]:
    try:
        spec_with(**overrides)
    except ValidationError as exc:
        return [(e["loc"], e["msg"]) for e in exc.errors()]
    return []


def test_the_rules_are_registered() -> None:
    assert {"asha", "median", "dominance", "none"} <= set(registry.early_stopping.names())


def test_rules_refuse_jobs_they_cannot_serve_naming_the_field() -> None:
    latency = [{"metric": "latency_ms", "direction": "minimize"}]
    assert [loc for loc, _ in problems(early_stopping={"name": "asha"}, objectives=latency)] == [("early_stopping", "name")]
    assert [loc for loc, _ in problems(early_stopping={"name": "median", "params": {"metric": "flops"}})] == [
        ("early_stopping", "params", "metric")
    ]
    assert [loc for loc, _ in problems(early_stopping={"name": "asha", "params": {"grace_period": 9}})] == [
        ("early_stopping", "params", "grace_period")
    ]
    both = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "nonzero_params", "direction": "minimize"}]
    ((loc, message),) = problems(early_stopping={"name": "dominance"}, objectives=both)
    assert loc == ("early_stopping", "name") and "nonzero_params" in message
    assert problems(early_stopping={"name": "dominance"}, objectives=latency)
    assert problems(early_stopping={"name": "nope"})[0][0] == ("early_stopping", "name")

    ((loc, message),) = problems(early_stopping={"name": "asha", "params": {"metric": "test_accuracy"}})
    assert loc == ("early_stopping", "params", "metric") and "test split" in message and "val_accuracy" in message

    fine = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]
    assert not problems(early_stopping={"name": "dominance"}, objectives=fine)
    assert not problems(early_stopping={"name": "asha"})
    assert not problems(early_stopping={"name": "none"}, objectives=latency)


class FakeTrial:
    """What a scheduler reads of a Tune trial: its id and config (hashable, as Tune's are)."""

    def __init__(self, trial_id: str, config: dict[str, Any] | None = None) -> None:
        self.trial_id = trial_id
        self.config = config or {}


# What the median rule asks of Tune's controller when it lacks samples: the trials waiting to run.
CONTROLLER = SimpleNamespace(get_live_trials=lambda: [])


def tune_trial(trial_id: str, **planned: float) -> FakeTrial:
    return FakeTrial(trial_id, {"planned": planned})


def feed(scheduler: Any, trial: Any, epochs: range, metric: Callable[[int], dict[str, float]]) -> list[str]:
    return [scheduler.on_trial_result(CONTROLLER, trial, {"epoch": e, **metric(e)}) for e in epochs]


def test_asha_halves_at_its_rungs_and_never_stops_a_trial_at_its_last_epoch() -> None:
    spec = spec_with(early_stopping={"name": "asha"})
    scheduler = tune_scheduler(registry.early_stopping.create("asha", {}), spec)
    assert scheduler.metric == "val_accuracy"  # the accuracy objective, ranked on the validation split
    trials = [FakeTrial(f"t{i}") for i in range(4)]
    for t in trials:
        scheduler.on_trial_add(CONTROLLER, t)
    good = feed(scheduler, trials[0], range(1, 10), lambda e: {"val_accuracy": 0.5 + e / 20})
    assert good == [CONTINUE] * 9  # the last epoch included: its final report still has to come
    worse = feed(scheduler, trials[1], range(1, 2), lambda e: {"val_accuracy": 0.1})
    assert worse == [STOP]  # below the best third at the first rung
    # ASHA has a rung at the last epoch too (9 = 3²); a trial worse there still sends its final report
    feed(scheduler, trials[2], range(1, 9), lambda e: {"val_accuracy": 0.99})
    assert scheduler.on_trial_result(CONTROLLER, trials[2], {"epoch": 9, "val_accuracy": 0.2}) == CONTINUE


def test_the_median_rule_never_pauses_a_trial_it_cannot_judge_yet() -> None:
    spec = spec_with(early_stopping={"name": "median"})
    scheduler = tune_scheduler(registry.early_stopping.create("median", {}), spec)
    waiting = SimpleNamespace(get_live_trials=lambda: [SimpleNamespace(status="PENDING")])
    first = FakeTrial("first")
    scheduler.on_trial_add(waiting, first)
    assert scheduler.on_trial_result(waiting, first, {"epoch": 1, "val_accuracy": 0.5}) == CONTINUE


def test_the_median_rule_never_stops_a_trial_at_its_last_epoch() -> None:
    spec = spec_with(training={"epochs": 3}, early_stopping={"name": "median", "params": {"min_samples_required": 1}})
    scheduler = tune_scheduler(registry.early_stopping.create("median", {"min_samples_required": 1}), spec)
    a, b, c = (FakeTrial(name) for name in "abc")
    for t in (a, b, c):
        scheduler.on_trial_add(CONTROLLER, t)
    feed(scheduler, a, range(1, 4), lambda e: {"val_accuracy": 0.9})
    scheduler.on_trial_complete(CONTROLLER, a, {"epoch": 3, "val_accuracy": 0.9})
    assert feed(scheduler, b, range(1, 2), lambda e: {"val_accuracy": 0.1}) == [STOP]
    # c is as bad, but reports its first result at the last epoch (e.g. resumed): it is spared
    assert scheduler.on_trial_result(CONTROLLER, c, {"epoch": 3, "val_accuracy": 0.1}) == CONTINUE


def test_dominance_stops_a_trial_beaten_on_every_objective_at_the_same_epoch() -> None:
    spec = spec_with(
        training={"epochs": 3},
        objectives=[{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
        early_stopping={"name": "dominance"},
    )
    scheduler = tune_scheduler(registry.early_stopping.create("dominance", {}), spec)
    done = tune_trial("done", predicted_latency_ms=1.0)
    slower_worse = tune_trial("slower", predicted_latency_ms=2.0)
    faster_worse = tune_trial("faster", predicted_latency_ms=0.5)
    unknown = FakeTrial("unknown")
    accuracy = {"done": [0.5, 0.7, 0.8], "slower": [0.4, 0.9, 0.9], "faster": [0.3, 0.4, 0.5], "unknown": [0.1] * 3}

    def acc(trial: Any) -> Callable[[int], dict[str, float]]:
        return lambda e: {"val_accuracy": accuracy[trial.trial_id][e - 1]}

    # Nothing is stopped before a trial has run all its epochs.
    assert feed(scheduler, slower_worse, range(1, 2), acc(slower_worse)) == [CONTINUE]
    assert feed(scheduler, done, range(1, 4), acc(done)) == [CONTINUE] * 3
    # Worse and slower at epoch 1: dominated. Worse but faster: on the front, kept.
    assert feed(scheduler, tune_trial("slower2", predicted_latency_ms=2.0), range(1, 2),
                lambda e: {"val_accuracy": 0.4}) == [STOP]
    assert feed(scheduler, faster_worse, range(1, 4), acc(faster_worse)) == [CONTINUE] * 3
    # A trial whose latency is unknown cannot be shown dominated.
    assert feed(scheduler, unknown, range(1, 3), acc(unknown)) == [CONTINUE] * 2
    assert scheduler.stopped == [("slower2", 1)]


def test_schedulers_pickle_by_reference_for_tunes_checkpoints() -> None:
    from ray import cloudpickle

    spec = spec_with(early_stopping={"name": "dominance"})
    for name in ("dominance", "median", "asha"):
        scheduler = tune_scheduler(registry.early_stopping.create(name, {}), spec)
        # Tune pickles with cloudpickle; a class found by its name comes back as the same class
        assert type(cloudpickle.loads(cloudpickle.dumps(scheduler))) is type(scheduler)
        assert type(scheduler).__module__ == "workers.schedulers"
    dominance = tune_scheduler(registry.early_stopping.create("dominance", {}), spec)
    assert type(pickle.loads(pickle.dumps(dominance))) is type(dominance)
    assert schedulers.DominanceScheduler is type(tune_scheduler(registry.early_stopping.create("dominance", {}), spec))


def test_a_rule_from_outside_the_project_brings_its_own_scheduler() -> None:
    """Built-in rules hold no Ray code (workers.schedulers builds theirs); a plug-in rule's ``scheduler`` is used."""
    from pydantic import BaseModel
    from ray.tune.schedulers import FIFOScheduler

    from nas.early_stopping import EarlyStoppingRule

    class Own(EarlyStoppingRule):
        class Params(BaseModel):
            pass

        def scheduler(self, spec: JobSpec) -> Any:
            return FIFOScheduler()

    class Broken(Own):
        def scheduler(self, spec: JobSpec) -> Any:
            return "not a scheduler"

    spec = spec_with()
    assert type(tune_scheduler(Own(Own.Params()), spec)) is FIFOScheduler
    with pytest.raises(TypeError, match="not a Ray Tune TrialScheduler"):
        tune_scheduler(Broken(Own.Params()), spec)
    with pytest.raises(NotImplementedError, match="brings no Ray Tune scheduler"):
        EarlyStoppingRule(Own.Params()).scheduler(spec)


# -- through the service ------------------------------------------------------------------------

EPOCHS = 9


def asha_job(name: str, early: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "name": name,
        "search_space": {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [8, 16, 32, 64, 128, 256],
                                                          "activation_choices": ["relu", "tanh"]}},
        "strategy": {"name": "random"},
        "dataset": {"name": "digits"},
        "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.5}},
        "training": {"epochs": EPOCHS, "batch_size": 64, "lr": 0.003},
        "budget": {"max_trials": 20, "max_concurrent": 2},
        "early_stopping": early,
        "seed": 5,
    }


@pytest.fixture
def server(tmp_path: Path, data_dir: Path) -> Iterator[Any]:
    from benchmarks.server_process import ServerProcess

    home = tmp_path / "home"
    home.mkdir()
    process = ServerProcess(home, {"NAS_DATA_DIR": str(data_dir)})
    yield process
    process.stop()


@pytest.mark.ray
def test_asha_prunes_a_20_trial_job_saving_a_third_of_the_epochs_and_keeps_the_best_trial(server: Any) -> None:
    from nas.arch import fingerprint
    from nas.client import Client
    from nas.specs import JobStatus, TrialState

    key = server.create_key("es")
    server.start()
    with Client(server.url, key) as client:
        full = client.submit(asha_job("full", None))
        # Halving (rather than keeping a third) at epochs 1, 2 and 4: near-ties of the best
        # trials at an early rung are a few test images apart on digits.
        early = client.submit(asha_job("asha", {"name": "asha", "params": {"reduction_factor": 2}}))
        results = {}
        for job in (full, early):
            done = client.wait(job.id, progress=False, poll_s=1, timeout=900)
            assert done.status is JobStatus.succeeded, done.error
            trials = [client.trial(t.id) for t in client.trials(job.id)]
            assert len(trials) == 20
            results[job.id] = trials

    full_trials, early_trials = results[full.id], results[early.id]
    assert all(t.state is TrialState.complete for t in full_trials)
    pruned = [t for t in early_trials if t.state is TrialState.pruned]
    assert pruned and all(t.state in (TrialState.complete, TrialState.pruned) for t in early_trials)
    assert all(len(t.history) < EPOCHS and t.metrics["epoch"] == len(t.history) and "val_accuracy" in t.metrics
               for t in pruned), [(len(t.history), t.metrics.get("epoch")) for t in pruned]

    epochs_full = sum(len(t.history) for t in full_trials)
    epochs_early = sum(len(t.history) for t in early_trials)
    assert epochs_full == 20 * EPOCHS
    assert epochs_early <= epochs_full * 2 / 3, (epochs_early, epochs_full)

    # The same seed proposes the same architectures; the best validation accuracy of the full job (what
    # ASHA and the best trial rank on) survives ASHA. On digits' 135 validation images several trials
    # often tie for it (one image is 0.74 points), so one of the tied architectures must have run to its end.
    assert [t.arch for t in full_trials] == [t.arch for t in early_trials]
    best = max(full_trials, key=lambda t: t.metrics["val_accuracy"])
    tied = [fingerprint(t.arch) for t in full_trials if t.metrics["val_accuracy"] == best.metrics["val_accuracy"]]
    kept = [t for t in early_trials if fingerprint(t.arch) in tied and t.state is TrialState.complete]
    assert kept, [(t.number, t.state) for t in early_trials if fingerprint(t.arch) in tied]
    best_early = max((t for t in early_trials if t.state is TrialState.complete), key=lambda t: t.metrics["val_accuracy"])
    assert best_early.metrics["val_accuracy"] == best.metrics["val_accuracy"]
    print(f"ASHA: {epochs_early}/{epochs_full} epochs ({1 - epochs_early / epochs_full:.0%} saved), {len(pruned)} of 20 "
          f"pruned, best val accuracy {best.metrics['val_accuracy']:.4f} vs {best_early.metrics['val_accuracy']:.4f}")
