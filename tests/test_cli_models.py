"""``nas models`` against the real API served by uvicorn on a localhost port: what scripts read on
stdout, the messages on stderr, the exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from nas.cli import ExitCode
from nas.cli import app as cli_app
from tests.model_files import cnn, graph_model, onnx_bytes
from tests.sdk_server import SPEC, Server, serve

# the fixtures `owner` and `key`


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("cli-models-server"))


@pytest.fixture
def env(server: Server, key: str) -> dict[str, str]:
    return {"NAS_URL": server.url, "NAS_API_KEY": key}


def nas(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(cli_app, ["models", *args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_upload_list_show_rm(server: Server, env: dict[str, str], owner: str, tmp_path: Path) -> None:
    path = tmp_path / "digits-cnn.onnx"
    path.write_bytes(onnx_bytes(cnn()))
    uploaded = nas(env, "upload", str(path), "--name", "digits")
    assert uploaded.exit_code == 0, uploaded.stderr
    model_id = uploaded.stdout.strip().splitlines()[-1]  # the id, last, for scripts
    assert f"model 'digits': {model_id} (input 1x8x8, 10 outputs, 3818 parameters, 3 prunable layers, dense cpu " in uploaded.stderr
    again = nas(env, "upload", str(path), "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["id"] == model_id  # stored once

    listed = nas(env, "list")
    assert listed.exit_code == 0 and all(text in listed.stdout for text in (model_id[:8], "digits", "1x8x8", "3818"))
    assert [m["id"] for m in json.loads(nas(env, "list", "--json").stdout)] == [model_id]

    shown = nas(env, "show", model_id)
    assert shown.exit_code == 0
    for expected in (model_id, owner, "1x8x8", "conv", "linear", "10x256", "8x1x3x3", "pytorch"):
        assert expected in shown.stdout
    assert json.loads(nas(env, "show", model_id, "--json").stdout)["layers"][2]["shape"] == [10, 256]

    with_job = json.loads(json.dumps(SPEC))
    with_job["search_space"] = {"name": "model_sparsity", "params": {"model_id": model_id}}
    from nas.client import Client

    with Client(url=server.url, api_key=env["NAS_API_KEY"]) as client:
        job = client.submit(with_job)
        refused = nas(env, "rm", model_id)
        assert refused.exit_code == ExitCode.JOB_FAILED and "409" in refused.stderr
        client.cancel(job.id)
    removed = nas(env, "rm", model_id)
    assert removed.exit_code == 0 and f"deleted model {model_id}" in removed.stderr and removed.stdout == ""
    gone = nas(env, "show", model_id)
    assert gone.exit_code == ExitCode.NOT_FOUND and "not found" in gone.stderr


def test_refusals_and_exit_codes(env: dict[str, str], tmp_path: Path) -> None:
    from onnx import helper

    bad = tmp_path / "wave.onnx"
    bad.write_bytes(graph_model([helper.make_node("Sin", ["x"], ["y"], name="wave")]).SerializeToString())
    refused = nas(env, "upload", str(bad))
    assert refused.exit_code == ExitCode.USAGE and refused.stdout == ""
    assert "HTTP 422" in refused.stderr and "unsupported operator Sin" in refused.stderr
    assert nas(env, "upload", str(tmp_path / "absent.onnx")).exit_code == ExitCode.USAGE
    assert nas({**env, "NAS_API_KEY": "nas_nope"}, "list").exit_code == ExitCode.AUTH
    assert nas(env, "show", "f" * 32).exit_code == ExitCode.NOT_FOUND
