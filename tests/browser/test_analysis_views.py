"""The analysis views in real headless Chromium against the real app on a socket (tests.sdk_server):
parameter importance, parallel coordinates and the slice plot of a finished job, two jobs on one
Pareto plot reached from the jobs list, and a note edited on a trial and a job.

The jobs are finished in the store as a dispatcher would finish them (claimed, trials run and
ended, the job marked succeeded), with architectures whose depth drives accuracy and latency and
whose activation changes nothing, so the importance the page shows has a known answer.

With ``NAS_SCREENSHOTS=docs/screenshots`` the run also retakes the screenshots of these views in
docs/dashboard.md.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nas.specs import JobSpec, JobStatus, TrialState
from nas.store import Store
from tests.sdk_server import SPEC, Server

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = [pytest.mark.browser]

SCREENSHOTS = os.environ.get("NAS_SCREENSHOTS")
OBJECTIVES = [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}]
TRIALS = 30


def finished_job(store: Store, owner: str, name: str, seed: int, gain: float) -> str:
    """A succeeded job of ``TRIALS`` complete trials; deeper networks are more accurate (by ``gain``) and slower."""
    job = store.create_job(JobSpec.model_validate({**SPEC, "name": name, "objectives": OBJECTIVES}), owner)
    while (claimed := store.claim_job("test-runner", 60)) != job.id:
        assert claimed is not None
    rng = random.Random(seed)
    best: tuple[float, str] | None = None
    for _ in range(TRIALS):
        depth = rng.randint(1, 3)
        arch = {"depth": depth, **{f"width_{i}": rng.choice([32, 64]) for i in range(depth)}, "activation": rng.choice(["relu", "gelu"])}
        accuracy = 0.55 + gain * depth + rng.uniform(-0.01, 0.01)
        metrics = {"accuracy": accuracy, "val_accuracy": accuracy, "latency_ms": 0.2 * depth + rng.uniform(0, 0.05), "sparsity": 0.8}
        trial = store.create_trial(job.id, arch)
        store.start_trial(trial.id, attempt=1)
        store.report_epoch(trial.id, 1, {"accuracy": accuracy - 0.05, "val_accuracy": accuracy - 0.05})
        store.finish_trial(trial.id, TrialState.complete, metrics, log="epoch 1 trained\n")
        if best is None or accuracy > best[0]:
            best = (accuracy, trial.id)
    assert best is not None
    store.set_best_trial(job.id, best[1])
    store.finish_job(job.id, JobStatus.succeeded)
    return job.id


def shoot(tab: Any, selector: str, name: str) -> None:
    if SCREENSHOTS:
        tab.locator(selector).screenshot(path=str(Path(SCREENSHOTS) / name))


@pytest.fixture
def signed_in(server: Server, key: str, page: tuple[Any, Console], sign_in: Callable[[str, str], None]) -> Any:
    sign_in(server.url, key)
    return page[0]


def test_importance_parallel_coordinates_and_slice_of_a_finished_job(
    server: Server, owner: str, signed_in: Any, page: tuple[Any, Console]
) -> None:
    tab, console = page
    job_id = finished_job(server.store, owner, "depth matters", seed=1, gain=0.1)
    tab.goto(f"{server.url}/#/jobs/{job_id}")

    tab.wait_for_selector("#importance svg .importance-row")
    ranked = tab.eval_on_selector_all("#importance .importance-row", "(rows) => rows.map((r) => r.dataset.name)")
    assert ranked[0] == "depth" and "activation" in ranked
    assert "fanova over 30 complete trials" in tab.inner_text("#card-importance")
    tab.select_option("select[aria-label='Importance evaluator']", "mdi")
    tab.wait_for_function("() => document.querySelector('#card-importance').innerText.includes('mdi over 30')")
    assert tab.eval_on_selector("#importance .importance-row", "(r) => r.dataset.name") == "depth"

    tab.wait_for_selector("#parallel svg .parcoords-line")
    assert tab.locator("#parallel .parcoords-line").count() == TRIALS
    axes = tab.eval_on_selector_all("#parallel .parcoords-axis", "(gs) => gs.map((g) => [g.dataset.axis, g.dataset.kind])")
    assert ["depth", "numeric"] in axes and ["activation", "categorical"] in axes
    assert [a for a, _ in axes][-2:] == ["val_accuracy", "latency_ms"]  # accuracy on the value selection ranks
    assert {c for a, c in axes if a.startswith("width_")} == {"numeric"}

    tab.select_option("select[aria-label='Slice dimension']", "activation")
    tab.wait_for_selector("#chart-slice canvas")
    assert not console.errors, console.errors
    shoot(tab, "#card-importance", "analysis-importance.png")
    shoot(tab, "#card-slice", "analysis-slice.png")
    shoot(tab, "#card-parallel", "analysis-parallel.png")


def test_two_jobs_compared_on_one_pareto_plot(server: Server, owner: str, signed_in: Any, page: tuple[Any, Console]) -> None:
    tab, console = page
    first = finished_job(server.store, owner, "wide search", seed=2, gain=0.08)
    second = finished_job(server.store, owner, "narrow search", seed=3, gain=0.1)
    tab.goto(f"{server.url}/#/jobs")
    tab.reload()
    tab.wait_for_selector(f"#jobs-table tr[data-id='{second}']")
    assert tab.is_disabled("#compare-jobs")
    for job_id in (first, second):
        tab.check(f"#jobs-table tr[data-id='{job_id}'] input[type=checkbox]")
    tab.click("#compare-jobs")
    tab.wait_for_url(re.compile(r"#/compare\?jobs=[0-9a-f,]+$"))
    assert set(tab.url.rsplit("=", 1)[1].split(",")) == {first, second}

    tab.wait_for_selector("#compare-table tbody tr[data-id]")
    rows = tab.eval_on_selector_all("#compare-table tbody tr", "(rs) => rs.map((r) => [...r.cells].map((c) => c.innerText.trim()))")
    assert [r[0] for r in rows] == ["wide search", "narrow search"]
    assert [r[2] for r in rows] == [str(TRIALS), str(TRIALS)]
    assert all(int(r[3]) >= 1 for r in rows)
    legend = tab.inner_text("#chart-compare .scatter-legend")
    assert "wide search" in legend and "narrow search" in legend
    assert tab.locator("#chart-compare canvas").count() == 2
    assert not console.errors, console.errors
    shoot(tab, "main", "compare.png")


def test_a_note_edited_on_a_trial_and_a_job_is_shown_and_kept(
    server: Server, owner: str, signed_in: Any, page: tuple[Any, Console]
) -> None:
    tab, console = page
    job_id = finished_job(server.store, owner, "annotated", seed=4, gain=0.1)
    trial_id = server.store.list_trials(job_id)[0][0].id
    tab.goto(f"{server.url}/#/trials/{trial_id}")
    tab.wait_for_selector("#card-notes #note-text")
    assert tab.inner_text("#note-text") == "No note."
    tab.click("#note-edit")
    tab.fill("#note-input", "overfits after epoch 2\ncheck the lr")
    tab.fill("#attrs-input", "tag=candidate\nseed=2")
    tab.click("#note-save")
    tab.wait_for_function("() => document.querySelector('#note-text')?.innerText.startsWith('overfits')")
    assert tab.inner_text("#note-attrs").split("\n") == ["tag = candidate", "seed = 2"]
    trial = server.store.get_trial(trial_id)
    assert (trial.note, trial.user_attrs) == ("overfits after epoch 2\ncheck the lr", {"tag": "candidate", "seed": 2})
    shoot(tab, "#card-notes", "notes.png")

    # removing a line removes the attribute; the note survives a reload
    tab.reload()
    tab.wait_for_selector("#note-attrs")
    tab.click("#note-edit")
    tab.fill("#attrs-input", "tag=candidate")
    tab.click("#note-save")
    tab.wait_for_function("() => document.querySelector('#note-attrs')?.innerText === 'tag = candidate'")
    assert server.store.get_trial(trial_id).user_attrs == {"tag": "candidate"}

    tab.goto(f"{server.url}/#/jobs/{job_id}")
    tab.wait_for_selector("#card-importance")  # the job page's: the trial page's notes are gone
    tab.wait_for_selector("#card-notes #note-text")
    tab.click("#note-edit")
    tab.fill("#note-input", "baseline for the paper")
    tab.click("#note-save")
    tab.wait_for_function("() => document.querySelector('#note-text')?.innerText === 'baseline for the paper'")
    assert server.store.get_job(job_id).note == "baseline for the paper"

    # a malformed attribute line is refused on the page, before any request
    tab.click("#note-edit")
    tab.fill("#attrs-input", "no equals sign")
    tab.click("#note-save")
    tab.wait_for_selector("#card-notes .alert-error")
    assert "not key=value" in tab.inner_text("#card-notes .alert-error")
    assert not console.errors, console.errors
