"""The declarative space: networks a job spec describes block by block build on images, sequences and
tables; every space that cannot build is refused through the live API with a 422 at the exact field of
its params and leaves no job behind; short random, TPE and NSGA-II searches train its networks."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.app import API_PREFIX
from nas import registry
from nas.specs import JobSpec, Trial, TrialState
from nas.store.tables import JobRow
from nas.training import run_trial
from tests.sdk_server import Server, serve

LIMIT_PARAMS = 200_000
IMAGES = {"name": "synthetic", "params": {"input_shape": [1, 8, 8], "num_classes": 4, "train_size": 64, "test_size": 32}}
TABLE = {"name": "synthetic", "params": {"input_shape": [12], "num_classes": 3, "train_size": 64, "test_size": 32}}
SEQUENCES = {"name": "synthetic", "params": {"input_shape": [6, 5], "num_classes": 3, "train_size": 64, "test_size": 32}}


def _space(blocks: list[dict[str, Any]]) -> Any:
    return registry.search_spaces.create("declarative", {"blocks": blocks})


@pytest.mark.parametrize(
    ("blocks", "input_shape"),
    [
        pytest.param([{"kind": "conv", "widths": [4, 8], "strides": [1, 2]}, {"kind": "depthwise", "optional": True},
                      {"kind": "residual", "widths": [8], "expands": [1, 2], "strides": [2]},
                      {"kind": "pool", "ops": ["global_avg"]}, {"kind": "linear", "widths": [16]}], (3, 8, 8), id="images"),
        pytest.param([{"kind": "linear", "widths": [8, 16], "activations": ["tanh", "silu"]},
                      {"kind": "linear", "widths": [8], "optional": True, "sparsity": [0.5]}], (12,), id="table"),
        pytest.param([{"kind": "recurrent", "cells": ["lstm", "gru", "rnn_relu"], "widths": [8], "bidirectional": [False, True]},
                      {"kind": "linear", "widths": [8]}], (6, 5), id="sequence"),
        pytest.param([{"kind": "conv", "widths": [4, 6]}, {"kind": "recurrent", "cells": ["gru"], "widths": [8]}], (1, 8, 8),
                     id="image-rows"),
    ],
)  # fmt: skip
def test_declared_networks_build_with_the_counted_parameters(
    blocks: list[dict[str, Any]], input_shape: tuple[int, ...], torch_single_thread: None
) -> None:
    import torch

    space = _space(blocks)
    assert space.fit_problems(input_shape, 3) == []
    low, high = space.min_params(input_shape, 3), space.max_params(input_shape, 3)
    sizes = set()
    for seed in range(6):
        arch = space.sample(random.Random(seed))
        model = space.build(arch, input_shape, 3)
        with torch.no_grad():
            assert model.eval()(torch.randn(2, *input_shape)).shape == (2, 3)
        size = sum(p.numel() for p in model.parameters())
        assert size == space.count_params(arch, input_shape, 3) and low <= size <= high
        sizes.add(size)
    assert len(sizes) > 1, "the choices change the network"


def test_patterns_apply_per_block_and_n_m_skips_a_depthwise_weight() -> None:
    space = _space([
        {"kind": "conv", "widths": [8], "patterns": ["channel"], "sparsity": [0.6]},
        {"kind": "residual", "widths": [8], "expands": [2], "patterns": ["2:4"]},
        {"kind": "flatten"}, {"kind": "linear", "widths": [16], "sparsity": [0.9]},
    ])  # fmt: skip
    arch = space.sample(random.Random(0))
    assert space.layer_patterns(arch) == {
        "block0.conv.weight": "channel", "block1.body.expand.weight": "2:4",
        "block1.body.depthwise.weight": "dense", "block1.body.project.weight": "2:4",
    }  # fmt: skip
    assert space.layer_sparsity(arch) == {
        "block0.conv.weight": 0.6, "block1.body.expand.weight": 0.5, "block1.body.depthwise.weight": 0.0,
        "block1.body.project.weight": 0.5, "block3.fc.weight": 0.9,
    }  # fmt: skip


# -- refusals through the live API ------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[httpx.Client, Server]]:
    server = serve(tmp_path_factory.mktemp("declarative-api"), limit_params=LIMIT_PARAMS)
    running = next(server)
    key = running.store.create_api_key("alice")
    with httpx.Client(base_url=running.url, timeout=60, headers={"Authorization": f"Bearer {key}"}) as client:
        yield client, running
    server.close()


def _submit(client: httpx.Client, blocks: list[dict[str, Any]], dataset: dict[str, Any] = IMAGES) -> httpx.Response:
    spec = {"search_space": {"name": "declarative", "params": {"blocks": blocks}}, "dataset": dataset,
            "budget": {"max_trials": 2}, "training": {"epochs": 1}}  # fmt: skip
    return client.post(f"{API_PREFIX}/jobs", json=spec)


@pytest.mark.parametrize(
    ("blocks", "dataset", "loc", "words"),
    [
        pytest.param([{"kind": "conv", "strides": [1, 4]}, {"kind": "conv", "strides": [4]}], IMAGES,
                     ["blocks", 1, "strides"], "stride 4 shrinks a 16x2x2 map", id="stride"),
        pytest.param([{"kind": "conv"}, {"kind": "pool", "sizes": [2]}, {"kind": "pool", "sizes": [2, 5]}], IMAGES,
                     ["blocks", 2, "sizes"], "5x5 pool shrinks a 16x4x4 map", id="pool"),
        pytest.param([{"kind": "conv"}, {"kind": "pool", "sizes": [4, 2], "optional": True}, {"kind": "pool", "sizes": [4]}],
                     IMAGES, ["blocks", 2, "sizes"], "4x4 pool shrinks a 16x2x2 map", id="pool-after-an-optional-pool"),
        pytest.param([{"kind": "conv"}, {"kind": "linear"}], IMAGES,
                     ["blocks", 1, "kind"], "put a flatten block", id="linear-on-a-map"),
        pytest.param([{"kind": "flatten"}, {"kind": "linear"}, {"kind": "conv"}], IMAGES,
                     ["blocks", 2, "kind"], "a convolution needs an image map", id="conv-after-linear"),
        pytest.param([{"kind": "conv"}], TABLE,
                     ["blocks", 0, "kind"], "a table or flat features have no height and width", id="conv-on-a-table"),
        pytest.param([{"kind": "linear"}, {"kind": "recurrent"}], TABLE,
                     ["blocks", 1, "kind"], "which have no steps", id="recurrent-on-flat-features"),
        pytest.param([{"kind": "conv", "widths": [8]}, {"kind": "flatten", "optional": True}, {"kind": "pool"}], IMAGES,
                     ["blocks", 2, "kind"], "pooling needs an image map", id="an-optional-flatten"),
        pytest.param([{"kind": "conv", "widths": [6, 8]}, {"kind": "conv", "patterns": ["2:4"]}], IMAGES,
                     ["blocks", 1, "patterns"], "multiple of 4", id="n-m-fan-in"),
        pytest.param([{"kind": "depthwise", "patterns": ["1:2"]}], IMAGES,
                     ["blocks", 0, "patterns"], "one input channel per group", id="n-m-depthwise"),
        pytest.param([{"kind": "recurrent", "patterns": ["channel"]}], SEQUENCES,
                     ["blocks", 0, "patterns"], "gates of shared units", id="channel-recurrent"),
        pytest.param([{"kind": "conv", "kernels": [3, 4]}], IMAGES, ["blocks", 0, "kernels"], "must be odd", id="even-kernel"),
        pytest.param([{"kind": "conv", "widths": [8, 8]}], IMAGES, ["blocks", 0, "widths"], "repeats", id="repeated-choice"),
        pytest.param([{"kind": "conv"}, {"kind": "flatten"}, {"kind": "linear", "widths": [64, 512]}], IMAGES,
                     ["blocks", 2, "widths"], f"this server allows {LIMIT_PARAMS}", id="params-over-the-limit"),
        pytest.param([{"kind": "conv", "widths": [64]}, {"kind": "conv", "widths": [16, 512]}, {"kind": "pool", "ops": ["global_avg"]}],
                     IMAGES, ["blocks", 1, "widths"], f"this server allows {LIMIT_PARAMS}", id="params-over-the-limit-conv"),
        pytest.param([{"kind": "conv", "widths": [2048]}], IMAGES,
                     ["blocks", 0], f"this server allows {LIMIT_PARAMS}", id="params-over-the-limit-classifier"),
        pytest.param([{"kind": "conv", "widths": list(range(1, 17)), "kernels": [1, 3, 5, 7, 9, 11], "strides": [1, 2]}] * 4,
                     IMAGES, ["blocks", 3], "more than 20000 combinations", id="too-many-combinations"),
    ],
)  # fmt: skip
def test_a_space_that_cannot_build_is_refused_at_its_field_and_leaves_no_job(
    live: tuple[httpx.Client, Server], blocks: list[dict[str, Any]], dataset: dict[str, Any], loc: list[Any], words: str
) -> None:
    client, server = live
    with server.store.engine.connect() as connection:
        jobs = connection.scalar(select(func.count()).select_from(JobRow))
    response = _submit(client, blocks, dataset)
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "search_space", "params", *loc], error
    assert words in error["msg"], error["msg"]
    with server.store.engine.connect() as connection:
        assert connection.scalar(select(func.count()).select_from(JobRow)) == jobs


def test_a_space_that_builds_is_accepted_and_stored_with_its_defaults(live: tuple[httpx.Client, Server]) -> None:
    client, server = live
    response = _submit(client, [{"kind": "conv", "widths": [4, 8]}, {"kind": "pool"}, {"kind": "flatten"},
                                {"kind": "linear", "widths": [16], "optional": True}])  # fmt: skip
    assert response.status_code == 201, response.text
    stored = response.json()["spec"]["search_space"]["params"]["blocks"]
    assert stored[0] == {"kind": "conv", "widths": [4, 8], "kernels": [3], "strides": [1], "activations": ["relu"],
                         "batchnorm": False, "optional": False, "sparsity": None, "patterns": None}  # fmt: skip
    catalog = client.get(f"{API_PREFIX}/catalog").json()
    (entry,) = [s for s in catalog["search_spaces"] if s["name"] == "declarative"]
    assert entry["params_schema"]["properties"]["blocks"]["items"]["discriminator"]["propertyName"] == "kind"


# -- short searches ---------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "tpe", "nsga2"])
def test_a_short_search_trains_declared_networks(strategy: str, tmp_path: Path, torch_single_thread: None) -> None:
    spec = JobSpec.model_validate({
        "search_space": {"name": "declarative", "params": {"blocks": [
            {"kind": "conv", "widths": [4, 8], "patterns": ["unstructured", "channel"], "sparsity": [0.5]},
            {"kind": "pool", "ops": ["max", "avg"]}, {"kind": "flatten"},
            {"kind": "linear", "widths": [16, 32], "optional": True, "patterns": ["dense", "2:4"]},
        ]}},
        "dataset": IMAGES, "strategy": {"name": strategy}, "training": {"epochs": 1, "batch_size": 32},
        "budget": {"max_trials": 3}, "seed": 1,
    })  # fmt: skip
    cls = registry.strategies.get(strategy)
    space = registry.search_spaces.create("declarative", spec.search_space.params)
    search = cls.from_history(cls.Params.model_validate(spec.strategy.params), space, spec, [])
    for number in range(3):
        plan = search.ask()
        outcome = run_trial(spec, plan.arch, tmp_path, lambda epoch, metrics: None)
        assert 0.0 <= outcome.metrics["accuracy"] <= 1.0 and outcome.metrics["sparsity"] > 0.0
        search.tell(Trial(id=str(number), job_id="job", number=number, state=TrialState.complete, arch=plan.arch,
                          metrics=outcome.metrics, created_at=datetime.now(timezone.utc)))  # fmt: skip
