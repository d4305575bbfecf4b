"""The asynchronous SDK: against the app in-process (httpx's ASGI transport), and against the
real server on a socket for the event stream."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import pytest

from api.app import create_app
from nas.client import (
    AsyncClient,
    AuthenticationError,
    ConflictError,
    ConnectionFailed,
    Job,
    JobPage,
    JobStatus,
    NotFoundError,
    ServerError,
    Trial,
    TrialPage,
    TrialState,
    ValidationError,
    WaitTimeout,
)
from nas.settings import Settings
from nas.store import Store, make_engine, upgrade
from tests.sdk_server import SPEC, Server, complete_trial, model_bytes

# the fixtures `server`, `owner` and `key`

T = TypeVar("T")


def run(coroutine: Awaitable[T]) -> T:
    return asyncio.run(coroutine)  # type: ignore[arg-type]


class InProcess:
    """The real app and store, reached through ``httpx.ASGITransport``: no socket at all."""

    def __init__(self, home: Path) -> None:
        (home / "data").mkdir()
        database_url = f"sqlite:///{home / 'nas.db'}"
        self.settings = Settings(home=home, database_url=database_url, data_dir=home / "data")
        self.engine = make_engine(database_url)
        upgrade(self.engine)
        self.store = Store(self.engine)
        self.app = create_app(self.store, self.settings)

    def client(self, key: str | None = None, **kwargs: Any) -> AsyncClient:
        key = key if key is not None else self.store.create_api_key(f"user-{uuid.uuid4().hex[:8]}")
        return AsyncClient("http://nas.test", api_key=key, transport=httpx.ASGITransport(self.app), **kwargs)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InProcess]:
    in_process = InProcess(tmp_path_factory.mktemp("async-app"))
    yield in_process
    in_process.engine.dispose()


def test_submit_read_and_iterate(app: InProcess) -> None:
    async def scenario() -> None:
        async with app.client() as client:
            jobs = [await client.submit({**SPEC, "name": f"async-{i}"}) for i in range(3)]
            assert all(isinstance(j, Job) and j.status is JobStatus.queued for j in jobs)
            assert await client.job(jobs[0].id) == jobs[0]
            assert [j.id async for j in client.jobs(page_size=2)] == [j.id for j in reversed(jobs)]
            page = await client.job_page(limit=1)
            assert isinstance(page, JobPage) and page.items[0].id == jobs[-1].id and page.next_cursor

            created = [app.store.create_trial(jobs[0].id, {"i": i}) for i in range(7)]
            app.store.start_trial(created[2].id)
            trials = [t async for t in client.trials(jobs[0].id, page_size=3)]
            assert [t.id for t in trials] == [t.id for t in created] and all(isinstance(t, Trial) for t in trials)
            assert [t.number async for t in client.trials(jobs[0].id, state=TrialState.running)] == [2]
            first = await client.trial_page(jobs[0].id, limit=4)
            assert isinstance(first, TrialPage) and len(first.items) == 4 and first.next_cursor
            assert (await client.trial(created[2].id)).state is TrialState.running

            catalog = await client.catalog()
            assert "sparse_mlp" in {s["name"] for s in catalog["search_spaces"]}

    run(scenario())


def test_pareto_cancel_and_wait(app: InProcess) -> None:
    async def scenario() -> None:
        async with app.client() as client:
            objectives = [{"metric": "accuracy", "direction": "maximize"},
                          {"metric": "nonzero_params", "direction": "minimize"}]
            job = await client.submit({**SPEC, "objectives": objectives})
            small = complete_trial(app.store, job.id, accuracy=0.8, nonzero_params=100)
            big = complete_trial(app.store, job.id, accuracy=0.95, nonzero_params=5000)
            complete_trial(app.store, job.id, accuracy=0.7, nonzero_params=500)
            assert sorted(t.id for t in await client.pareto(job.id)) == sorted([small.id, big.id])

            seen: list[Job] = []

            async def note(current: Job) -> None:  # a coroutine callback is awaited
                seen.append(current)

            with pytest.raises(WaitTimeout):
                await client.wait(job.id, progress=note, poll_s=0.01, timeout=0.05)
            assert seen and seen[0].n_complete == 3

            assert (await client.cancel(job.id)).status is JobStatus.cancelled
            with pytest.raises(ConflictError):
                await client.cancel(job.id)
            done = await client.wait(job.id, progress=seen.append, poll_s=0.01)
            assert done.status is JobStatus.cancelled and seen[-1].status is JobStatus.cancelled

    run(scenario())


def test_trial_log(app: InProcess) -> None:
    async def scenario() -> None:
        async with app.client() as client:
            job = await client.submit(SPEC)
            trial = app.store.create_trial(job.id, {"depth": 1})
            with pytest.raises(NotFoundError, match="has not run yet"):
                await client.trial_log(trial.id)
            app.store.start_trial(trial.id)
            app.store.finish_trial(trial.id, TrialState.failed, error="ValueError: x", log="epoch 1\nValueError: x\n")
            assert await client.trial_log(trial.id) == "epoch 1\nValueError: x\n"

    run(scenario())


def test_errors(app: InProcess) -> None:
    async def scenario() -> None:
        async with app.client(key="nas_wrong") as bad:
            with pytest.raises(AuthenticationError) as info:
                await bad.job("0" * 32)
            assert info.value.status == 401 and info.value.request_id
        async with app.client() as client:
            with pytest.raises(NotFoundError):
                await client.job("0" * 32)
            with pytest.raises(NotFoundError):
                [t async for t in client.trials("0" * 32)]
            with pytest.raises(ValidationError) as invalid:
                await client.submit({**SPEC, "budget": {"max_trials": 0}})
            assert [e.path for e in invalid.value.errors] == ["budget.max_trials"]
        async with AsyncClient("http://127.0.0.1:9", api_key="k", retries=1, backoff=0.01) as nowhere:
            with pytest.raises(ConnectionFailed):
                await nowhere.job("0" * 32)

    run(scenario())


def test_download_models(app: InProcess, tmp_path: Path, torch_single_thread: None) -> None:
    import torch

    from nas.export import run_onnx
    from nas.store.artifacts import save_model
    from nas.training import load_trained_model

    async def scenario() -> None:
        async with app.client() as client:
            job = await client.submit(SPEC)
            trial = complete_trial(app.store, job.id, accuracy=0.9)
            with pytest.raises(NotFoundError, match="has no model"):
                await client.download_model(trial.id, tmp_path, format="onnx")
            data = model_bytes("sparse_cnn", {"families": ["conv"]}, seed=2)
            app.store.add_artifact(save_model(app.settings.artifact_dir, job.id, trial.id, data))

            saved = await client.download_model(trial.id, tmp_path)
            assert saved == tmp_path / f"trial-{trial.id}.safetensors" and saved.read_bytes() == data
            exported = await client.download_model(trial.id, tmp_path / "model.onnx", format="onnx")
            x = np.random.default_rng(0).normal(size=(2, 1, 8, 8)).astype(np.float32)
            with torch.no_grad():
                expected = load_trained_model(data)(torch.from_numpy(x)).numpy()
            np.testing.assert_allclose(run_onnx(exported.read_bytes(), x), expected, rtol=1e-4, atol=1e-5)
            report = await client.model_report(trial.id)
            assert report["trial"]["trial_id"] == trial.id and report["onnx"]["latency_ms"] > 0

    run(scenario())


def test_retries_against_the_real_server(server: Server, key: str) -> None:
    async def scenario() -> None:
        async with AsyncClient(server.url, api_key=key, backoff=0.01) as client:
            job = await client.submit(SPEC)
            server.faults.arm(3, status=502)
            assert (await client.job(job.id)).id == job.id and len(server.faults.seen) == 4
            server.faults.arm(1, status=503, method="POST")
            with pytest.raises(ServerError):  # a submit is not repeated
                await client.submit(SPEC)
            assert len(server.faults.seen) == 1
            server.faults.arm(1, status=502, method="POST", after=True)
            assert (await client.cancel(job.id)).status is JobStatus.cancelled

    run(scenario())


def test_events_over_a_real_socket(server: Server, key: str) -> None:
    async def scenario() -> list[Any]:
        async with AsyncClient(server.url, api_key=key, backoff=0.01) as client:
            job = await client.submit(SPEC)

            def finish() -> None:
                time.sleep(1.5)
                while (claimed := server.store.claim_job("test-runner", 60)) != job.id:
                    assert claimed is not None
                complete_trial(server.store, job.id, accuracy=0.6)
                server.store.finish_job(job.id, JobStatus.succeeded)

            threading.Thread(target=finish, daemon=True).start()
            return [event async for event in client.events(job.id)]

    events = run(scenario())
    assert events[-1].event == "end" and events[-1].data == {"status": "succeeded"}
    assert "trial" in {e.event for e in events}


