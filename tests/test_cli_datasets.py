"""``nas datasets`` against the real API served by uvicorn on a localhost port: what scripts read
on stdout, the messages on stderr, the exit codes."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from typer.testing import CliRunner

from nas.cli import ExitCode
from nas.cli import app as cli_app
from tests.dataset_files import FEATURES, blobs, csv_file, image_zip, npz_file
from tests.sdk_server import SPEC, Server, serve

# the fixtures `owner` and `key`


@pytest.fixture(scope="module")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("data-root")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_root: Path) -> Iterator[Server]:
    yield from serve(tmp_path_factory.mktemp("cli-datasets-server"), data_roots=(data_root,))


@pytest.fixture
def env(server: Server, key: str) -> dict[str, str]:
    return {"NAS_URL": server.url, "NAS_API_KEY": key}


def nas(env: dict[str, str], *args: str) -> Any:
    result = CliRunner().invoke(cli_app, ["datasets", *args], env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def test_upload_list_show_rm(server: Server, env: dict[str, str], owner: str, tmp_path: Path) -> None:
    path = npz_file(tmp_path / "blobs.npz")
    uploaded = nas(env, "upload", str(path), "--name", "blobs", "--test-fraction", "0.25", "--split-seed", "7")
    assert uploaded.exit_code == 0, uploaded.stderr
    dataset_id = uploaded.stdout.strip().splitlines()[-1]  # the id, last, for scripts
    said = f"dataset 'blobs': {dataset_id} (npz, {FEATURES}, 3 classes, 45 train and 15 test examples)"
    assert said in uploaded.stderr

    again = nas(env, "upload", str(path), "--test-fraction", "0.25", "--split-seed", "7", "--json")
    assert again.exit_code == 0 and json.loads(again.stdout)["id"] == dataset_id  # stored once

    table = nas(env, "upload", str(csv_file(tmp_path / "plants.csv")), "--label-column", "species")
    images = nas(env, "upload", str(image_zip(tmp_path / "colours.zip")), "--image-size", "10", "--color", "grayscale")
    assert table.exit_code == 0 and images.exit_code == 0, table.stderr + images.stderr
    images_id = images.stdout.strip()
    assert "(images, 1x10x10, 2 classes" in images.stderr

    listed = nas(env, "list")
    assert listed.exit_code == 0
    for expected in (dataset_id[:8], images_id[:8], "blobs", "plants", "1x10x10", "images", "csv"):
        assert expected in listed.stdout  # ids cut to their shortest unique prefix
    as_json = json.loads(nas(env, "list", "--json").stdout)
    assert [d["id"] for d in as_json] == [images_id, table.stdout.strip(), dataset_id]
    assert as_json[0]["input_shape"] == [1, 10, 10] and as_json[0]["options"]["color"] == "grayscale"

    shown = nas(env, "show", images_id)
    assert shown.exit_code == 0
    for expected in (images_id, owner, "1x10x10", "image_size=10", "color=grayscale", "split at upload", "red",
                     "blue"):
        assert expected in shown.stdout
    assert json.loads(nas(env, "show", dataset_id, "--json").stdout)["options"]["split_seed"] == 7

    removed = nas(env, "rm", dataset_id)
    assert removed.exit_code == 0 and f"deleted dataset {dataset_id}" in removed.stderr and removed.stdout == ""
    gone = nas(env, "show", dataset_id)
    assert gone.exit_code == ExitCode.NOT_FOUND and "not found" in gone.stderr
    assert nas(env, "rm", dataset_id).exit_code == ExitCode.NOT_FOUND


def test_register(env: dict[str, str], data_root: Path, owner: str, tmp_path: Path) -> None:
    inside = npz_file(data_root / f"{owner}.npz")
    registered = nas(env, "register", str(inside), "--name", "big")
    assert registered.exit_code == 0, registered.stderr
    assert "dataset 'big'" in registered.stderr
    shown = json.loads(nas(env, "show", registered.stdout.strip(), "--json").stdout)
    assert shown["source"] == "path" and Path(shown["path"]) == inside

    outside = nas(env, "register", str(npz_file(tmp_path / "elsewhere.npz")))
    assert outside.exit_code == ExitCode.USAGE and "path:" in outside.stderr and outside.stdout == ""


def test_refusals_and_exit_codes(server: Server, env: dict[str, str], tmp_path: Path) -> None:
    x, y = blobs()
    bad = npz_file(tmp_path / "infinite.npz", x=np.where(x > 2, np.inf, x), y=y)
    refused = nas(env, "upload", str(bad))
    assert refused.exit_code == ExitCode.USAGE and refused.stdout == ""
    assert "HTTP 422" in refused.stderr and "file:" in refused.stderr and "inf" in refused.stderr.lower()

    assert nas(env, "upload", str(tmp_path / "absent.npz")).exit_code == ExitCode.USAGE
    assert nas(env, "upload", str(bad), "--color", "purple").exit_code == ExitCode.USAGE
    assert nas({**env, "NAS_API_KEY": "nas_nope"}, "list").exit_code == ExitCode.AUTH
    assert nas({**env, "NAS_URL": "http://127.0.0.1:9"}, "list").exit_code == ExitCode.SERVER
    assert nas(env, "show", "f" * 32).exit_code == ExitCode.NOT_FOUND


def test_rm_is_refused_while_a_queued_job_uses_it(env: dict[str, str], server: Server, key: str,
                                                  tmp_path: Path) -> None:
    from nas.client import Client

    dataset_id = nas(env, "upload", str(npz_file(tmp_path / "blobs.npz"))).stdout.strip()
    with Client(url=server.url, api_key=key) as client:
        job = client.submit({**SPEC, "dataset": {"name": "upload", "params": {"id": dataset_id}}})
        refused = nas(env, "rm", dataset_id)
        assert refused.exit_code == ExitCode.JOB_FAILED and "409" in refused.stderr
        client.cancel(job.id)
    assert nas(env, "rm", dataset_id).exit_code == 0
