"""The job page's charts watched live in real headless Chromium, from before a job's first trial
completes to its end, against a real ``nas serve`` and ``nas dispatch`` (local Ray).

The server runs no dispatcher of its own: each job is submitted and its page opened while it is
still queued, and only then does a dispatcher start, so the page sees zero trials first whatever
the machine's speed.

The charts are canvases; each publishes what it drew in ``data-axes`` (axis titles, domains, the
labelled ticks with their boxes, the points each layer drew), which is what these checks read: the
Pareto x axis moves to measured latency once a complete trial has it and plots every complete
trial; the hypervolume chart's tick labels never overlap, with one point or many; the history's
trial-number ticks are distinct integers; the learning curves end on the best five trials by the
first objective.

With ``NAS_SCREENSHOTS=docs/screenshots`` the run also retakes the job and trial page screenshots
of docs/dashboard.md.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from benchmarks.server_process import ServerProcess

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = [pytest.mark.browser, pytest.mark.ray]

TRIALS = 6  # more than the five best the learning curves show
SPEC: dict[str, Any] = {
    "name": "live charts",
    "search_space": {"name": "sparse_mlp", "params": {"max_depth": 2, "width_choices": [16, 32, 64]}},
    "strategy": {"name": "random"},
    "dataset": {"name": "digits"},
    "sparsifier": {"name": "magnitude", "params": {"sparsity": 0.8}},
    "training": {"epochs": 2, "batch_size": 64, "lr": 0.01},
    "objectives": [{"metric": "accuracy", "direction": "maximize"}, {"metric": "latency_ms", "direction": "minimize"}],
    "seed": 3,
}
AXES = "(id) => { const c = document.querySelector(`#${id} canvas[data-axes]`); return c ? JSON.parse(c.dataset.axes) : null; }"
POINTS = (
    "([id, layer, n]) => { const c = document.querySelector(`#${id} canvas[data-axes]`);"
    " return c !== null && JSON.parse(c.dataset.axes).layers[layer].points === n; }"
)
SCREENSHOTS = os.environ.get("NAS_SCREENSHOTS")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[ServerProcess, str]]:
    home = tmp_path_factory.mktemp("live-charts-home")
    process = ServerProcess(home, {"NAS_DATA_DIR": str(data_dir)})
    key = process.create_key("carol")
    process.start("--max-jobs", "0")
    yield process, key
    process.stop()


@contextmanager
def dispatching(process: ServerProcess) -> Iterator[None]:
    """A ``nas dispatch`` running the server's queued jobs while the block runs; drained after it."""
    with open(process.home / "dispatch.log", "ab") as log:
        dispatcher = subprocess.Popen(
            ["nas", "dispatch", "--max-jobs", "1"], env=process.env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            yield
        finally:
            dispatcher.terminate()
            try:
                dispatcher.wait(120)
            except subprocess.TimeoutExpired:
                dispatcher.kill()
                dispatcher.wait(30)


def overlaps(ticks: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Pairs of tick labels whose boxes ([left, top, right, bottom]) intersect."""
    found = []
    for k, a in enumerate(ticks):
        for b in ticks[k + 1:]:
            (al, at, ar, ab), (bl, bt, br, bb) = a["box"], b["box"]
            if al < br and bl < ar and at < bb and bt < ab:
                found.append((a["text"], b["text"]))
    return found


def check_readable(axes: dict[str, Any]) -> None:
    """Every axis has labelled ticks, distinct and apart, inside a domain that is not empty."""
    for name in ("x", "y"):
        axis = axes[name]
        texts = [t["text"] for t in axis["ticks"]]
        assert texts, f"{name} axis without tick labels: {axis}"
        assert len(set(texts)) == len(texts), f"{name} axis repeats a label: {texts}"
        assert not overlaps(axis["ticks"]), f"{name} tick labels overlap: {overlaps(axis['ticks'])}"
        assert axis["max"] > axis["min"], axis


def check_integer_axis(axis: dict[str, Any]) -> None:
    """Ticks of a whole-number axis (trial number, epoch): integers, each once, printed whole."""
    values = [t["value"] for t in axis["ticks"]]
    assert values and all(float(v).is_integer() for v in values), values
    assert len(set(values)) == len(values), values
    assert [t["text"] for t in axis["ticks"]] == [str(int(v)) for v in values], axis["ticks"]


def test_charts_follow_jobs_live_from_zero_trials_to_their_end(
    server: tuple[ServerProcess, str], page: tuple[Any, Console], sign_in: Callable[[str, str], None]
) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    process, key = server
    tab, console = page
    http = httpx.Client(base_url=f"{process.url}/api/v1", headers={"Authorization": f"Bearer {key}"}, timeout=30)

    def shoot(selector: str, name: str) -> None:
        if SCREENSHOTS:
            tab.locator(selector).screenshot(path=str(Path(SCREENSHOTS) / name))

    def watch(trials: int) -> list[dict[str, Any]]:
        """Submit a job of ``trials`` trials, open its page at once, check the charts are empty while
        no trial is complete, and wait for the job to succeed; its complete trials."""
        response = http.post("/jobs", json={**SPEC, "budget": {"max_trials": trials, "max_concurrent": 1}})
        assert response.status_code == 201, response.text
        job_id = response.json()["id"]
        tab.evaluate("(id) => { location.hash = `#/jobs/${id}`; }", job_id)
        for chart in ("chart-pareto", "chart-history", "chart-hypervolume"):
            tab.wait_for_selector(f"#{chart} .chart-empty")
        assert http.get(f"/jobs/{job_id}").json()["status"] == "queued"
        assert "No complete trial yet" in tab.inner_text("#chart-pareto")
        with dispatching(process):
            try:
                tab.wait_for_selector(".title-row .badge-succeeded", timeout=600_000)
            except PlaywrightTimeout:
                log = (process.home / "dispatch.log").read_text(errors="replace")[-4000:]
                pytest.fail(f"the job did not succeed on the page\npage:\n{tab.inner_text('main')[:2000]}\ndispatcher:\n{log}")
        items = http.get(f"/jobs/{job_id}/trials", params={"limit": 100}).json()["items"]
        complete = [t for t in items if t["state"] == "complete"]
        assert len(complete) == trials, [t["state"] for t in items]
        # every complete trial plotted, on measured latency (the x choice moved off predicted latency)
        tab.wait_for_function(POINTS, arg=["chart-pareto", 0, trials], timeout=60_000)
        pareto = tab.evaluate(AXES, "chart-pareto")
        assert pareto["x"]["label"].startswith("Latency (measured)"), pareto["x"]
        assert tab.input_value("#card-pareto select") == "latency_ms"
        check_readable(pareto)
        tab.wait_for_function(POINTS, arg=["chart-history", 0, trials], timeout=60_000)
        history = tab.evaluate(AXES, "chart-history")
        check_readable(history)
        check_integer_axis(history["x"])
        # the hypervolume draws a point per trial that grew the front, and the last trial
        hv_items = http.get(f"/jobs/{job_id}/hypervolume").json()["items"]
        tab.wait_for_function(POINTS, arg=["chart-hypervolume", 1, len(hv_items)], timeout=60_000)
        hypervolume = tab.evaluate(AXES, "chart-hypervolume")
        check_readable(hypervolume)
        finished = [item["finished_at"] for item in hv_items]
        assert hypervolume["x"]["min"] <= min(finished) <= max(finished) <= hypervolume["x"]["max"]
        return complete

    sign_in(process.url, key)

    # one trial: every chart has a single point, on axes that still read
    (only,) = watch(1)
    hypervolume = tab.evaluate(AXES, "chart-hypervolume")
    assert hypervolume["x"]["max"] - hypervolume["x"]["min"] <= 600, "one point gets minutes of time axis, not years"
    assert [t["value"] for t in tab.evaluate(AXES, "chart-history")["x"]["ticks"]] == [only["number"]]
    shoot(".grid-2:has(#card-pareto)", "job-one-trial.png")

    # six trials: the learning curves end on the best five by the first objective, not the first five
    complete = watch(TRIALS)
    # ranked as the server ranks the objective: on the metric the registry says selection uses
    registry = {m["name"]: m for m in http.get("/catalog").json()["metrics"]}
    ranked_on = registry["accuracy"].get("selected_on") or "accuracy"
    score = {f"#{t['number']}": t["metrics"][ranked_on] for t in complete}
    ranked = sorted(score, key=lambda n: -score[n])
    legend = "() => [...document.querySelectorAll('#chart-curves .scatter-legend > span')].map((row) => row.innerText.trim())"
    best = [n for n in ranked if score[n] >= score[ranked[4]]]  # ties with the fifth count as best five
    try:
        tab.wait_for_function(
            f"(best) => {{ const shown = ({legend})(); return shown.length === 5 && shown.every((s) => best.includes(s)); }}",
            arg=best, timeout=30_000,
        )
    except PlaywrightTimeout:
        pytest.fail(f"the learning curves show {tab.evaluate(legend)}, not five of {best} ({score})")
    curves = tab.evaluate(AXES, "chart-curves")
    assert curves["y"]["label"] == registry[ranked_on]["label"], curves["y"]  # the epochs report what selection ranks
    assert [layer["points"] for layer in curves["layers"]] == [SPEC["training"]["epochs"]] * 10, curves["layers"]
    check_readable(curves)
    check_integer_axis(curves["x"])
    shoot(".grid-2:has(#card-pareto)", "job.png")

    # the best trial's own learning curve reads the same way
    top = max(complete, key=lambda t: t["metrics"][ranked_on])
    tab.evaluate("(id) => { location.hash = `#/trials/${id}`; }", top["id"])
    tab.wait_for_selector("#layers-table tbody tr")
    tab.wait_for_selector("#chart-epochs canvas[data-axes]")
    epochs = tab.evaluate(AXES, "chart-epochs")
    assert epochs["y"]["label"] == registry[ranked_on]["label"], epochs["y"]
    check_readable(epochs)
    check_integer_axis(epochs["x"])
    if SCREENSHOTS:
        tab.wait_for_selector("#chart-latency canvas[data-axes]")
        tab.screenshot(path=str(Path(SCREENSHOTS) / "trial.png"), full_page=True)

    # the analysis card asks for parameter importance, which the server refuses (422, shown in the
    # card) while fewer than two trials are complete; nothing else may log an error
    assert [e for e in console.errors if "status of 422" not in e] == []
