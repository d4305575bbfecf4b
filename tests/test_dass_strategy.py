"""The dass strategy: a real three-phase search on digits, the child trials' lineage, restart and refusals."""

from __future__ import annotations

import random
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from pydantic import ValidationError

from nas import registry
from nas.dass.network import Supernet
from nas.sparse.masks import prunable_weights
from nas.specs import JobSpec, Trial, TrialState
from nas.strategies import WAIT
from nas.strategies.dass import DASS
from nas.training import evaluate, load_dataset, load_trained_model

TINY_SPACE = {"cells": 2, "channels": 4, "nodes": 2}


def dass_spec(**overrides: Any) -> JobSpec:
    spec: dict[str, Any] = {
        "search_space": {"name": "dass_darts", "params": TINY_SPACE},
        "strategy": {
            "name": "dass",
            "params": {"sparsities": [0.5, 0.9], "pretrain_epochs": 1, "prune_epochs": 1, "finetune_epochs": 1},
        },
        "dataset": {"name": "digits"},
        "sparsifier": {"name": "hydra"},
        "training": {"epochs": 2, "batch_size": 64, "lr": 0.003},
        "budget": {"max_trials": 3},
        "seed": 3,
    }
    spec.update(overrides)
    return JobSpec.model_validate(spec)


def keep_count(numel: int, k: float) -> int:
    """HYDRA's GetSubnet keeps ``numel − int((1 − k)·numel)`` weights of a layer."""
    return numel - int((1 - k) * numel)


@pytest.fixture(scope="module")
def search_outcome() -> tuple[Any, list[tuple[int, dict[str, float]]]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    reports: list[tuple[int, dict[str, float]]] = []
    try:
        outcome = DASS.run_trial(
            dass_spec(), {"kind": "supernet", "k": 0.1}, Path("."), lambda e, m: reports.append((e, m)), None
        )
    finally:
        torch.set_num_threads(threads)
    return outcome, reports


def test_search_trial_runs_the_three_phases_and_derives_a_cell(search_outcome: Any, torch_single_thread: None) -> None:
    outcome, reports = search_outcome
    assert [e for e, _ in reports] == [1, 2, 3]
    assert [m["phase"] for _, m in reports] == [1.0, 2.0, 3.0]
    assert reports[0][1]["sparsity"] == 0.0 and reports[1][1]["sparsity"] > 0.85
    assert all(0.0 <= m["val_accuracy"] <= 1.0 and 0.0 <= m["arch_entropy"] <= 1.0 for _, m in reports)
    assert all(m.keys().isdisjoint({"accuracy", "loss"}) for _, m in reports)  # no epoch sees the test split
    assert all("search_val_accuracy" in m for _, m in reports)  # the part of the training data that trained α

    space = registry.search_spaces.create("dass_darts", TINY_SPACE)
    genotype = outcome.outputs["genotype"]
    assert genotype["kind"] == "cell" and outcome.outputs["k"] == 0.1
    assert len(outcome.outputs["alphas"]["normal"]) == 5 and len(outcome.outputs["alphas"]["normal"][0]) == 8
    space.build(genotype, (1, 8, 8), 10)
    for key in ("accuracy", "loss", "val_accuracy", "val_loss", "search_val_accuracy", "test_accuracy", "sparsity",
                "nonzero_params", "params", "flops", "latency_ms"):
        assert key in outcome.metrics

    # the saved model is the masked supernet, every layer at exactly HYDRA's count for k
    model = load_trained_model(outcome.model_bytes)
    assert isinstance(model, Supernet)
    tensors = safetensors.torch.load(outcome.model_bytes)
    weights = prunable_weights(model)
    assert {f"{name}_mask" for name in weights} <= set(tensors)
    for name, (module, attr) in weights.items():
        mask = tensors[f"{name}_mask"]
        assert int(mask.sum()) == keep_count(mask.numel(), 0.1), name
        assert not getattr(module, attr)[~mask].any(), name  # the rebuilt model computes with the masked weights
    data = load_dataset("digits", dass_spec().dataset.params, Path("."))
    _, accuracy = evaluate(model, torch.from_numpy(data.x_test), torch.from_numpy(data.y_test))
    assert accuracy == pytest.approx(outcome.metrics["accuracy"])


def test_child_trial_retrains_the_cell_at_its_sparsity(search_outcome: Any, torch_single_thread: None) -> None:
    outcome, _ = search_outcome
    arch = {**outcome.outputs["genotype"], "sparsity": 0.9}
    reports: list[int] = []
    child = DASS.run_trial(dass_spec(), arch, Path("."), lambda e, m: reports.append(e), outcome.model_bytes)
    assert reports == [1, 2]
    for layer in child.layers:  # hydra keeps exactly k of every layer
        numel = 1
        for d in layer["shape"]:
            numel *= d
        assert round(layer["density"] * numel) == keep_count(numel, 0.1), layer["name"]


def trial(number: int, arch: dict, state: TrialState, parent_id: str | None = None, outputs: dict | None = None) -> Trial:
    return Trial(
        id=f"t{number}",
        job_id="job",
        number=number,
        state=state,
        arch=arch,
        parent_id=parent_id,
        outputs=outputs or {},
        created_at=datetime.now(timezone.utc),
    )


GENOTYPE = registry.search_spaces.create("dass_darts", TINY_SPACE).sample(random.Random(0))
SEARCH = {"kind": "supernet", "k": 0.1}


def strategy(spec: JobSpec, trials: list[Trial] = ()) -> DASS:
    params = DASS.Params.model_validate(spec.strategy.params)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    return DASS.from_history(params, space, spec, trials)


def test_search_first_then_one_child_per_level() -> None:
    s = strategy(dass_spec())
    plan = s.ask()
    assert plan.arch == SEARCH and plan.parent_id is None  # k = the smallest requested keep fraction
    assert s.ask() is WAIT and s.ask() is WAIT  # the children need the search's cell
    s.tell(trial(0, SEARCH, TrialState.complete, outputs={"genotype": GENOTYPE}))
    children = [s.ask(), s.ask()]
    assert [c.arch for c in children] == [{**GENOTYPE, "sparsity": 0.5}, {**GENOTYPE, "sparsity": 0.9}]
    assert all(c.parent_id == "t0" for c in children)
    assert s.ask() is None


def test_a_failed_search_ends_the_strategy() -> None:
    s = strategy(dass_spec())
    s.ask()
    s.tell(trial(0, SEARCH, TrialState.failed))
    assert s.ask() is None


def test_keep_fractions_and_the_search_keep_fraction() -> None:
    spec = dass_spec(strategy={"name": "dass", "params": {"keep_fractions": [0.05, 0.01], "search_keep_fraction": 0.05}})
    s = strategy(spec)
    assert s.ask().arch == {"kind": "supernet", "k": 0.05}
    s.tell(trial(0, {"kind": "supernet", "k": 0.05}, TrialState.complete, outputs={"genotype": GENOTYPE}))
    assert [s.ask().arch["sparsity"] for _ in range(2)] == [0.95, 0.99]
    assert strategy(dass_spec(strategy={"name": "dass", "params": {}})).ask().arch == {"kind": "supernet", "k": 0.01}


@pytest.mark.parametrize(
    ("history", "expected"),
    [
        ([], "search"),
        ([(SEARCH, TrialState.running, None)], WAIT),
        ([(SEARCH, TrialState.queued, None)], WAIT),
        ([(SEARCH, TrialState.complete, None)], [0.5, 0.9]),
        ([(SEARCH, TrialState.complete, None), ({**GENOTYPE, "sparsity": 0.5}, TrialState.complete, "t0")], [0.9]),
        ([(SEARCH, TrialState.complete, None), ({**GENOTYPE, "sparsity": 0.9}, TrialState.running, "t0")], [0.5]),
        (
            [
                (SEARCH, TrialState.complete, None),
                ({**GENOTYPE, "sparsity": 0.5}, TrialState.failed, "t0"),
                ({**GENOTYPE, "sparsity": 0.9}, TrialState.queued, "t0"),
            ],
            [],
        ),
        ([(SEARCH, TrialState.failed, None)], []),
    ],
)
def test_restart_rebuilds_the_lineage_without_repeating(history: list, expected: Any) -> None:
    trials = [
        trial(i, arch, state, parent, {"genotype": GENOTYPE} if arch["kind"] == "supernet" and state.finished else None)
        for i, (arch, state, parent) in enumerate(history)
    ]
    s = strategy(dass_spec(), trials)
    if expected == "search":
        assert s.ask().arch == SEARCH
        return
    if expected is WAIT:
        assert s.ask() is WAIT
        return
    plans = []
    while (plan := s.ask()) is not None:
        assert plan is not WAIT and plan.parent_id == "t0"
        plans.append(plan.arch["sparsity"])
    assert plans == expected


def locations(error: ValidationError) -> list[tuple]:
    return [tuple(e["loc"]) for e in error.errors()]


def test_check_spec_refuses_other_spaces_and_short_budgets() -> None:
    with pytest.raises(ValidationError) as wrong_space:
        dass_spec(search_space={"name": "sparse_mlp"})
    assert ("search_space", "name") in locations(wrong_space.value)
    assert "dass_darts" in str(wrong_space.value)
    with pytest.raises(ValidationError) as short:
        dass_spec(budget={"max_trials": 2})
    assert ("budget", "max_trials") in locations(short.value)
    with pytest.raises(ValidationError) as vectors:
        dass_spec(dataset={"name": "synthetic", "params": {"input_shape": [64]}})
    assert "dass_darts needs image inputs (channels, height, width), got shape (64,)" in str(vectors.value)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"sparsities": [0.9], "keep_fractions": [0.1]}, "not both"),
        ({"sparsities": [0.9, 0.9]}, "repeat"),
        ({"sparsities": [1.0]}, "less than 1"),
        ({"keep_fractions": [0.0]}, "greater than 0"),
        ({"pretrain_epochs": 0, "prune_epochs": 0, "finetune_epochs": 0}, "at least 1"),
        ({"arch_lr": 0}, "greater than 0"),
    ],
)
def test_bad_params_are_refused(params: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DASS.Params.model_validate(params)
