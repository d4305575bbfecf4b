"""The `rea` strategy (regularized evolution) on the real ``sparse_mlp`` space.

Trials are fabricated with closed-form metrics, so ask/tell, aging, tournaments and restarts are
checked in milliseconds; the job-level refusals go through the REST API.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

from api.app import create_app
from nas import registry
from nas.arch import fingerprint
from nas.settings import Settings
from nas.specs import JobSpec, Trial, TrialState
from nas.store import Store
from nas.strategies import WAIT
from nas.strategies.base import TrialPlan
from nas.strategies.evolution import RegularizedEvolution, _has_other, _pick

SPACE = {"name": "sparse_mlp", "params": {"max_depth": 3, "width_choices": [16, 32, 64, 128, 256],
                                          "layer_sparsity_choices": [0.5, 0.75, 0.9]}}
TWO_OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]


def make_spec(seed: int = 3, objectives: list[dict[str, str]] | None = None, **params: Any) -> JobSpec:
    return JobSpec.model_validate({
        "search_space": SPACE,
        "strategy": {"name": "rea", "params": params},
        "dataset": {"name": "digits"},
        "objectives": objectives or [{"metric": "accuracy", "direction": "maximize"}],
        "budget": {"max_trials": 200},
        "seed": seed,
    })


def make_strategy(spec: JobSpec, history: list[Trial] | None = None) -> RegularizedEvolution:
    params = RegularizedEvolution.Params.model_validate(spec.strategy.params)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    strategy = RegularizedEvolution.from_history(params, space, spec, history or [])
    assert isinstance(strategy, RegularizedEvolution)
    return strategy


def fake_metrics(arch: dict[str, Any]) -> dict[str, float]:
    """Wider and denser is more accurate on validation and slower; the test accuracy follows no trend."""
    capacity = sum(arch[f"width_{i}"] * (1 - arch[f"sparsity_fc{i}"]) for i in range(arch["depth"]))
    accuracy = 1 - 0.5 * math.exp(-capacity / 60) - 0.02 * arch["depth"]
    latency = 0.01 + capacity / 1000 + 0.005 * arch["depth"]
    test = 0.5 + 0.4 * math.sin(capacity)
    return {"val_accuracy": accuracy, "accuracy": test, "latency_ms": latency, "predicted_latency_ms": latency}


def trial(number: int, plan: TrialPlan, state: TrialState = TrialState.complete, **metrics: float) -> Trial:
    return Trial(
        id=f"trial-{number}", job_id="job", number=number, state=state, arch=plan.arch, parent_id=plan.parent_id,
        metrics=metrics or fake_metrics(plan.arch), created_at=datetime.now(timezone.utc),
    )


def asked(strategy: RegularizedEvolution) -> TrialPlan:
    plan = strategy.ask()
    assert isinstance(plan, TrialPlan), plan
    return plan


def test_the_first_plans_are_seeded_draws_then_it_waits_then_mutates_a_finished_one() -> None:
    spec = make_spec(population_size=4, sample_size=2)
    strategy = make_strategy(spec)
    space = strategy.space
    draws = [asked(strategy) for _ in range(4)]
    assert all(p.parent_id is None for p in draws)
    assert len({fingerprint(p.arch) for p in draws}) == 4
    again = make_strategy(spec)
    assert [p.arch for p in draws] == [asked(again).arch for _ in range(4)]
    for plan in draws:
        space.layer_sparsity(plan.arch)  # an architecture of the space
    assert strategy.ask() is WAIT  # every initial draw is out, none has finished
    strategy.tell(trial(2, draws[2]))
    child = asked(strategy)  # asynchronous: mutates within the finished ones before the population is whole
    assert child.parent_id == "trial-2"


def test_a_child_differs_from_its_parent_in_one_key_and_holds_only_the_keys_it_uses() -> None:
    strategy = make_strategy(make_spec(population_size=8, sample_size=3))
    draws = [asked(strategy) for _ in range(8)]
    for number, plan in enumerate(draws):
        strategy.tell(trial(number, plan))
    by_id = {f"trial-{n}": p.arch for n, p in enumerate(draws)}
    mutated: Counter[str] = Counter()
    for _ in range(300):
        child = asked(strategy)
        parent = by_id[child.parent_id]  # type: ignore[index]
        changed = [k for k in parent.keys() & child.arch.keys() if parent[k] != child.arch[k]]
        assert len(changed) == 1, (parent, child.arch)
        (key,) = changed
        mutated[key.split("_")[0]] += 1
        if key != "depth":
            assert child.arch.keys() == parent.keys()
        else:  # the depth decides which width and sparsity keys the child has
            depth = child.arch["depth"]
            widths = {f"width_{i}" for i in range(depth)} | {f"sparsity_fc{i}" for i in range(depth)}
            assert {k for k in child.arch if k.startswith(("width_", "sparsity_fc"))} == widths
        assert strategy.space.arch_from(child.arch.__getitem__) == child.arch
        strategy.space.layer_sparsity(child.arch)
    assert set(mutated) == {"depth", "width", "activation", "sparsity"}  # every kind of key gets mutated


@pytest.mark.parametrize(
    "dist",
    [
        CategoricalDistribution(["relu", None, 3]),
        IntDistribution(1, 9, step=2),
        IntDistribution(1, 1000, log=True),
        IntDistribution(1, 2, log=True),
        FloatDistribution(0.0, 1.0, step=0.25),
        FloatDistribution(1e-4, 1.0, log=True),
        FloatDistribution(-1.0, 1.0),
    ],
    ids=str,
)
def test_a_mutated_value_is_another_value_of_the_dimension(dist: Any) -> None:
    rng = random.Random(0)
    for _ in range(200):
        current = _pick(dist, rng)
        assert _has_other(dist, current)
        value = _pick(dist, rng, avoid=current)
        assert value != current
        if isinstance(dist, CategoricalDistribution):
            assert value in dist.choices
            continue
        assert dist.low <= value <= dist.high
        if dist.step is not None:
            assert math.isclose((value - dist.low) / dist.step, round((value - dist.low) / dist.step), abs_tol=1e-9)
        if isinstance(dist, IntDistribution):
            assert isinstance(value, int)
    assert not _has_other(CategoricalDistribution(["relu"]), "relu")
    assert not _has_other(IntDistribution(4, 4), 4)


def test_the_tournament_favours_the_best_of_its_sample() -> None:
    """Sampling 3 of 10 with replacement, the member ranked r (1 worst .. 10 best) wins with
    probability (r³ - (r-1)³) / 1000: the best 27%, the worst 0.1%, a mean rank of 7.975."""
    strategy = make_strategy(make_spec(population_size=10, sample_size=3))
    draws = [asked(strategy) for _ in range(10)]
    for number, plan in enumerate(draws):
        strategy.tell(trial(number, plan))
    rank = {
        f"trial-{n}": r
        for r, n in enumerate(sorted(range(10), key=lambda n: fake_metrics(draws[n].arch)["val_accuracy"]), start=1)
    }
    wins = Counter(rank[asked(strategy).parent_id] for _ in range(400))  # type: ignore[index]
    assert wins.most_common(1)[0][0] == 10
    assert wins[1] + wins[2] < 0.03 * 400
    assert sum(r * n for r, n in wins.items()) / 400 > 7.3  # uniform parents would average 5.5


def test_selection_reads_validation_accuracy_and_minimises_a_minimised_objective() -> None:
    strategy = make_strategy(make_spec(population_size=2, sample_size=2,
                                       objectives=[{"metric": "latency_ms", "direction": "minimize"}]))
    a, b = asked(strategy), asked(strategy)
    strategy.tell(trial(0, a, val_accuracy=0.1, accuracy=0.99, latency_ms=5.0))
    strategy.tell(trial(1, b, val_accuracy=0.9, accuracy=0.01, latency_ms=1.0))
    parents = Counter(asked(strategy).parent_id for _ in range(100))
    assert parents["trial-1"] > 60  # wins every tournament but those that drew trial-0 twice (25%)

    strategy = make_strategy(make_spec(population_size=2, sample_size=2))
    a, b = asked(strategy), asked(strategy)
    strategy.tell(trial(0, a, val_accuracy=0.1, accuracy=0.99))  # the test accuracy is never ranked on
    strategy.tell(trial(1, b, val_accuracy=0.9, accuracy=0.01))
    parents = Counter(asked(strategy).parent_id for _ in range(100))
    assert parents["trial-1"] > 60


def test_a_multi_objective_tournament_takes_any_member_of_the_samples_front() -> None:
    """Three members trade accuracy for latency, three are dominated by all of them. Lexicographic
    order would always pick the most accurate of the front; the front's members share the wins."""
    strategy = make_strategy(make_spec(population_size=6, sample_size=3, objectives=TWO_OBJECTIVES))
    draws = [asked(strategy) for _ in range(6)]
    points = [(0.9, 3.0), (0.8, 2.0), (0.7, 1.0), (0.6, 3.5), (0.5, 4.0), (0.65, 3.1)]
    for number, (plan, (accuracy, latency)) in enumerate(zip(draws, points)):
        strategy.tell(trial(number, plan, val_accuracy=accuracy, latency_ms=latency))
    wins = Counter(asked(strategy).parent_id for _ in range(600))
    front = sum(wins[f"trial-{n}"] for n in range(3))
    assert front > 0.8 * 600  # P(the sample holds a front member) = 1 - (1/2)³ = 87.5%
    assert all(wins[f"trial-{n}"] > 0.2 * 600 for n in range(3))
    # trial-5 dominates trial-3 and trial-4: it wins whenever the sample holds no front member and it
    assert wins["trial-5"] > wins["trial-3"] and wins["trial-5"] > wins["trial-4"]


def test_aging_keeps_the_newest_trials_whatever_their_value_and_finishing_order() -> None:
    strategy = make_strategy(make_spec(population_size=3, sample_size=3))
    plans = [asked(strategy) for _ in range(3)]
    strategy.tell(trial(0, plans[0], val_accuracy=0.99))  # by far the best
    plans += [asked(strategy) for _ in range(3)]  # children of trial-0: the only finished one
    assert {p.parent_id for p in plans[3:]} == {"trial-0"}
    for number in (5, 3, 4):  # finished out of order
        strategy.tell(trial(number, plans[number], val_accuracy=0.5 + number / 100))
    strategy.tell(trial(1, plans[1], val_accuracy=0.98))  # older than the population: it never joins
    parents = Counter(asked(strategy).parent_id for _ in range(100))
    assert set(parents) <= {"trial-3", "trial-4", "trial-5"}
    assert parents.most_common(1)[0][0] == "trial-5"


def test_failed_and_infeasible_trials_never_join_and_initial_draws_are_replaced() -> None:
    strategy = make_strategy(make_spec(population_size=3, sample_size=2))
    plans = [asked(strategy) for _ in range(3)]
    assert strategy.ask() is WAIT
    strategy.tell(trial(0, plans[0], TrialState.failed))
    strategy.tell(trial(1, plans[1], TrialState.infeasible, predicted_latency_ms=9.0, params=1e6))
    strategy.tell(trial(2, plans[2], TrialState.pruned, epoch=1))  # stopped before an objective was recorded
    replacements = [asked(strategy) for _ in range(3)]
    assert all(p.parent_id is None for p in replacements)
    assert strategy.ask() is WAIT
    strategy.tell(trial(3, replacements[0], TrialState.pruned, val_accuracy=0.3, epoch=1))  # joins, last metrics
    strategy.tell(trial(4, replacements[1], TrialState.failed))
    plans = [asked(strategy) for _ in range(20)]
    assert {p.parent_id for p in plans[1:]} == {"trial-3"}
    assert plans[0].parent_id is None  # the failed draw's replacement comes first


def simulate(spec: JobSpec, n: int, concurrency: int, seed: int = 0) -> list[tuple[list[Trial], TrialPlan]]:
    """A live run of ``n`` plans with up to ``concurrency`` trials running, which finish in a
    seeded random order (some fail); each plan paired with the history the runner had when asking."""
    order = random.Random(seed)
    strategy = make_strategy(spec)
    trials: list[Trial] = []
    out = []
    while len(trials) < n:
        running = [t for t in trials if not t.state.finished]
        if len(running) == concurrency or (running and order.random() < 0.3):
            done = order.choice(running)
            state = TrialState.failed if order.random() < 0.1 else TrialState.complete
            finished = trial(done.number, TrialPlan(done.arch, done.parent_id), state)
            trials[done.number] = finished
            strategy.tell(finished)
            continue
        history = list(trials)
        plan = strategy.ask()
        if plan is WAIT:
            assert running
            continue
        assert isinstance(plan, TrialPlan)
        out.append((history, plan))
        trials.append(trial(len(trials), plan, TrialState.running))
    return out


def test_a_restarted_job_proposes_what_the_live_one_did() -> None:
    spec = make_spec(population_size=5, sample_size=2, objectives=TWO_OBJECTIVES)
    steps = simulate(spec, 40, concurrency=3)
    assert sum(plan.parent_id is not None for _, plan in steps) > 25
    for history, plan in steps:
        again = make_strategy(spec, history).ask()
        assert isinstance(again, TrialPlan)
        assert (again.arch, again.parent_id) == (plan.arch, plan.parent_id), len(history)


def test_a_seeded_job_repeats_itself_and_another_seed_does_not() -> None:
    def plans(seed: int) -> list[Any]:
        return [(p.arch, p.parent_id) for _, p in simulate(make_spec(seed, population_size=4), 20, concurrency=2)]

    assert plans(3) == plans(3) != plans(4)
    assert len({fingerprint(arch) for arch, _ in plans(3)}) == 20  # no architecture proposed twice


@pytest.mark.parametrize("backend", ["sqlite"])
def test_the_api_refuses_a_sample_larger_than_the_population_and_a_space_without_dimensions(
    store: Store, tmp_path: Path
) -> None:
    from tests.test_contracts import _MinimalSpace

    registry.search_spaces.register("test_rea_dimensionless_space", _MinimalSpace)
    headers = {"Authorization": f"Bearer {store.create_api_key('alice')}"}
    job = {"search_space": SPACE, "dataset": {"name": "digits"}, "budget": {"max_trials": 4}}
    settings = Settings(home=tmp_path / "home", data_dir=tmp_path)
    with TestClient(create_app(store, settings)) as client:
        response = client.post("/api/v1/jobs", headers=headers, json={
            **job, "strategy": {"name": "rea", "params": {"population_size": 4, "sample_size": 5}}})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "strategy", "params", "sample_size"] and "population_size" in error["msg"]

        response = client.post("/api/v1/jobs", headers=headers, json={
            **job, "search_space": {"name": "test_rea_dimensionless_space"}, "strategy": {"name": "rea"}})
        assert response.status_code == 422, response.text
        (error,) = response.json()["detail"]
        assert error["loc"] == ["body", "search_space", "name"] and "dimensions()" in error["msg"]

        response = client.post("/api/v1/jobs", headers=headers, json={**job, "strategy": {"name": "rea"}})
        assert response.status_code == 201, response.text
