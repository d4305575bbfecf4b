"""The `tpe` and `nsga2` strategies (Optuna's samplers) and the random search's random-mask control.

Trials are fabricated from a cheap closed-form "training" (accuracy and latency from the widths),
so ask/tell, restart and the Optuna bookkeeping are checked in milliseconds; one test trains real
digits models for the random-mask control.
"""

from __future__ import annotations

import math
import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import pytest
from pydantic import BaseModel, ValidationError

from nas import registry
from nas.arch import fingerprint
from nas.pareto import pareto_front
from nas.specs import EpochMetrics, JobSpec, Trial, TrialState
from nas.strategies import WAIT
from nas.search_space import SearchSpace
from nas.strategies.optuna_samplers import NSGA2, TPE, _arch_from_replays_samples
from nas.strategies.random_search import RandomSearch, control_comparison

STRATEGIES = {"tpe": TPE, "nsga2": NSGA2}
SPACE = {"name": "sparse_mlp", "params": {"max_depth": 3, "width_choices": [16, 32, 64, 128, 256],
                                          "layer_sparsity_choices": [0.5, 0.75, 0.9]}}


def make_spec(name: str = "tpe", **overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "search_space": SPACE,
        "strategy": {"name": name},
        "dataset": {"name": "digits"},
        "objectives": [{"metric": "accuracy", "direction": "maximize"}],
        "budget": {"max_trials": 40},
        "seed": 3,
    }
    spec.update(overrides)
    return JobSpec.model_validate(spec)


def make_strategy(spec: JobSpec, trials: list[Trial] | None = None) -> Any:
    cls = registry.strategies.get(spec.strategy.name)
    params = cls.Params.model_validate(spec.strategy.params)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    return cls.from_history(params, space, spec, trials or [])


def fake_metrics(arch: dict[str, Any]) -> dict[str, float]:
    """Wider and denser is more accurate (on the validation split) and slower; a smooth, known trade-off.
    The test accuracy follows no trend at all: a sampler told it would learn nothing."""
    capacity = sum(arch[f"width_{i}"] * (1 - arch[f"sparsity_fc{i}"]) for i in range(arch["depth"]))
    accuracy = 1 - 0.5 * math.exp(-capacity / 60) - 0.02 * arch["depth"]
    latency = 0.01 + capacity / 1000 + 0.005 * arch["depth"]
    params = sum(arch[f"width_{i}"] for i in range(arch["depth"])) * 70.0
    test = 0.5 + 0.4 * math.sin(capacity)
    return {"val_accuracy": accuracy, "val_loss": 1 - accuracy, "accuracy": test, "loss": 1 - test,
            "latency_ms": latency, "predicted_latency_ms": latency, "params": params, "sparsity": 0.8}


def trial(number: int, arch: dict[str, Any], state: TrialState = TrialState.complete, **metrics: float) -> Trial:
    return Trial(
        id=f"trial-{number}", job_id="job", number=number, state=state, arch=arch,
        metrics={**fake_metrics(arch), **metrics}, created_at=datetime.now(timezone.utc),
    )


def run(strategy: Any, n: int, start: int = 0, spec: JobSpec | None = None) -> list[Trial]:
    """``n`` sequential ask/tell rounds; candidates over ``constraints.max_params`` come back infeasible."""
    out = []
    for number in range(start, start + n):
        plan = strategy.ask()
        t = trial(number, plan.arch)
        limit = spec.constraints.max_params if spec is not None else None
        if limit is not None and t.metrics["params"] > limit:
            t = t.model_copy(update={"state": TrialState.infeasible,
                                     "metrics": {k: t.metrics[k] for k in ("params", "predicted_latency_ms")}})
        strategy.tell(t)
        out.append(t)
    return out


@pytest.mark.parametrize("name", STRATEGIES)
def test_proposals_are_valid_distinct_architectures_with_only_the_keys_they_use(name: str) -> None:
    spec = make_spec(name)
    strategy = make_strategy(spec)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    trials = run(strategy, 30)
    for t in trials:
        space.layer_sparsity(t.arch)  # validates the keys against the depth
        assert {f"width_{i}" for i in range(t.arch["depth"])} <= set(t.arch)
        assert not {f"width_{i}" for i in range(t.arch["depth"], 3)} & set(t.arch)
    assert len({fingerprint(t.arch) for t in trials}) == len(trials)
    study = strategy._study
    told = [t for t in study.trials if t.state is optuna.trial.TrialState.COMPLETE]
    assert len(told) == 30 and not study.get_trials(states=(optuna.trial.TrialState.RUNNING,))


@pytest.mark.parametrize("name", STRATEGIES)
def test_a_seeded_job_proposes_the_same_architectures(name: str) -> None:
    first = [t.arch for t in run(make_strategy(make_spec(name)), 15)]
    again = [t.arch for t in run(make_strategy(make_spec(name)), 15)]
    other = [t.arch for t in run(make_strategy(make_spec(name, seed=4)), 15)]
    assert first == again and first != other


@pytest.mark.parametrize("name", STRATEGIES)
def test_restart_rebuilds_the_study_and_never_repeats_finished_work(name: str) -> None:
    spec = make_spec(name, objectives=[{"metric": "accuracy", "direction": "maximize"},
                                       {"metric": "latency_ms", "direction": "minimize"}])
    before = run(make_strategy(spec), 16)
    # The job died with trial 16 running: it is in the history but not finished.
    running = make_strategy(spec, before).ask()
    unfinished = trial(16, running.arch, TrialState.running)
    history = [*before, unfinished]

    restarted = make_strategy(spec, history)
    study = restarted._study
    assert len(study.trials) == 16  # the finished ones, the running one is told when it ends
    assert sorted(t.params["depth"] for t in study.trials) == sorted(t.arch["depth"] for t in before)
    for frozen, original in zip(study.trials, before):
        assert frozen.values == [original.metrics["val_accuracy"], original.metrics["latency_ms"]]
    if name == "nsga2":
        generations = [t.system_attrs["NSGAIISampler:generation"] for t in study.trials]
        size = restarted._study.sampler.population_size
        assert generations == [i // size for i in range(16)]

    after = run(restarted, 10, start=17)
    seen = {fingerprint(t.arch) for t in history}
    assert all(fingerprint(t.arch) not in seen for t in after)
    restarted.tell(unfinished.model_copy(update={"state": TrialState.complete}))
    assert len(restarted._study.trials) - _failed(restarted) == 16 + 10 + 1


def _failed(strategy: Any) -> int:
    return len(strategy._study.get_trials(states=(optuna.trial.TrialState.FAIL,)))


def test_tpe_learns_single_objective() -> None:
    """After its random start, TPE proposes clearly better architectures than the start did."""
    spec = make_spec("tpe", strategy={"name": "tpe", "params": {"n_startup_trials": 8}})
    trials = run(make_strategy(spec), 40)
    start = [t.metrics["val_accuracy"] for t in trials[:8]]
    late = [t.metrics["val_accuracy"] for t in trials[-12:]]
    assert sum(late) / len(late) > sum(start) / len(start) + 0.05


@pytest.mark.parametrize("name", STRATEGIES)
def test_multi_objective_study_front_matches_the_jobs_pareto_front(name: str) -> None:
    spec = make_spec(name, objectives=[{"metric": "accuracy", "direction": "maximize"},
                                       {"metric": "latency_ms", "direction": "minimize"}])
    strategy = make_strategy(spec)
    trials = run(strategy, 30)
    ours = {fingerprint(t.arch) for t in pareto_front(trials, spec.objectives)}
    optunas = {fingerprint(_arch_of(t.params)) for t in strategy._study.best_trials}
    assert ours == optunas


def _arch_of(params: dict[str, Any]) -> dict[str, Any]:
    return dict(params)


@pytest.mark.parametrize("name", STRATEGIES)
def test_constraints_make_infeasible_trials_count_as_violations(name: str) -> None:
    spec = make_spec(name, constraints={"max_params": 9000})
    strategy = make_strategy(spec)
    trials = run(strategy, 30, spec=spec)
    infeasible = [t for t in trials if t.state is TrialState.infeasible]
    assert infeasible, "the budget should make some candidates infeasible"
    by_key = {fingerprint(t.arch): t for t in trials}
    for frozen in strategy._study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        original = by_key[fingerprint(frozen.params)]
        violation = frozen.constraints["max_params"]
        assert (violation > 0) == (original.state is TrialState.infeasible)
        assert violation == pytest.approx((original.metrics["params"] - 9000) / 9000)


def test_pruned_failed_and_infeasible_trials_reach_optuna_in_the_right_state() -> None:
    spec = make_spec("tpe")
    strategy = make_strategy(spec)
    plans = [strategy.ask() for _ in range(3)]
    pruned = trial(0, plans[0].arch, TrialState.pruned, epoch=2.0)
    pruned.history = [EpochMetrics(epoch=1, metrics={"val_accuracy": 0.4}),
                      EpochMetrics(epoch=2, metrics={"val_accuracy": 0.5})]
    strategy.tell(pruned)
    strategy.tell(trial(1, plans[1].arch, TrialState.failed))
    strategy.tell(trial(2, plans[2].arch, TrialState.infeasible))
    first, second, third = strategy._study.trials
    assert first.state is optuna.trial.TrialState.PRUNED and first.intermediate_values == {1: 0.4, 2: 0.5}
    assert second.state is optuna.trial.TrialState.FAIL
    assert third.state is optuna.trial.TrialState.COMPLETE and third.constraints == {"infeasible": 1.0}

    # Replayed after a restart, the same trials become the same Optuna trials.
    history = [pruned, trial(1, plans[1].arch, TrialState.failed), trial(2, plans[2].arch, TrialState.infeasible)]
    replayed = make_strategy(spec, history)._study.trials
    assert [t.state for t in replayed] == [t.state for t in (first, second, third)]
    assert replayed[0].intermediate_values == first.intermediate_values


def test_multi_objective_pruned_trials_are_told_with_their_last_metrics() -> None:
    spec = make_spec("nsga2", objectives=[{"metric": "accuracy", "direction": "maximize"},
                                          {"metric": "latency_ms", "direction": "minimize"}])
    strategy = make_strategy(spec)
    plan = strategy.ask()
    last = {"val_accuracy": 0.3, "val_loss": 2.0, "epoch": 1.0, "predicted_latency_ms": 0.2, "params": 1000.0}
    strategy.tell(Trial(id="p", job_id="job", number=0, state=TrialState.pruned, arch=plan.arch, metrics=last,
                        created_at=datetime.now(timezone.utc)))
    (told,) = strategy._study.trials
    assert told.state is optuna.trial.TrialState.COMPLETE and told.values == [0.3, 0.2]


class _GatedSpace(SearchSpace):
    """A space with a conditional key (``x_1`` only when ``n`` is 2) and the base's ``arch_from``, which asks for every key."""

    class Params(BaseModel):
        pass

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> Any:
        from torch import nn

        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))

    def layer_sparsity(self, arch: dict[str, Any]) -> None:
        return None

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return (math.prod(input_shape) + 1) * num_classes

    min_params = max_params

    def sample(self, rng: random.Random) -> dict[str, Any]:
        n = rng.randint(1, 2)
        return {"n": n, **{f"x_{i}": rng.choice([1, 2]) for i in range(n)}}

    def dimensions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution, IntDistribution

        return {"n": IntDistribution(1, 2), "x_0": CategoricalDistribution([1, 2]), "x_1": CategoricalDistribution([1, 2])}


class _GatedSpaceWithArchFrom(_GatedSpace):
    def arch_from(self, draw: Any) -> dict[str, Any]:
        n = draw("n")
        return {"n": n, **{f"x_{i}": draw(f"x_{i}") for i in range(n)}}


def test_a_space_with_unguessable_conditional_keys_needs_arch_from() -> None:
    assert not _arch_from_replays_samples(_GatedSpace(_GatedSpace.Params()))
    assert _arch_from_replays_samples(_GatedSpaceWithArchFrom(_GatedSpace.Params()))
    registry.search_spaces.register("test_gated_space", _GatedSpace)
    registry.search_spaces.register("test_gated_space_arch_from", _GatedSpaceWithArchFrom)
    with pytest.raises(ValidationError) as info:
        make_spec("tpe", search_space={"name": "test_gated_space"})
    (error,) = info.value.errors()
    assert error["loc"] == ("search_space", "name") and "arch_from" in error["msg"]

    spec = make_spec("nsga2", search_space={"name": "test_gated_space_arch_from"}, budget={"max_trials": 6})
    strategy = make_strategy(spec)
    archs = []
    for number in range(6):
        arch = strategy.ask().arch
        assert set(arch) == {"n", *(f"x_{i}" for i in range(arch["n"]))}
        strategy.tell(Trial(id=str(number), job_id="j", number=number, state=TrialState.complete, arch=arch,
                            metrics={"accuracy": sum(arch.values()) / 10}, created_at=datetime.now(timezone.utc)))
        archs.append(fingerprint(arch))
    assert len(set(archs)) == 6  # the whole space: the last proposals were the only unseen ones


# -- random search with random-mask controls ---------------------------------------------------


def control_spec(max_trials: int = 6, **overrides: Any) -> JobSpec:
    return make_spec("random", strategy={"name": "random", "params": {"random_mask_control": True}},
                     budget={"max_trials": max_trials}, **overrides)


def test_every_complete_found_trial_gets_one_control_within_the_budget() -> None:
    spec = control_spec(max_trials=7)
    strategy = make_strategy(spec)
    a, b = strategy.ask(), strategy.ask()
    assert a.parent_id is None and b.parent_id is None
    found_a = trial(0, a.arch)
    strategy.tell(found_a)
    control = strategy.ask()
    assert control.parent_id == found_a.id and control.arch == found_a.arch
    strategy.tell(trial(1, b.arch, TrialState.failed))  # a failed trial gets no control
    c = strategy.ask()
    assert c.parent_id is None
    assert strategy.ask() is WAIT  # 3 found trials use 6 of 7 trials; c's control must wait for c
    strategy.tell(trial(3, c.arch))
    assert strategy.ask().parent_id == "trial-3"
    assert strategy.ask() is None


def test_a_restarted_control_job_neither_repeats_found_trials_nor_controls() -> None:
    spec = control_spec(max_trials=8)
    strategy = make_strategy(spec)
    history: list[Trial] = []
    for number in range(3):
        plan = strategy.ask()
        t = trial(number, plan.arch).model_copy(update={"parent_id": plan.parent_id})
        strategy.tell(t)
        history.append(t)
    # found 0, control of 0, found 2: trial 2 still needs its control after the restart
    assert [t.parent_id for t in history] == [None, "trial-0", None]
    restarted = make_strategy(spec, history)
    plan = restarted.ask()
    assert plan.parent_id == "trial-2"
    nxt = restarted.ask()
    assert nxt.parent_id is None and fingerprint(nxt.arch) not in {fingerprint(t.arch) for t in history}


def test_control_comparison_pairs_found_trials_with_their_controls() -> None:
    archs = [registry.search_spaces.create("sparse_mlp", SPACE["params"]).sample(random.Random(i)) for i in range(6)]
    trials = []
    for i, arch in enumerate(archs):
        found = trial(2 * i, arch, accuracy=0.9 + 0.01 * i)
        control = trial(2 * i + 1, arch, accuracy=0.85 + 0.01 * i).model_copy(update={"parent_id": found.id})
        trials += [found, control]
    result = control_comparison(trials)
    assert result.pairs == 6 and result.found_wins == 6
    assert result.mean_difference == pytest.approx(0.05)
    assert result.best_found == pytest.approx(0.95) and result.best_control == pytest.approx(0.90)
    assert result.p_value is not None and result.p_value < 0.05 and result.search_beat_chance


def test_the_control_trains_under_a_random_mask_at_the_parents_densities(
    data_dir: Path, torch_single_thread: None, tmp_path: Path
) -> None:
    from nas.sparse.stats import weight_densities
    from nas.training import load_trained_model

    spec = control_spec(
        max_trials=2, dataset={"name": "digits"},
        search_space={"name": "sparse_mlp", "params": {"max_depth": 1, "width_choices": [64]}},
        sparsifier={"name": "magnitude", "params": {"sparsity": 0.8, "scope": "global"}},
        training={"epochs": 4, "batch_size": 32, "lr": 0.005},
    )
    strategy = make_strategy(spec)
    arch = strategy.ask().arch
    found = RandomSearch.run_trial(spec, arch, data_dir, lambda epoch, metrics: None, None)
    control = RandomSearch.run_trial(spec, arch, data_dir, lambda epoch, metrics: None, found.model_bytes)

    info = control.outputs["control"]
    assert info["kind"] == "random_mask"
    parent = weight_densities(load_trained_model(found.model_bytes))
    child = weight_densities(load_trained_model(control.model_bytes))
    assert info["parent_densities"] == pytest.approx(parent)
    assert control.metrics["sparsity"] == pytest.approx(found.metrics["sparsity"], abs=0.01)
    assert child == pytest.approx(parent, abs=0.01)  # global magnitude pruning: unequal layers, matched each
    assert max(parent.values()) - min(parent.values()) > 0.05
    assert 0.5 < control.metrics["accuracy"] <= 1.0, (found.metrics["accuracy"], control.metrics["accuracy"])
