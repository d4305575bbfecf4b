"""Notes and user attributes through the SDK (sync and async) and the CLI, against the real server on a socket."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from typer.testing import CliRunner

from nas.cli import app as cli_app
from nas.client import AsyncClient, Client, NotFoundError, ValidationError
from nas.specs import MAX_ANNOTATION
from tests.sdk_server import SPEC, Server, complete_trial

# the fixtures `server`, `owner` and `key`


@pytest.fixture
def job_and_trial(server: Server, key: str) -> tuple[str, str]:
    with Client(server.url, key) as client:
        job = client.submit(SPEC)
    return job.id, complete_trial(server.store, job.id, accuracy=0.9).id


def test_sdk_sets_merges_and_clears_notes(server: Server, key: str, job_and_trial: tuple[str, str]) -> None:
    job_id, trial_id = job_and_trial
    with Client(server.url, key) as client:
        job = client.annotate_job(job_id, note="first try", user_attrs={"paper": "fig3", "seed": 1})
        assert (job.note, job.user_attrs) == ("first try", {"paper": "fig3", "seed": 1})
        job = client.annotate_job(job_id, user_attrs={"seed": None, "kept": True})
        assert (client.job(job_id).note, job.user_attrs) == ("first try", {"paper": "fig3", "kept": True})
        assert client.annotate_job(job_id, note="").note is None
        trial = client.annotate_trial(trial_id, note="looks overfit", user_attrs={"lr": 0.01})
        assert (client.trial(trial_id).note, trial.user_attrs) == ("looks overfit", {"lr": 0.01})
        assert next(client.trials(job_id)).note == "looks overfit"
        with pytest.raises(ValueError, match="give a note"):
            client.annotate_trial(trial_id)


def test_async_sdk_annotates_and_refuses_what_the_server_refuses(server: Server, key: str, job_and_trial: tuple[str, str]) -> None:
    job_id, trial_id = job_and_trial

    async def run() -> None:
        async with AsyncClient(server.url, key) as client:
            assert (await client.annotate_job(job_id, note="async")).note == "async"
            assert (await client.annotate_trial(trial_id, user_attrs={"tag": "a"})).user_attrs == {"tag": "a"}
            with pytest.raises(ValidationError) as refused:  # merged, the attributes pass the cap
                for i in range(3):
                    await client.annotate_trial(trial_id, user_attrs={f"{i}-{k}": "v" * 90 for k in range(50)})
            assert refused.value.errors[0].path == "user_attrs"
            with pytest.raises(NotFoundError):
                await client.annotate_trial("0" * 32, note="nobody's")

    asyncio.run(run())


def _invoke(args: list[str], server: Server, key: str) -> Any:
    result = CliRunner().invoke(cli_app, args, env={"NAS_URL": server.url, "NAS_API_KEY": key})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_cli_note_sets_and_shows_a_job_or_trial_note(server: Server, key: str, job_and_trial: tuple[str, str]) -> None:
    job_id, trial_id = job_and_trial
    result = _invoke(["note", job_id, "baseline\nsecond line", "--attr", "seed=2", "--attr", "tag=best"], server, key)
    assert result.exit_code == 0, result.output
    assert f"job {job_id}: note and attributes saved" in result.stderr
    assert result.stdout.splitlines() == ["baseline", "second line", "seed=2", "tag=best"]
    assert server.store.get_job(job_id).user_attrs == {"seed": 2, "tag": "best"}

    result = _invoke(["note", trial_id, "rerun", "--attr", "ok=true"], server, key)
    assert result.exit_code == 0, result.output
    assert f"trial {trial_id}: note and attributes saved" in result.stderr
    trial = server.store.get_trial(trial_id)
    assert (trial.note, trial.user_attrs) == ("rerun", {"ok": True})

    shown = _invoke(["note", trial_id, "--json"], server, key)
    assert json.loads(shown.stdout)["note"] == "rerun"
    removed = _invoke(["note", job_id, "--attr", "seed=null"], server, key)
    assert removed.stdout.splitlines()[-1] == "tag=best"


def test_cli_note_errors_name_the_problem(server: Server, key: str, job_and_trial: tuple[str, str]) -> None:
    job_id, _ = job_and_trial
    bad = _invoke(["note", job_id, "--attr", "novalue"], server, key)
    assert bad.exit_code != 0 and "key=value" in bad.output
    missing = _invoke(["note", "f" * 32, "text"], server, key)
    assert missing.exit_code != 0 and "not found" in missing.stderr
    long = _invoke(["note", job_id, "x" * (MAX_ANNOTATION + 1)], server, key)
    assert long.exit_code != 0 and f"note: String should have at most {MAX_ANNOTATION} characters" in long.stderr
    assert "validation error for" not in long.stderr  # said by field, not as pydantic's report
