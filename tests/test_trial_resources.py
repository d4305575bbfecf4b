"""What one trial asks of the Ray cluster (``resources``): checked in the spec, and at submission against
the nodes the live dispatchers reported, this machine standing in before any has.

Ray itself is in tests/test_runner.py (the resources a trial gets, a claimed job no node can run,
the dispatcher's report) and tests/test_e2e_server.py (``nas serve``'s own dispatcher).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import ValidationError

from api.app import create_app
from nas.cluster import Node, this_machine
from nas.settings import Settings
from nas.specs import JobSpec
from nas.store import Store
from tests.test_readiness import _silence

SPEC: dict[str, Any] = {"search_space": {"name": "sparse_mlp"}, "dataset": {"name": "digits"}, "budget": {"max_trials": 1}}


def _errors(spec: dict[str, Any]) -> list[tuple[tuple[Any, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        JobSpec.model_validate(spec)
    return [(error["loc"], error["msg"]) for error in caught.value.errors()]


def test_resources_default_to_one_cpu_and_no_gpu_and_gpus_above_one_are_whole() -> None:
    spec = JobSpec.model_validate(SPEC)
    assert spec.resources.model_dump() == {"cpus": 1, "gpus": 0} and spec.training.mixed_precision is False
    shared = JobSpec.model_validate({**SPEC, "resources": {"cpus": 0.5, "gpus": 0.25}})
    assert (shared.resources.cpus, shared.resources.gpus) == (0.5, 0.25)
    assert JobSpec.model_validate({**SPEC, "resources": {"gpus": 2}}).resources.gpus == 2
    ((loc, msg),) = _errors({**SPEC, "resources": {"gpus": 1.5}})
    assert loc == ("resources", "gpus") and "whole GPUs" in msg
    assert [loc for loc, _ in _errors({**SPEC, "resources": {"cpus": 0}})] == [("resources", "cpus")]


def test_mixed_precision_without_a_gpu_is_refused() -> None:
    ((loc, msg),) = _errors({**SPEC, "training": {"mixed_precision": True}})
    assert loc == ("training", "mixed_precision") and "resources.gpus" in msg
    spec = JobSpec.model_validate({**SPEC, "training": {"mixed_precision": True}, "resources": {"gpus": 0.5}})
    assert spec.training.mixed_precision


@pytest.fixture
def client(store: Store, tmp_path: Path) -> Iterator[TestClient]:
    settings = Settings(home=tmp_path / "home", data_dir=tmp_path)
    with TestClient(create_app(store, settings), headers={"Authorization": f"Bearer {store.create_api_key('ann')}"}) as c:
        yield c


def _submit(client: TestClient, **resources: float) -> tuple[int, Any]:
    response = client.post("/api/v1/jobs", json={**SPEC, "resources": resources})
    return response.status_code, response.json()


def _refusal(answer: tuple[int, Any]) -> tuple[list[str], str]:
    status, body = answer
    assert status == 422, body
    (error,) = body["detail"]
    assert error["type"] == "resources_incompatible"
    return error["loc"], error["msg"]


def test_a_job_no_reported_node_can_run_is_refused_at_submission(store: Store, client: TestClient) -> None:
    store.dispatcher_heartbeat("d1", ray_up=True, nodes=[Node("a", 2, 0)])
    assert _refusal(_submit(client, gpus=1)) == (
        ["body", "resources", "gpus"],
        "no node of the cluster has a GPU (resources.gpus=1); the cluster has: 1 node of 2 CPUs and no GPU",
    )
    loc, msg = _refusal(_submit(client, cpus=4))
    assert loc == ["body", "resources", "cpus"] and msg.startswith("no node of the cluster has 4 CPUs")
    assert _submit(client, cpus=2)[0] == 201
    # a second dispatcher's cluster adds its nodes (the shared one counted once)
    store.dispatcher_heartbeat("d2", ray_up=True, nodes=[Node("a", 2, 0), Node("b", 16, 1), Node("c", 16, 1)])
    assert _submit(client, cpus=8, gpus=1)[0] == 201
    assert _submit(client, gpus=0.25)[0] == 201
    loc, msg = _refusal(_submit(client, gpus=2))
    assert loc == ["body", "resources", "gpus"]
    assert msg == ("no node of the cluster has 2 GPUs (resources.gpus=2); the cluster has: "
                   "2 nodes of 16 CPUs and 1 GPU, 1 node of 2 CPUs and no GPU")  # fmt: skip
    store.dispatcher_heartbeat("d2", ray_up=True, nodes=[Node("a", 32, 0), Node("b", 4, 1)])
    loc, msg = _refusal(_submit(client, cpus=8, gpus=1))
    assert loc == ["body", "resources", "gpus"] and msg.startswith("no node of the cluster has both 8 CPUs and 1 GPU (")


def test_before_any_dispatcher_reports_this_machine_stands_in(store: Store, client: TestClient) -> None:
    assert this_machine() == Node("this machine", float(len(os.sched_getaffinity(0))), float(torch.cuda.device_count()))
    too_many = this_machine().gpus + 1
    loc, msg = _refusal(_submit(client, gpus=too_many))
    assert loc == ["body", "resources", "gpus"] and msg.endswith("this machine stands in for it)")
    store.dispatcher_heartbeat("d1", ray_up=True, nodes=[Node("a", 2, too_many)])
    assert _submit(client, gpus=too_many)[0] == 201
    _silence(store, "d1")  # a dispatcher silent past the staleness bound no longer speaks for the cluster
    assert _refusal(_submit(client, gpus=too_many))[1].endswith("this machine stands in for it)")


def test_a_cpu_trial_trains_on_its_data_and_model_in_place(tmp_path: Path) -> None:
    """The CPU path copies nothing: the cached dataset itself, the model where it was built, float32 passes."""
    from nas.training import Precision, load_data, model_device, on_device, trial_device

    spec = JobSpec.model_validate({**SPEC, "dataset": {"name": "digits"}})
    assert trial_device() == torch.device("cpu")  # no worker chose a GPU for it (workers.trainable.allotted_device)
    data = load_data(spec, tmp_path)  # digits ships with scikit-learn
    assert on_device(data, torch.device("cpu")) is data
    model = torch.nn.Linear(4, 2)
    assert model.to(trial_device()) is model and model_device(model) == torch.device("cpu")
    precision = Precision(True, torch.device("cpu"))  # mixed precision is for a GPU: a CPU trial stays float32
    with precision.autocast():
        assert model(torch.ones(1, 4)).dtype == torch.float32
