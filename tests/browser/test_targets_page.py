"""The targets page and a trial's "measured by" line, in real headless Chromium against the real app
on a socket (tests.sdk_server).

An agent registers over HTTP with an agent key, as ``nas agent`` does (``POST /api/v1/agents``),
which creates its target: the page lists the target with its online agent and the agent's hardware
and runtime, and says the target is not calibrated with the command that calibrates it. While the
page is open a trial's model is queued for the target and a real ``nas agent --once`` on this
machine registers, times it under ONNX Runtime and reports: the page follows the queue, the new
agent and its finished measurement without a reload, and shows an agent that has not called for
ten minutes as offline. The trial, ended as the runner ends a trial an agent measured, names the
agent, its runtime and the target on its page.

With ``NAS_SCREENSHOTS=docs/screenshots`` the run also retakes the targets page screenshot of
docs/dashboard.md.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import onnxruntime
import pytest
from sqlalchemy import update

from nas.specs import JobSpec, TrialState
from nas.store.store import AGENT_KEY
from nas.store.tables import AgentRow, utcnow
from tests.sdk_server import SPEC, Server
from workers.agent_tasks import latency_metrics, measured_by, queue_measurement

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = [pytest.mark.browser]

SCREENSHOTS = os.environ.get("NAS_SCREENSHOTS")
OWNER = "alice"
TARGET = "lab-pi"
BOARD = {
    "cpu": "Cortex-A76", "cores": 4, "memory_gb": 7.9, "os": "Linux 6.6.51-v8+", "machine": "aarch64",
    "python": "3.11.2", "accelerator": None,
}
ORT = {"name": "onnxruntime", "version": onnxruntime.__version__, "device": "cpu"}


def cells(tab: Any) -> list[str]:
    """The texts of the target's row in the targets table."""
    return tab.locator(f'#targets-table tr[data-target="{TARGET}"] td').all_inner_texts()


def agent_row(tab: Any, agent_id: str) -> Any:
    return tab.locator(f'[id="agents-{TARGET}"] tr[data-agent="{agent_id}"]')


def wait_for_cell(tab: Any, column: int, text: str) -> None:
    """Until the target row's ``column`` (1-based) reads ``text``: the page asks every few seconds."""
    tab.wait_for_function(
        "([target, column, text]) => document.querySelector("
        "`#targets-table tr[data-target='${target}'] td:nth-child(${column})`)?.innerText === text",
        arg=[TARGET, column, text],
    )


def test_the_targets_page_follows_an_agent_target_and_a_trial_names_the_agent_that_measured_it(
    server: Server, page: tuple[Any, Console], sign_in: Callable[[str, str], None], tmp_path: Path
) -> None:
    from torch import nn

    from nas.latency.timers import module_to_onnx

    store = server.store
    key = store.create_api_key(OWNER)
    agent_key = store.create_api_key(OWNER, kind=AGENT_KEY)
    answer = httpx.post(
        f"{server.url}/api/v1/agents", headers={"Authorization": f"Bearer {agent_key}"},
        json={"target": TARGET, "name": "pi-1", "hardware": BOARD, "runtimes": [ORT], "concurrency": 1},
    )
    assert answer.status_code == 201, answer.text
    board_id = answer.json()["id"]

    tab, console = page
    sign_in(server.url, key)
    tab.click("#nav >> text=Targets")
    tab.wait_for_selector(f'#targets-table tr[data-target="{TARGET}"]')
    assert tab.locator("#nav a.active").inner_text() == "Targets"
    name, kind, runtimes, online, queued, predictor = cells(tab)
    assert name.splitlines() == [TARGET, "Cortex-A76"]  # described by its online agent's CPU
    assert kind.splitlines() == ["agent", OWNER]
    assert runtimes == "onnxruntime"
    assert (online, queued) == ("1 / 1", "0")
    assert predictor.splitlines()[0] == "not calibrated"
    assert f"nas hardware calibrate --target {TARGET} --quick" in predictor

    board = agent_row(tab, board_id)
    assert board.locator(".agent-name").inner_text() == "pi-1"
    assert board.locator(".badge-online").inner_text().lower() == "online"
    assert board.locator(".last-seen").inner_text().endswith(" s ago")
    assert board.locator(".hardware").inner_text() == "Cortex-A76 · 4 cores · 7.9 GB · no accelerator"
    assert f"onnxruntime {ORT['version']}" in board.inner_text()

    # the new-job form offers the agent target beside the server's own
    tab.goto(f"{server.url}/#/new")
    tab.wait_for_selector("#f-target")
    assert tab.locator("#f-target option").all_inner_texts()[-1] == TARGET
    tab.select_option("#f-target", TARGET)
    assert "agent target: 1 of 1 agents online" in tab.locator("[data-loc='target'] .help").inner_text()
    tab.goto(f"{server.url}/#/targets")
    tab.wait_for_selector(f'#targets-table tr[data-target="{TARGET}"]')

    # a running trial's model waits in the target's queue, as the runner queues it
    job = store.create_job(JobSpec.model_validate({**SPEC, "name": "measured on lab-pi"}), OWNER)
    while (claimed := store.claim_job("test-runner", 60)) != job.id:
        assert claimed is not None
    trial = store.create_trial(job.id, {"depth": 2, "width_0": 32})
    store.start_trial(trial.id, attempt=1)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    task = queue_measurement(
        store, server.settings, store.measurements.target(OWNER, TARGET), "trial", "onnxruntime",
        module_to_onnx(model, (64,)), (64,), trial_id=trial.id, payload={},
    )  # fmt: skip
    wait_for_cell(tab, 5, "1")

    # pi-1 only says it is there; a real agent on this machine takes the task, times it and stops
    agent = subprocess.run(
        ["nas", "agent", "--url", server.url, "--key", agent_key, "--target", TARGET, "--name", "bench-1",
         "--runtime", "onnxruntime", "--home", str(tmp_path / "agent"), "--once", "--poll", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert agent.returncode == 0, agent.stderr
    task = store.measurements.task(task.id)
    assert task.state == "done"
    bench_id = task.result["agent_id"]
    agent_row(tab, bench_id).wait_for()
    wait_for_cell(tab, 4, "2 / 2")
    wait_for_cell(tab, 5, "0")
    bench = agent_row(tab, bench_id)
    assert bench.locator(".agent-name").inner_text() == "bench-1"
    assert bench.locator("td").nth(4).inner_text() == "1"  # measurements done
    assert bench.locator("td").nth(3).inner_text() == "0 / 1"  # leased / concurrency

    # an agent silent for longer than three lease periods is shown offline
    with store.engine.begin() as connection:
        connection.execute(update(AgentRow).where(AgentRow.id == board_id).values(last_seen_at=utcnow() - timedelta(minutes=10)))
    board.locator(".badge-offline").wait_for()
    assert board.locator(".last-seen").inner_text() == "10 min ago"
    wait_for_cell(tab, 4, "1 / 2")
    if SCREENSHOTS:
        bottom = tab.locator("#agent-cards").bounding_box()
        assert bottom is not None
        tab.screenshot(path=str(Path(SCREENSHOTS) / "targets.png"), clip={
            "x": 0, "y": 0, "width": 1440, "height": bottom["y"] + bottom["height"] + 24})  # fmt: skip

    # the trial ends as the runner ends it once an agent has reported
    store.finish_trial(
        trial.id, TrialState.complete, metrics={"accuracy": 0.91, **latency_metrics(task)},
        outputs={"measured_by": measured_by(TARGET, task)},
    )  # fmt: skip
    tab.goto(f"{server.url}/#/trials/{trial.id}")
    line = tab.locator("#measured-by")
    line.wait_for()
    assert line.inner_text() == f"measured by bench-1 (onnxruntime {ORT['version']}) on {TARGET}"
    assert "core" in (line.get_attribute("title") or "")  # the agent's hardware on hover
    line.locator("a").click()
    tab.wait_for_selector(f'#targets-table tr[data-target="{TARGET}"]')
    assert console.errors == []
