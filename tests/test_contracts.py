"""One contract suite over every registered plug-in: search spaces, strategies, sparsifiers, datasets, early stopping.

The names are read from the registries when the tests are collected, so a plug-in registered
through an entry point is checked the moment it is installed, against the same assertions as the
shipped ones. Each check uses the plug-in's defaults (and, for spaces, every ``examples`` entry of
its ``Params`` JSON Schema), small shapes and a few steps; a dataset naming one users stored
(``upload``) names a real one, written for the test in a node cache of its own, and so does a
space made from a stored model (``model_sparsity``): a CNN trained on the digits and exported to ONNX.
"""

from __future__ import annotations

import json
import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from nas import registry
from nas.arch import uniform_suggest
from nas.data.base import Dataset
from nas.data.tabular import TabularDataset
from nas.early_stopping import EarlyStoppingRule
from nas.search_space import SearchSpace
from nas.sparse.base import Sparsifier, WeightSpec
from nas.specs import JobSpec
from nas.strategies.base import WAIT, Strategy, TrialPlan
from tests.sparsity_targets import expected_sparsity

SHAPE_DATASET = "digits"  # small images (1, 8, 8) and 10 classes: every shipped space takes them
SEEDS = (0, 1, 2)


def _space_cases() -> list[Any]:
    """(name, params) for every registered space: its defaults, then each example of its Params schema."""
    cases = []
    for name in registry.search_spaces.names():
        cases.append(pytest.param(name, {}, id=f"{name}-defaults"))
        examples = registry.search_spaces.get(name).Params.model_json_schema().get("examples", [])
        cases += [pytest.param(name, example, id=f"{name}-example{i}") for i, example in enumerate(examples)]
    return cases


SPACE_CASES = _space_cases()


def _json_round_trip(value: Any) -> Any:
    return json.loads(json.dumps(value))


@pytest.fixture(scope="module")
def stored_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The id of a model stored as users' models are (a CNN trained on the ``SHAPE_DATASET`` digits),
    in a worker node's cache of its own, which this process's model catalog knows."""
    import torch

    from nas.models.stored import use_model_catalog
    from tests.pretrained import digits_cnn, node_catalog

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data, _ = digits_cnn()
    finally:
        torch.set_num_threads(threads)
    catalog, (model_id,) = node_catalog(tmp_path_factory.mktemp("model-cache"), [data])
    use_model_catalog(catalog)
    yield model_id
    use_model_catalog(None)


def _space_params(name: str, params: dict[str, Any], model_id: str) -> dict[str, Any]:
    """``params`` of the space ``name``, naming the stored model ``model_id`` where the space is made from one."""
    fields = registry.search_spaces.get(name).Params.model_fields
    return {"model_id": model_id, **params} if "model_id" in fields else params


@pytest.mark.parametrize(
    ("reg", "name"),
    [
        (reg, name)
        for reg in (
            registry.search_spaces,
            registry.strategies,
            registry.sparsifiers,
            registry.datasets,
            registry.early_stopping,
        )
        for name in reg.names()
    ],
)
def test_every_plugin_subclasses_its_registrys_base_and_has_default_params(reg: registry.Registry, name: str) -> None:
    cls = reg.get(name)
    assert issubclass(cls, reg.base)
    assert issubclass(cls.Params, BaseModel)
    # every option has a default, but the id by which a dataset (``upload``) or a space (``model_sparsity``)
    # names what users stored
    required = {key for key, info in cls.Params.model_fields.items() if info.is_required()}
    stored = {"id"} if reg is registry.datasets else {"model_id"} if reg is registry.search_spaces else set()
    assert required <= stored, f"options without a default: {required}"


@pytest.mark.parametrize(
    ("reg", "base"),
    [
        (registry.search_spaces, SearchSpace),
        (registry.strategies, Strategy),
        (registry.sparsifiers, Sparsifier),
        (registry.datasets, Dataset),
        (registry.early_stopping, EarlyStoppingRule),
    ],
)
def test_a_registry_refuses_a_class_that_is_not_of_its_kind(reg: registry.Registry, base: type) -> None:
    class NotAPlugin:
        class Params(BaseModel):
            pass

    assert reg.base is base
    with pytest.raises(TypeError, match=f"not a subclass of {base.__module__}.{base.__qualname__}"):
        reg.register("test_not_a_plugin", NotAPlugin)
    assert "test_not_a_plugin" not in reg.names()


# -- search spaces -------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), SPACE_CASES)
def test_space_samples_are_json_deterministic_and_within_its_dimensions(
    name: str, params: dict[str, Any], stored_model: str
) -> None:
    space = registry.search_spaces.create(name, _space_params(name, params, stored_model))
    dims = space.dimensions()
    if dims is not None:
        from optuna.distributions import BaseDistribution, CategoricalDistribution

        assert all(isinstance(dist, BaseDistribution) for dist in dims.values())
    for seed in SEEDS:
        arch = space.sample(random.Random(seed))
        assert isinstance(arch, dict) and arch
        assert _json_round_trip(arch) == arch, "an architecture must survive the store's JSON"
        assert space.sample(random.Random(seed)) == arch, "sample must depend on the RNG alone"
        if dims is not None:
            assert set(arch) <= set(dims), f"keys outside dimensions(): {sorted(set(arch) - set(dims))}"
            # define-by-run samplers replay through arch_from: it must ask for exactly the keys the arch uses
            first = {k: d.choices[0] if isinstance(d, CategoricalDistribution) else d.low for k, d in dims.items()}
            assert space.arch_from(lambda key: arch.get(key, first[key])) == arch
            drawn = space.arch_from(uniform_suggest(random.Random(seed), dims))
            assert set(drawn) <= set(dims)
            space.layer_sparsity(drawn)  # an architecture of the space: accepted without a ValueError


@pytest.mark.parametrize(("name", "params"), SPACE_CASES)
def test_space_builds_networks_that_match_its_declarations(
    name: str, params: dict[str, Any], torch_single_thread: None, stored_model: str
) -> None:
    import torch

    from nas.sparse.magnitude import parse_pattern
    from nas.sparse.masks import prunable_weights, weight_kind

    space = registry.search_spaces.create(name, _space_params(name, params, stored_model))
    input_shape, num_classes = registry.datasets.create(SHAPE_DATASET, {}).shape()
    low, high = space.min_params(input_shape, num_classes), space.max_params(input_shape, num_classes)
    assert isinstance(low, int) and isinstance(high, int) and 0 < low <= high
    specs = space.weight_specs(input_shape, num_classes)
    assert specs is None or all(isinstance(spec, WeightSpec) for spec in specs)

    for seed in SEEDS:
        arch = space.sample(random.Random(seed))
        torch.manual_seed(seed)
        model = space.build(arch, input_shape, num_classes)
        assert isinstance(model, torch.nn.Module)
        with torch.no_grad():
            logits = model.eval()(torch.randn(2, *input_shape))
        assert logits.shape == (2, num_classes)
        assert low <= sum(p.numel() for p in model.parameters()) <= high

        weights = prunable_weights(model)
        if specs is not None:
            declared = {(spec.name, spec.kind) for spec in specs}
            built = {(weight, weight_kind(module)) for weight, (module, _) in weights.items()}
            assert built <= declared, f"weights missing from weight_specs: {sorted(built - declared)}"
        sparsity = space.layer_sparsity(arch)
        if sparsity is not None:
            assert set(sparsity) <= set(weights), f"not prunable weights: {sorted(set(sparsity) - set(weights))}"
            assert all(isinstance(v, float) and 0.0 <= v < 1.0 for v in sparsity.values()), sparsity
        patterns = space.layer_patterns(arch)
        if patterns is not None:
            assert set(patterns) <= set(weights), f"not prunable weights: {sorted(set(patterns) - set(weights))}"
            for pattern in patterns.values():
                assert pattern in ("dense", "unstructured", "channel") or parse_pattern(pattern) is not None, pattern

    # a space made from a given network offers it, dense, as every architecture's reference
    reference = space.reference_model(input_shape, num_classes)
    if reference is not None:
        with torch.no_grad():
            assert reference.eval()(torch.randn(2, *input_shape)).shape == (2, num_classes)
        assert set(prunable_weights(reference)) == set(weights)


@pytest.mark.parametrize("name", registry.search_spaces.names())
def test_space_refuses_an_architecture_of_another_space(name: str, stored_model: str) -> None:
    space = registry.search_spaces.create(name, _space_params(name, {}, stored_model))
    with pytest.raises(ValueError):
        space.layer_sparsity({"not_a_key_of_any_space": 1})


class _MinimalSpace(SearchSpace):
    """Only the required methods: one hidden layer of 4 or 8 units."""

    class Params(BaseModel):
        pass

    def sample(self, rng: random.Random) -> dict[str, Any]:
        return {"width": rng.choice([4, 8])}

    def build(self, arch: dict[str, Any], input_shape: tuple[int, ...], num_classes: int) -> Any:
        from torch import nn

        width = self._width(arch)
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.Linear(width, num_classes))

    def layer_sparsity(self, arch: dict[str, Any]) -> None:
        self._width(arch)
        return None

    def max_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return (math.prod(input_shape) + 1) * 8 + (8 + 1) * num_classes

    def min_params(self, input_shape: tuple[int, ...], num_classes: int) -> int:
        return (math.prod(input_shape) + 1) * 4 + (4 + 1) * num_classes

    def _width(self, arch: dict[str, Any]) -> int:
        if set(arch) != {"width"} or arch["width"] not in (4, 8):
            raise ValueError(f"not an architecture of the minimal space: {arch}")
        return arch["width"]


def test_a_space_with_only_the_required_methods_gets_the_bases_defaults() -> None:
    registry.search_spaces.register("test_minimal_space", _MinimalSpace)
    job: dict[str, Any] = {"search_space": {"name": "test_minimal_space"}, "dataset": {"name": SHAPE_DATASET}}
    space = registry.search_spaces.create("test_minimal_space", {})
    arch = space.sample(random.Random(0))
    assert space.layer_patterns(arch) is None and space.weight_specs((1, 8, 8), 10) is None
    assert space.dimensions() is None
    with pytest.raises(NotImplementedError, match="no dimensions"):
        space.arch_from(lambda key: 4)

    # no weight specs: the sparsifier is not checked at submission (2:8 would not fit the 4-unit layer's fan-in);
    # the parameter bounds still refuse an impossible constraint
    JobSpec.model_validate({**job, "sparsifier": {"name": "nm", "params": {"n": 2, "m": 8}}})
    with pytest.raises(ValidationError) as impossible:
        JobSpec.model_validate({**job, "constraints": {"max_params": 100}})
    assert [(e["loc"], e["type"]) for e in impossible.value.errors()] == [
        (("constraints", "max_params"), "constraint_impossible")
    ]
    # no dimensions: random search runs it, the define-by-run samplers refuse it where it is named
    spec = JobSpec.model_validate({**job, "strategy": {"name": "random"}})
    random_search = registry.strategies.get("random")
    plan = random_search.from_history(random_search.Params(), space, spec, []).ask()
    assert isinstance(plan, TrialPlan) and plan.arch in ({"width": 4}, {"width": 8})
    with pytest.raises(ValidationError) as refused:
        JobSpec.model_validate({**job, "strategy": {"name": "tpe"}})
    (error,) = refused.value.errors()
    assert error["loc"] == ("search_space", "name") and "dimensions()" in error["msg"]


# -- strategies ----------------------------------------------------------------------------------

# A job long enough for every shipped strategy's defaults (supertickets' pruning schedule, the
# lottery chains' rounds, DASS's search and children); the space is the first that fits.
STRATEGY_JOB: dict[str, Any] = {
    "dataset": {"name": SHAPE_DATASET}, "training": {"epochs": 12}, "budget": {"max_trials": 40}
}


def _job_for(strategy: str, model_id: str) -> JobSpec:
    refusals = []
    for space in registry.search_spaces.names():
        try:
            params = _space_params(space, {}, model_id)
            job = {**STRATEGY_JOB, "search_space": {"name": space, "params": params}, "strategy": {"name": strategy}}
            return JobSpec.model_validate(job)
        except ValidationError as exc:
            refusals.append(f"{space}: {exc.errors()[0]['msg']}")
    pytest.fail(f"strategy {strategy!r} accepts no registered search space at its defaults: {refusals}")


@pytest.mark.parametrize("name", registry.strategies.names())
def test_strategy_proposes_architectures_of_its_space(name: str, stored_model: str) -> None:
    spec = _job_for(name, stored_model)
    cls = registry.strategies.get(name)
    params = cls.Params.model_validate(spec.strategy.params)
    space = registry.search_spaces.create(spec.search_space.name, spec.search_space.params)
    strategy = cls.from_history(params, space, spec, [])
    assert isinstance(strategy, Strategy)

    plan = strategy.ask()
    assert plan is WAIT or isinstance(plan, TrialPlan), plan
    if isinstance(plan, TrialPlan):
        assert _json_round_trip(plan.arch) == plan.arch
        space.layer_sparsity(cls.space_arch(plan.arch))  # the space accepts the part it builds
        density = cls.planned_density(plan.arch)
        assert density is None or 0.0 < density <= 1.0
    again = cls.from_history(params, space, spec, []).ask()
    assert (again.arch if isinstance(again, TrialPlan) else again) == (
        plan.arch if isinstance(plan, TrialPlan) else plan
    ), "a strategy rebuilt from the same history must propose the same"


# -- sparsifiers ---------------------------------------------------------------------------------

SPARSIFIER_SHAPES = {"1.weight": (64, 64), "3.weight": (32, 64), "5.weight": (10, 32)}


@pytest.mark.parametrize("name", registry.sparsifiers.names())
def test_sparsifier_reaches_its_target_through_the_training_hooks(name: str, torch_single_thread: None) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from nas.sparse.masks import masks, prunable_weights
    from nas.sparse.stats import weight_sparsity

    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    sparsifier = registry.sparsifiers.create(name, {})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    epochs, steps_per_epoch, batch = 4, 10, 16
    rows_in_all = epochs * steps_per_epoch * batch
    x, y = torch.randn(rows_in_all, 1, 8, 8), torch.randint(0, 10, (rows_in_all,))
    sparsifier.attach(model, optimizer, epochs * steps_per_epoch, None)
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            rows = slice(step * batch, (step + 1) * batch)
            step += 1
            optimizer.zero_grad()
            F.cross_entropy(model(x[rows]), y[rows]).backward()
            sparsifier.on_after_backward(model, step)
            optimizer.step()
            sparsifier.on_step(model, step)
        sparsifier.on_epoch_end(model, epoch)
        extra = sparsifier.epoch_metrics(model)
        assert all(isinstance(key, str) and isinstance(value, float) for key, value in extra.items()), extra
    sparsifier.finalize(model)

    assert list(prunable_weights(model)) == list(SPARSIFIER_SHAPES)
    assert masks(model), "finalize left no masks"
    sparsity = weight_sparsity(model)
    target = expected_sparsity(sparsifier.params.model_dump(), sparsifier.pattern, SPARSIFIER_SHAPES)
    if target is None:
        assert sparsity > 0.0
    else:
        assert sparsity == pytest.approx(target, abs=0.01)
    assert all(isinstance(sparsifier.pattern_of(weight), str) for weight in SPARSIFIER_SHAPES)
    assert sparsifier.check([WeightSpec("1.weight", "linear", frozenset({64}))]) == []


# -- datasets ------------------------------------------------------------------------------------


@pytest.fixture
def stored_dataset(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The id of a dataset stored as users' datasets are, in a worker node's cache of its own."""
    import numpy as np

    from nas.data import DataSplits
    from nas.data.node_cache import NodeDatasetCatalog, cache_path
    from nas.data.stored import scoped_catalog, write_splits

    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((60, 2, 6, 5), dtype=np.float32), np.arange(60, dtype=np.int64) % 3
    cache_dir, dataset_id = tmp_path_factory.mktemp("node-cache"), uuid.uuid4().hex
    write_splits(cache_path(cache_dir, dataset_id), DataSplits(x[:45], y[:45], x[45:], y[45:], (2, 6, 5), 3))
    with scoped_catalog(NodeDatasetCatalog(cache_dir)):
        yield dataset_id


def _tiny(name: str, stored_id: str) -> Dataset:
    """The dataset at its defaults, with its split-size limits (when it has them) cut to a few rows;
    a dataset that names a stored one by id names ``stored_id``."""
    fields = registry.datasets.get(name).Params.model_fields
    options = {"train_limit": 200, "test_limit": 100, "id": stored_id}
    return registry.datasets.create(name, {key: value for key, value in options.items() if key in fields})


def _check_splits(dataset: Dataset, data_dir: Path) -> None:
    """A dataset of examples loads the shapes it declares; a table of results (:class:`TabularDataset`)
    loads none, and answers a lookup for architectures of its space with finite metrics instead."""
    import numpy as np

    if isinstance(dataset, TabularDataset):
        with pytest.raises(ValueError, match="looked up"):
            dataset.load(data_dir)
        space = registry.search_spaces.create(dataset.space, {})
        entry = dataset.lookup(space.sample(random.Random(0)), seed=0)
        assert entry.metrics and all(math.isfinite(v) for v in entry.metrics.values())
        assert entry.train_time_s > 0 and entry.epochs >= 1
        return
    input_shape, num_classes = dataset.shape()
    splits = dataset.load(data_dir)
    assert (tuple(splits.input_shape), splits.num_classes) == (tuple(input_shape), num_classes)
    for x, labels in ((splits.x_train, splits.y_train), (splits.x_test, splits.y_test)):
        assert x.dtype == np.float32 and labels.dtype == np.int64
        assert x.shape[1:] == tuple(input_shape) and len(x) == len(labels) > 0
        assert 0 <= labels.min() and labels.max() < num_classes


@pytest.mark.parametrize("name", registry.datasets.names())
def test_dataset_loads_what_it_declares_or_names_the_missing_files(name: str, data_dir: Path, stored_dataset: str) -> None:
    dataset = _tiny(name, stored_dataset)
    input_shape, num_classes = dataset.shape()
    assert all(isinstance(s, int) and s > 0 for s in input_shape) and num_classes >= 2
    try:
        dataset.check_available(data_dir)
    except ValueError as missing:
        assert str(data_dir) in str(missing), "the refusal must say where the files were looked for"
        with pytest.raises(ValueError):
            dataset.load(data_dir)
    else:
        _check_splits(dataset, data_dir)


@pytest.mark.parametrize("name", registry.datasets.names())
def test_dataset_in_an_empty_folder_is_bundled_or_refused_naming_the_folder(
    name: str, tmp_path: Path, stored_dataset: str
) -> None:
    dataset = _tiny(name, stored_dataset)
    try:
        dataset.check_available(tmp_path)
    except ValueError as missing:
        assert str(tmp_path) in str(missing) and "missing" in str(missing)
    else:
        _check_splits(dataset, tmp_path)  # bundled or generated: needs no files


# -- early-stopping rules ------------------------------------------------------------------------

OBJECTIVE_SETS: list[list[dict[str, str]]] = [
    [{"metric": "accuracy", "direction": "maximize"}],
    [{"metric": "accuracy", "direction": "maximize"}, {"metric": "params", "direction": "minimize"}],
]
EPOCHS = 4


@dataclass(eq=False)
class _ToyTrial:
    """What Ray Tune's schedulers read of a trial; hashed by identity, as Tune's trials are."""

    trial_id: str
    config: dict[str, Any] = field(default_factory=dict)
    status: str = "RUNNING"


def _job_accepted_by(name: str) -> JobSpec:
    for objectives in OBJECTIVE_SETS:
        spec = JobSpec.model_validate(
            {"search_space": {"name": "sparse_mlp"}, "dataset": {"name": SHAPE_DATASET},
             "training": {"epochs": EPOCHS}, "objectives": objectives}
        )
        problems = registry.early_stopping.create(name, {}).check(spec)
        assert all(isinstance(loc, tuple) and isinstance(text, str) for loc, text in problems)
        if not problems:
            return spec
    pytest.fail(f"early-stopping rule {name!r} accepts none of the objective sets {OBJECTIVE_SETS}")


@pytest.mark.parametrize("name", registry.early_stopping.names())
def test_early_stopping_rule_never_stops_the_best_trial_or_a_last_epoch(name: str) -> None:
    from ray.tune.schedulers import TrialScheduler

    from workers.schedulers import tune_scheduler

    spec = _job_accepted_by(name)
    scheduler = tune_scheduler(registry.early_stopping.create(name, {}), spec)
    assert isinstance(scheduler, TrialScheduler)
    # trial 0 is the best at every epoch and runs first; the others are ever worse, each slower to learn
    trials = [_ToyTrial(f"t{i}", {"planned": {"params": 1000.0 * (i + 1)}}) for i in range(6)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    decisions: dict[str, list[str]] = {}
    for i, trial in enumerate(trials):
        result: dict[str, Any] = {}
        for epoch in range(1, EPOCHS + 1):
            accuracy = 0.9 * epoch / EPOCHS / (1 + i)
            result = {"epoch": epoch, "training_iteration": epoch, "val_accuracy": accuracy, "val_loss": 1 - accuracy,
                      "sparsity": 0.5}  # what the trainer reports after an epoch: the validation split only
            decision = scheduler.on_trial_result(None, trial, result)
            assert decision in (TrialScheduler.CONTINUE, TrialScheduler.STOP), decision
            decisions.setdefault(trial.trial_id, []).append(decision)
            if decision == TrialScheduler.STOP:
                break
        scheduler.on_trial_complete(None, trial, result)
    assert TrialScheduler.STOP not in decisions["t0"], decisions
    assert all(len(d) < EPOCHS or d[-1] == TrialScheduler.CONTINUE for d in decisions.values()), decisions
