"""Job control from the ``nas`` CLI against the real API on a localhost port (clone with changes,
raise a budget, delete, who am I), and ``nas serve --demo`` restarted as a user would."""

from __future__ import annotations

import asyncio
import re
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from nas.cli import ExitCode
from nas.cli import app as cli_app
from nas.client import AsyncClient, Client, NotFoundError
from nas.specs import JobStatus
from nas.store import Principal
from tests.sdk_server import SPEC, Server
from benchmarks.server_process import ServerProcess

# the fixtures `server`, `owner` and `key`


def _invoke(args: list[str], server: Server, key: str) -> Any:
    result = CliRunner().invoke(cli_app, args, env={"NAS_URL": server.url, "NAS_API_KEY": key})
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_submit_from_a_job_clones_its_spec_with_the_changes(server: Server, key: str, tmp_path: Path) -> None:
    with Client(server.url, key) as client:
        original = client.submit({**SPEC, "budget": {"max_trials": 3, "max_concurrent": 1}})
        changes = tmp_path / "changes.yaml"
        changes.write_text(yaml.safe_dump({"name": "wider", "budget": {"max_trials": 5}}))

        result = _invoke(["submit", "--from", original.id, str(changes)], server, key)
        assert result.exit_code == 0, result.output
        clone = client.job(result.stdout.strip())
        assert clone.id != original.id and clone.name == "wider"
        assert clone.spec["budget"] == {**original.spec["budget"], "max_trials": 5}  # the rest of the budget kept
        assert {k: v for k, v in clone.spec.items() if k not in ("name", "budget")} == {
            k: v for k, v in original.spec.items() if k not in ("name", "budget")
        }

        same = client.job(_invoke(["submit", "--from", original.id], server, key).stdout.strip())
        assert same.spec == original.spec and same.id not in (original.id, clone.id)
        sdk = client.clone_job(original.id, strategy={"name": "tpe"})  # another plug-in: its params start afresh
        assert sdk.spec["strategy"]["name"] == "tpe" and sdk.spec["budget"] == original.spec["budget"]
    neither = _invoke(["submit"], server, key)
    assert neither.exit_code == ExitCode.USAGE and "--from JOB" in neither.stderr


def test_extend_and_rm(server: Server, key: str, owner: str) -> None:
    with Client(server.url, key) as client:
        job = client.submit({**SPEC, "budget": {"max_trials": 2}})
    server.store.finish_job(job.id, JobStatus.cancelled, "cancelled by its owner")

    raised = _invoke(["extend", job.id, "--trials", "4"], server, key)
    assert raised.exit_code == 0, raised.output
    assert f"job {job.id} queued: max_trials 4" in raised.stderr
    assert server.store.get_job(job.id).spec["budget"]["max_trials"] == 4
    lowered = _invoke(["extend", job.id, "--trials", "3"], server, key)
    assert lowered.exit_code == ExitCode.USAGE and "can only be raised: it is 4, not 3" in lowered.stderr
    assert _invoke(["extend", job.id], server, key).exit_code == ExitCode.USAGE

    refused = _invoke(["rm", job.id], server, key)
    assert refused.exit_code == ExitCode.JOB_FAILED and "cancel it first" in refused.stderr
    assert _invoke(["cancel", job.id], server, key).exit_code == 0
    removed = _invoke(["rm", job.id], server, key)
    assert removed.exit_code == 0 and f"deleted job {job.id}" in removed.stderr
    assert server.store.list_jobs(Principal(owner))[0] == []
    assert _invoke(["rm", job.id], server, key).exit_code == ExitCode.NOT_FOUND


def test_whoami(server: Server, key: str, owner: str) -> None:
    result = _invoke(["whoami"], server, key)
    assert result.exit_code == 0 and result.stdout.strip() == owner
    admin = server.store.create_api_key(f"{owner}-admin", is_admin=True)
    assert _invoke(["whoami"], server, admin).stdout.strip() == f"{owner}-admin (admin)"


def test_the_async_client_controls_jobs_as_the_client_does(server: Server, key: str, owner: str) -> None:
    async def control() -> None:
        async with AsyncClient(server.url, key) as client:
            assert (await client.whoami()).owner == owner
            job = await client.submit({**SPEC, "budget": {"max_trials": 2}})
            clone = await client.clone_job(job.id, name="clone", budget={"max_trials": 3})
            assert clone.name == "clone" and clone.spec["budget"] == {**job.spec["budget"], "max_trials": 3}
            raised = await client.extend_job(clone.id, max_trials=4)
            assert raised.spec["budget"]["max_trials"] == 4 and raised.status is JobStatus.queued
            await client.cancel(job.id)
            await client.delete_job(job.id)
            with pytest.raises(NotFoundError):
                await client.job(job.id)

    asyncio.run(control())


def test_serve_demo_reuses_its_key_and_job_on_restart(tmp_path: Path, data_dir: Path) -> None:
    server = ServerProcess(tmp_path, {"NAS_DATA_DIR": str(data_dir)})
    found = []
    try:
        for start in range(2):
            if start:
                server.stop()
            server.start("--demo", "--max-jobs", "0")  # no dispatcher: the demo job stays queued
            match = re.search(r"demo job (\w+) submitted.*NAS_API_KEY=(\S+)", server.log(), re.DOTALL)
            assert match, server.log()[-3000:]
            found.append(match.groups())
        job_id, key = found[0]
        jobs = server.cli("jobs", "--json", api_key=key)
        assert [j["id"] for j in yaml.safe_load(jobs.stdout)] == [job_id]
    finally:
        server.stop()
    assert found[0] == found[1]
    assert "by an earlier start" in server.log()
    assert (tmp_path / "demo-key").read_text().strip() == key
    assert stat.S_IMODE((tmp_path / "demo-key").stat().st_mode) == 0o600
    keys = server.cli("keys", "list", "--json")
    assert keys.returncode == 0, keys.stderr
    assert [k["owner"] for k in yaml.safe_load(keys.stdout)].count("demo") == 1
