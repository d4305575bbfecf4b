"""The ``nas`` CLI against the real API served by uvicorn on a localhost port: output, JSON,
exit codes and stderr messages as scripts see them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from nas.cli import ExitCode
from nas.cli import app as cli_app
from nas.client import Client
from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Principal, Store, make_engine
from nas.store.engine import current_revision
from tests.sdk_server import SPEC, Server, complete_trial, model_bytes, store_model

# the fixtures `server`, `owner` and `key`


@pytest.fixture
def cli_env(server: Server, key: str) -> dict[str, str]:
    return {"NAS_URL": server.url, "NAS_API_KEY": key, "NAS_DATABASE_URL": server.database_url}


def _invoke(args: list[str], env: dict[str, str]) -> Any:
    result = CliRunner().invoke(cli_app, args, env=env)
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result


def _spec_file(tmp_path: Path, **overrides: Any) -> Path:
    path = tmp_path / f"{overrides.get('name', 'spec')}.yaml"
    path.write_text(yaml.safe_dump({**SPEC, **overrides}))
    return path


# -- admin -------------------------------------------------------------------------------------


def test_cli_keys_create(server: Server, cli_env: dict[str, str]) -> None:
    result = _invoke(["keys", "create", "carol"], cli_env)
    assert result.exit_code == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("nas_") and " " not in key
    assert server.store.authenticate(key).owner == "carol"
    assert server.store.authenticate(key).is_admin is False
    with Client(url=server.url, api_key=key) as carol:
        assert list(carol.jobs()) == []

    admin = _invoke(["keys", "create", "root", "--admin"], cli_env)
    admin_key = admin.stdout.strip().splitlines()[-1]
    assert server.store.authenticate(admin_key).is_admin is True


def test_cli_db_upgrade_and_keys_on_a_fresh_database(empty_database_url: str) -> None:
    env = {"NAS_DATABASE_URL": empty_database_url}
    result = _invoke(["db", "upgrade"], env)
    assert result.exit_code == 0, result.output
    engine = make_engine(empty_database_url)
    try:
        head = current_revision(engine)
        assert head is not None and head in result.stdout
        again = _invoke(["db", "upgrade"], env)  # idempotent
        assert again.exit_code == 0 and head in again.stdout

        created = _invoke(["keys", "create", "dave"], env)
        assert created.exit_code == 0
        key = created.stdout.strip().splitlines()[-1]
        assert Store(engine).authenticate(key).owner == "dave"
    finally:
        engine.dispose()


# -- jobs and trials -----------------------------------------------------------------------------


def test_cli_submit_jobs_trials_cancel(server: Server, cli_env: dict[str, str], tmp_path: Path) -> None:
    submitted = _invoke(["submit", str(_spec_file(tmp_path, name="cli-job"))], cli_env)
    assert submitted.exit_code == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    job = server.store.get_job(job_id)
    assert job.name == "cli-job" and job.status is JobStatus.queued
    assert job_id in submitted.stderr and "cli-job" in submitted.stderr

    listed = _invoke(["jobs"], cli_env)
    assert listed.exit_code == 0
    assert job_id[:8] in listed.stdout and job_id not in listed.stdout  # the shortest unique prefix, 8 at least
    assert "cli-job" in listed.stdout and "queued" in listed.stdout

    trial = complete_trial(server.store, job_id, accuracy=0.875, sparsity=0.9, nonzero_params=17230.0)
    pending = server.store.create_trial(job_id, {"depth": 3})
    trials = _invoke(["trials", job_id], cli_env)
    assert trials.exit_code == 0, trials.stderr
    assert trial.id[:8] in trials.stdout and pending.id[:8] in trials.stdout
    assert "0.875" in trials.stdout and "complete" in trials.stdout
    assert "17230" in trials.stdout and "e+04" not in trials.stdout  # an integer metric prints whole
    only_queued = _invoke(["trials", job_id, "--state", "queued"], cli_env)
    assert pending.id[:8] in only_queued.stdout and trial.id[:8] not in only_queued.stdout
    front = _invoke(["trials", job_id, "--pareto"], cli_env)
    assert trial.id[:8] in front.stdout and pending.id[:8] not in front.stdout

    cancelled = _invoke(["cancel", job_id], cli_env)
    assert cancelled.exit_code == 0
    assert "cancelled" in cancelled.stderr
    assert server.store.get_job(job_id).status is JobStatus.cancelled

    again = _invoke(["cancel", job_id], cli_env)
    assert again.exit_code == ExitCode.JOB_FAILED == 1
    assert "409" in again.stderr and "cancelled" in again.stderr and again.stdout == ""


def test_cli_logs_prints_a_trial_log_and_says_why_there_is_none(server: Server, cli_env: dict[str, str], owner: str) -> None:
    with Client(url=server.url, api_key=cli_env["NAS_API_KEY"]) as client:
        job_id = client.submit(SPEC).id
    store = server.store
    store.claim_job("runner", lease_s=30)
    failed = store.create_trial(job_id, {"depth": 1})
    store.start_trial(failed.id)
    log = "INFO epoch 1: accuracy 0.5\n\x1b[31mred\x1b[0m\nTraceback (most recent call last):\nValueError: bad width\n"
    store.finish_trial(failed.id, TrialState.failed, error="ValueError: bad width", log=log)
    waiting = store.create_trial(job_id, {"depth": 2})

    printed = _invoke(["logs", failed.id], cli_env)
    assert printed.exit_code == 0, printed.stderr
    assert printed.stdout.splitlines() == [
        "INFO epoch 1: accuracy 0.5", "\\x1b[31mred\\x1b[0m", "Traceback (most recent call last):", "ValueError: bad width",
    ]  # a terminal escape in the log is shown, not replayed
    assert _invoke(["logs", failed.id[:8]], cli_env).stdout == printed.stdout  # a unique prefix

    none_yet = _invoke(["logs", waiting.id], cli_env)
    assert none_yet.exit_code == ExitCode.NOT_FOUND == 4
    assert "has not run yet" in none_yet.stderr and none_yet.stdout == ""
    unknown = _invoke(["logs", "f" * 32], cli_env)
    assert unknown.exit_code == ExitCode.NOT_FOUND and "not found" in unknown.stderr


def test_cli_json_output(server: Server, cli_env: dict[str, str], tmp_path: Path) -> None:
    submitted = _invoke(["submit", str(_spec_file(tmp_path, name="json-job")), "--json"], cli_env)
    assert submitted.exit_code == 0, submitted.stderr
    job = json.loads(submitted.stdout)
    assert job["name"] == "json-job" and job["status"] == "queued" and job["spec"]["budget"]["max_trials"] == 3

    jobs = json.loads(_invoke(["jobs", "--json"], cli_env).stdout)
    assert [j["id"] for j in jobs] == [job["id"]]
    assert json.loads(_invoke(["jobs", "--status", "running", "--json"], cli_env).stdout) == []

    trial = complete_trial(server.store, job["id"], accuracy=0.5, sparsity=0.75)
    trials = json.loads(_invoke(["trials", job["id"], "--json"], cli_env).stdout)
    assert [(t["id"], t["state"], t["metrics"]) for t in trials] == [(trial.id, "complete", {"accuracy": 0.5, "sparsity": 0.75})]
    assert [t["id"] for t in json.loads(_invoke(["trials", job["id"], "--pareto", "--json"], cli_env).stdout)] == [trial.id]

    cancelled = json.loads(_invoke(["cancel", job["id"], "--json"], cli_env).stdout)
    assert cancelled["status"] == "cancelled"


def test_cli_exit_codes_and_stderr(server: Server, cli_env: dict[str, str], tmp_path: Path) -> None:
    bad_key = _invoke(["jobs"], {**cli_env, "NAS_API_KEY": "nas_nope"})
    assert bad_key.exit_code == ExitCode.AUTH == 3
    assert "401" in bad_key.stderr and "invalid" in bad_key.stderr
    assert bad_key.stdout.strip() == ""

    unknown = _invoke(["trials", "f" * 32], cli_env)
    assert unknown.exit_code == ExitCode.NOT_FOUND == 4 and "not found" in unknown.stderr

    invalid = _invoke(["submit", str(_spec_file(tmp_path, training={"epochs": 0}, search_space={"name": "nowhere"}))],
                      cli_env)
    assert invalid.exit_code == ExitCode.USAGE == 2
    assert "training.epochs" in invalid.stderr and "search_space.name" in invalid.stderr and invalid.stdout == ""

    broken = tmp_path / "broken.yaml"
    broken.write_text("- just\n- a list\n")
    assert _invoke(["submit", str(broken)], cli_env).exit_code == ExitCode.USAGE
    missing = _invoke(["submit", str(tmp_path / "absent.yaml")], cli_env)
    assert missing.exit_code == ExitCode.USAGE
    assert _invoke(["export", "t" * 32, "--format", "pickle"], cli_env).exit_code == ExitCode.USAGE

    unreachable = _invoke(["jobs"], {**cli_env, "NAS_URL": "http://127.0.0.1:9"})
    assert unreachable.exit_code == ExitCode.SERVER == 5 and "cannot reach" in unreachable.stderr

    server.faults.arm(1, status=500)
    failing = _invoke(["jobs"], cli_env)
    assert failing.exit_code == ExitCode.SERVER and "500" in failing.stderr


# -- architecture columns, CSV and id prefixes -----------------------------------------------------


def test_cli_trials_show_architecture_columns_and_csv(server: Server, cli_env: dict[str, str], tmp_path: Path) -> None:
    job_id = _invoke(["submit", str(_spec_file(tmp_path))], cli_env).stdout.strip()
    for arch, accuracy in (({"depth": 1, "width_0": 64, "activation": "relu"}, 0.5),
                           ({"depth": 2, "width_0": 128, "width_1": 32, "activation": "gelu"}, 0.75)):
        trial = server.store.create_trial(job_id, arch)
        server.store.start_trial(trial.id)
        server.store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": accuracy})
    table = _invoke(["trials", job_id], cli_env)
    assert table.exit_code == 0, table.stderr
    header = next(line for line in table.stdout.splitlines() if "state" in line)
    assert re.search(r"depth.*width_0.*width_1.*activation", header), header
    assert "gelu" in table.stdout and "128" in table.stdout


    as_csv = _invoke(["trials", job_id[:6], "--csv"], cli_env)
    assert as_csv.exit_code == 0, as_csv.stderr
    lines = as_csv.stdout.splitlines()
    assert lines[0].startswith("id,number,state,arch.depth,arch.width_0,arch.width_1,arch.activation,accuracy,")
    assert len(lines) == 3 and ",gelu,0.75," in lines[2]
    assert _invoke(["trials", job_id, "--csv", "--json"], cli_env).exit_code == ExitCode.USAGE

    server.store.create_trial(job_id, {f"op_{i}": "conv" for i in range(14)})  # a cell-based space's dozens of keys
    capped = _invoke(["trials", job_id], cli_env)
    assert "op_7" in capped.stdout and "op_8" not in capped.stdout and "the first 12 of 18" in capped.stderr


def test_cli_ids_fit_a_narrow_terminal_and_copied_prefixes_work(
    server: Server, cli_env: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from nas import cli
    from nas.cli import short_ids

    job_id = _invoke(["submit", str(_spec_file(tmp_path))], cli_env).stdout.strip()
    trial = complete_trial(server.store, job_id, accuracy=0.9)
    payload = model_bytes()
    store_model(server, trial, payload)
    monkeypatch.setattr(cli.out, "width", 60)  # a narrow terminal
    listed = _invoke(["trials", job_id], cli_env)
    monkeypatch.undo()
    shown = short_ids([trial.id])[trial.id]
    assert shown in listed.stdout and len(shown) >= 8  # whole, not cut to "c354a3…", however narrow
    assert [t["id"] for t in json.loads(_invoke(["trials", job_id, "--json"], cli_env).stdout)] == [trial.id]

    prefix = job_id[:8]
    assert _invoke(["trials", prefix], cli_env).exit_code == 0
    exported = _invoke(["export", shown, "-f", "safetensors", "-o", str(tmp_path / "m.safetensors")], cli_env)
    assert exported.exit_code == 0, exported.stderr
    assert (tmp_path / "m.safetensors").read_bytes() == payload
    logs = _invoke(["logs", shown], cli_env)  # found by its prefix: the answer names the whole id
    assert logs.exit_code == ExitCode.NOT_FOUND and f"trial {trial.id} has no log" in logs.stderr
    cancelled = _invoke(["cancel", prefix], cli_env)
    assert cancelled.exit_code == 0 and job_id in cancelled.stderr

    assert short_ids(["abcdef1234", "abcdef1299"]) == {"abcdef1234": "abcdef123", "abcdef1299": "abcdef129"}


def test_cli_an_ambiguous_prefix_errors_saying_how_many_match(
    server: Server, cli_env: dict[str, str], owner: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    prefix = uuid.uuid4().hex[:8]
    handed = iter([prefix + "1" * 24, prefix + "2" * 24])
    monkeypatch.setattr("nas.store.store._new_id", lambda: next(handed))  # two ids that share 8 digits
    for _ in range(2):
        server.store.create_job(JobSpec.model_validate(SPEC), owner)
    monkeypatch.undo()
    for args in (["trials", prefix], ["cancel", prefix]):
        result = _invoke(args, cli_env)
        assert result.exit_code == ExitCode.USAGE and "matches 2 jobs" in result.stderr, result.stderr
    assert _invoke(["trials", prefix + "1"], cli_env).exit_code == 0


# -- submit --wait -------------------------------------------------------------------------------


def _run_job_when_submitted(store: Store, owner: str, outcome: JobStatus) -> threading.Thread:
    """Play the dispatcher for the owner's next job: run it, finish two trials, end it as ``outcome``."""

    def run() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            jobs, _ = store.list_jobs(Principal(owner), JobStatus.queued)
            if jobs:
                break
            time.sleep(0.02)
        job_id = jobs[0].id
        while (claimed := store.claim_job("test-runner", 60)) != job_id:  # older queued jobs go first
            assert claimed is not None
        time.sleep(0.2)
        best = complete_trial(store, job_id, accuracy=0.75)
        store.set_best_trial(job_id, best.id)
        time.sleep(0.2)
        if outcome is JobStatus.cancelled:
            store.request_cancel(job_id)
        else:
            failed = store.create_trial(job_id, {"n": 2})
            store.start_trial(failed.id)
            store.finish_trial(failed.id, TrialState.failed, error="boom")
        store.finish_job(job_id, outcome, error=None if outcome is JobStatus.succeeded else "it went wrong")

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.mark.parametrize("outcome", [JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled])
def test_cli_submit_wait(server: Server, cli_env: dict[str, str], owner: str, tmp_path: Path,
                         outcome: JobStatus) -> None:
    runner = _run_job_when_submitted(server.store, owner, outcome)
    result = _invoke(["submit", str(_spec_file(tmp_path, budget={"max_trials": 2})), "--wait", "--poll", "0.1"],
                     cli_env)
    runner.join(10)
    job_id = result.stdout.strip().splitlines()[0]
    assert server.store.get_job(job_id).status is outcome
    assert result.exit_code == (ExitCode.OK if outcome is JobStatus.succeeded else ExitCode.JOB_FAILED), result.stderr
    # Not a terminal: one plain line per change, fit for a log.
    assert f"job {job_id} running: 0/2 trials finished" in result.stderr
    assert "1/2 trials finished, best accuracy 0.75" in result.stderr, result.stderr
    assert f"job {job_id} {outcome.value}" in result.stderr

    runner = _run_job_when_submitted(server.store, owner, JobStatus.succeeded)
    as_json = _invoke(["submit", str(_spec_file(tmp_path)), "--wait", "--poll", "0.1", "--json"], cli_env)
    runner.join(10)
    assert as_json.exit_code == 0 and json.loads(as_json.stdout)["status"] == "succeeded"


def test_cli_submit_wait_shows_a_live_progress_bar_on_a_terminal(server: Server, cli_env: dict[str, str],
                                                                 owner: str, tmp_path: Path, nas_script: str) -> None:
    """The real `nas` command with its stderr on a pseudo-terminal, as a user at a shell sees it."""
    import pty

    runner = _run_job_when_submitted(server.store, owner, JobStatus.succeeded)
    leader, follower = pty.openpty()
    env = {**os.environ, **cli_env, "COLUMNS": "120", "TERM": "xterm"}
    with subprocess.Popen([nas_script, "submit", str(_spec_file(tmp_path)), "--wait", "--poll", "0.1"],
                          env=env, stdout=subprocess.PIPE, stderr=follower) as process:
        os.close(follower)
        screen = b""
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            screen += chunk
        stdout = process.stdout.read().decode()
        assert process.wait(60) == 0, screen.decode(errors="replace")
    os.close(leader)
    runner.join(10)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen.decode(errors="replace"))  # colours and cursor moves
    assert "━" in text and "client-test [running]" in text and "1/3 trials" in text and "best accuracy 0.75" in text
    assert stdout.strip() and stdout.strip() in text  # the id goes to stdout; the display to the terminal


# -- export and open -----------------------------------------------------------------------------


def test_cli_export(server: Server, cli_env: dict[str, str], tmp_path: Path, torch_single_thread: None) -> None:
    from nas.export import run_onnx
    from nas.training import load_trained_model

    job_id = _invoke(["submit", str(_spec_file(tmp_path))], cli_env).stdout.strip()
    trial = complete_trial(server.store, job_id, accuracy=0.9)
    without = _invoke(["export", trial.id, "-o", str(tmp_path / "none.onnx")], cli_env)
    assert without.exit_code == ExitCode.NOT_FOUND and "has no model: its model was not stored" in without.stderr

    payload = model_bytes()
    store_model(server, trial, payload)
    target = tmp_path / "out" / "model.safetensors"
    target.parent.mkdir()
    saved = _invoke(["export", trial.id, "--format", "safetensors", "-o", str(target)], cli_env)
    assert saved.exit_code == 0, saved.stderr
    assert saved.stdout.strip() == str(target) and target.read_bytes() == payload

    onnx = _invoke(["export", trial.id, "--format", "onnx", "-o", str(tmp_path / "m.onnx"), "--json"], cli_env)
    assert onnx.exit_code == 0, onnx.stderr
    report = json.loads(onnx.stdout)
    assert report == {"trial_id": trial.id, "format": "onnx", "path": str(tmp_path / "m.onnx"),
                      "bytes": (tmp_path / "m.onnx").stat().st_size}

    import numpy as np
    import torch

    x = torch.rand(4, 1, 8, 8)
    with torch.no_grad():
        expected = load_trained_model(payload)(x).numpy()
    np.testing.assert_allclose(run_onnx((tmp_path / "m.onnx").read_bytes(), x.numpy()), expected, rtol=1e-3, atol=1e-4)

    os.chdir(tmp_path / "out")  # the default name, in the current folder
    default = _invoke(["export", trial.id, "-f", "onnx"], cli_env)
    assert Path(default.stdout.strip()) == tmp_path / "out" / f"trial-{trial.id}.onnx"

    bundle = _invoke(["export", trial.id, "-f", "inference", "--report", str(tmp_path / "r.json"), "--json"], cli_env)
    assert bundle.exit_code == 0, bundle.stderr
    written = json.loads(bundle.stdout)
    assert written["path"] == str(tmp_path / "out" / f"trial-{trial.id}.inference.safetensors")
    assert written["report"] == str(tmp_path / "r.json")
    layers = json.loads((tmp_path / "r.json").read_text())["layers"]
    assert [entry["layer"] for entry in layers] == [layer["name"] for layer in model_layers(payload)]
    from nas.export import load_inference_model

    with torch.no_grad():
        np.testing.assert_allclose(load_inference_model(Path(written["path"]))(x).numpy(), expected, rtol=1e-4, atol=1e-5)


def model_layers(payload: bytes) -> list[dict[str, Any]]:
    from nas.sparse.stats import layer_report
    from nas.training import load_trained_model

    return layer_report(load_trained_model(payload))


def test_cli_open(server: Server, cli_env: dict[str, str], tmp_path: Path) -> None:
    job_id = "a" * 32
    printed = _invoke(["open", job_id], cli_env)
    assert printed.exit_code == 0 and printed.stdout.strip() == f"{server.url}/#/jobs/{job_id}"
    assert json.loads(_invoke(["open", job_id, "--json"], cli_env).stdout)["url"] == f"{server.url}/#/jobs/{job_id}"

    opened = tmp_path / "opened.txt"
    browser = f"{sys.executable} -c \"import sys, pathlib; pathlib.Path(sys.argv[1]).write_text(sys.argv[2])\" {opened} %s"
    result = _invoke(["open", job_id, "--browser"], {**cli_env, "BROWSER": browser})
    assert result.exit_code == 0
    assert opened.read_text() == f"{server.url}/#/jobs/{job_id}"


# -- the installed console script ----------------------------------------------------------------


@pytest.fixture(scope="module")
def nas_script() -> str:
    script = shutil.which("nas") or str(Path(sys.executable).with_name("nas"))
    if not Path(script).exists():
        pytest.fail("the `nas` console script is not installed; run `pip install -e .`")
    return script


def test_console_script_end_to_end(server: Server, nas_script: str, tmp_path: Path) -> None:
    """The installed `nas` command in a real process: mint a key, submit with it, fail with a bad one."""
    env = {**os.environ, "NAS_URL": server.url, "NAS_DATABASE_URL": server.database_url, "NO_COLOR": "1"}
    env.pop("NAS_API_KEY", None)
    created = subprocess.run([nas_script, "keys", "create", "erin"], env=env, capture_output=True, text=True, timeout=120)
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[-1]
    assert created.stdout.strip() == key  # the key alone on stdout; the explanation goes to stderr
    assert server.store.authenticate(key).owner == "erin"

    submitted = subprocess.run([nas_script, "submit", str(_spec_file(tmp_path))], env={**env, "NAS_API_KEY": key},
                               capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert server.store.get_job(job_id).owner == "erin"

    refused = subprocess.run([nas_script, "cancel", job_id], env={**env, "NAS_API_KEY": "nas_bad"},
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == ExitCode.AUTH
    assert "invalid" in refused.stderr and refused.stdout == ""


def test_cli_import_is_light() -> None:
    """Client commands start fast: the server's commands (and torch, ray) load only when run."""
    code = (
        "import sys, nas.cli\n"
        "print(','.join(m for m in ('torch', 'ray', 'fastapi', 'sqlalchemy', 'onnx') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""
    listed = CliRunner().invoke(cli_app, ["--help"])
    assert "serve" in listed.stdout and "dispatch" in listed.stdout  # still listed, and loaded then
