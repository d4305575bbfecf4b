"""The SDK's trials CSV and DataFrame, sync and async, against the real API on a localhost port."""

from __future__ import annotations

import asyncio
import builtins
from typing import Any

import pandas as pd
import pytest

from nas.client import AsyncClient, Client
from nas.specs import TrialState
from tests.sdk_server import SPEC, Server

ARCHS = [{"depth": 1, "width_0": 64, "activation": "relu"}, {"depth": 2, "width_0": 128, "width_1": 32, "activation": "gelu"}]


@pytest.fixture
def job_id(server: Server, key: str) -> str:
    """A job of two complete trials and a queued one."""
    with Client(url=server.url, api_key=key) as client:
        job = client.submit(SPEC)
    for arch, accuracy in zip(ARCHS, (0.5, 0.75)):
        trial = server.store.create_trial(job.id, arch)
        server.store.start_trial(trial.id)
        server.store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": accuracy, "params": 1234.0})
    server.store.create_trial(job.id, {"depth": 3, "width_0": 8, "width_1": 8, "width_2": 8, "activation": "relu"})
    return job.id


def check(frame: pd.DataFrame, job_trials: list[str]) -> None:
    assert list(frame["id"]) == job_trials and all(isinstance(i, str) for i in frame["id"])
    assert list(frame["number"]) == [0, 1, 2]
    assert list(frame["state"]) == ["complete", "complete", "queued"]
    assert list(frame.columns[3:8]) == ["arch.depth", "arch.width_0", "arch.width_1", "arch.width_2", "arch.activation"]
    assert list(frame["arch.activation"]) == ["relu", "gelu", "relu"]
    assert frame["accuracy"].iloc[1] == 0.75 and pd.isna(frame["accuracy"].iloc[2])
    assert frame["params"].iloc[0] == 1234
    assert str(frame["finished_at"].dtype).startswith("datetime64") and frame["finished_at"].iloc[0].tzinfo is not None
    assert pd.isna(frame["arch.width_1"].iloc[0])


def test_trials_dataframe(server: Server, key: str, job_id: str) -> None:
    with Client(url=server.url, api_key=key) as client:
        trials = [t.id for t in client.trials(job_id)]
        check(client.trials_dataframe(job_id[:8]), trials)  # a unique prefix names the job
        assert client.trials_csv(job_id).splitlines()[0].startswith("id,number,state,arch.depth,")


def test_trials_dataframe_async(server: Server, key: str, job_id: str) -> None:
    async def read() -> tuple[pd.DataFrame, list[str]]:
        async with AsyncClient(url=server.url, api_key=key) as client:
            return await client.trials_dataframe(job_id), [t.id async for t in client.trials(job_id)]

    frame, trials = asyncio.run(read())
    check(frame, trials)


def test_trials_dataframe_without_pandas_says_what_to_install(
    server: Server, key: str, job_id: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_pandas(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pandas":
            raise ModuleNotFoundError("No module named 'pandas'", name="pandas")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pandas)
    with Client(url=server.url, api_key=key) as client, pytest.raises(ModuleNotFoundError, match="pip install pandas"):
        client.trials_dataframe(job_id)
