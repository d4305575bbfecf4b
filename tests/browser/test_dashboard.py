"""The dashboard in real headless Chromium against a real ``nas serve``, as a researcher uses it.

Debian's chromium is driven by Playwright (``conftest.py``). One server runs a tiny
digits job submitted through the form: the test signs in, is refused a bad key, sees browser-side
and server-side validation errors beside their fields, submits, watches trials arrive without a
reload, opens a trial, downloads its model, and is sent back to sign-in when its key stops working.
The page must log no console error it did not provoke.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from safetensors.numpy import load_file

from benchmarks.server_process import ServerProcess

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = [pytest.mark.browser, pytest.mark.ray]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Iterator[tuple[ServerProcess, str]]:
    home = tmp_path_factory.mktemp("dashboard-home")
    process = ServerProcess(home, {"NAS_DATA_DIR": str(data_dir)})
    key = process.create_key("alice")
    process.start()
    yield process, key
    process.stop()


def test_submit_watch_open_and_download(server: tuple[ServerProcess, str], page: tuple[Any, Console], tmp_path: Path) -> None:
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    process, key = server
    tab, console = page

    # a wrong key keeps the user on the sign-in page, with the server's reason
    tab.goto(process.url)
    tab.wait_for_url(re.compile(r"#/signin$"))
    console.allowed = True
    tab.fill("#api-key", "nas_not-a-key")
    tab.click("button[type=submit]")
    tab.wait_for_selector("#signin-message:not([hidden])")
    assert "invalid or revoked" in tab.inner_text("#signin-message")
    console.allowed = False
    assert tab.evaluate("() => sessionStorage.getItem('nas.apiKey')") is None

    tab.fill("#api-key", key)
    tab.click("button[type=submit]")
    tab.wait_for_selector("#jobs-table")
    assert tab.evaluate("() => localStorage.length") == 0  # the key lives in sessionStorage only

    # the form, generated from the catalog
    tab.click("text=New job")
    tab.wait_for_selector("#submit-job")
    tab.fill("#f-name", "browser e2e")
    tab.fill("#f-search_space-params-max_depth", "1")
    tab.fill("#f-search_space-params-width_choices", "16, 32")
    tab.fill("#f-sparsifier-params-sparsity", "0.8")
    tab.fill("#f-training-epochs", "2")
    tab.fill("#f-training-batch_size", "64")
    tab.fill("#f-training-lr", "0.01")
    tab.fill("#f-budget-max_concurrent", "2")

    # the browser refuses what the schema forbids, beside the field
    tab.fill("#f-budget-max_trials", "0")
    tab.click("#submit-job")
    error = tab.locator(".field-error[data-loc='budget.max_trials']")
    assert "≥ 1" in error.inner_text()
    assert tab.url.endswith("#/new")

    # the API refuses what only it can check (two objectives on one metric), beside the field
    tab.fill("#f-budget-max_trials", "3")
    tab.select_option("select[name='objectives.1.metric']", "accuracy")
    console.allowed = True
    tab.click("#submit-job")
    objectives_error = tab.locator(".field-error[data-loc='objectives']")
    objectives_error.wait_for()
    tab.wait_for_function("() => document.querySelector(\".field-error[data-loc='objectives']\").textContent.length > 0")
    assert "repeat" in objectives_error.inner_text()
    console.allowed = False
    tab.select_option("select[name='objectives.1.metric']", "latency_ms")

    tab.click("#submit-job")
    tab.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job_id = tab.url.rsplit("/", 1)[1]
    tab.evaluate("() => { window.__sameDocument = true; }")

    # trials arrive over server-sent events: no reload, no polling by the test
    def state() -> str:
        """What the page and the server show, for a failure message."""
        page_text = tab.inner_text("main")[:2000]
        return f"page:\n{page_text}\nserver log:\n{process.log()[-4000:]}"

    try:
        tab.wait_for_selector("#trials-table tbody tr[data-id]", timeout=240_000)
        tab.wait_for_selector("#trials-table .badge-complete", timeout=300_000)
        assert tab.evaluate("() => window.__sameDocument") is True
        tab.wait_for_selector(".title-row .badge-succeeded, .title-row .badge-failed", timeout=600_000)
    except PlaywrightTimeout:
        pytest.fail(f"the job did not finish on the page\n{state()}")
    assert tab.locator(".title-row .badge-succeeded").count() == 1, state()
    tab.wait_for_function("() => document.querySelectorAll('#trials-table .badge-complete').length === 3", timeout=30_000)
    assert tab.evaluate("() => window.__sameDocument") is True
    assert "3 / 3" in tab.inner_text(".kpis")
    # the charts drew
    tab.wait_for_function("() => performance.getEntriesByName('nas:charts-ready').length > 0")
    assert tab.locator("#chart-pareto canvas").count() == 2

    # a trial, its layers and its model
    tab.locator("#trials-table tbody tr[data-id] a.mono").first.click()
    tab.wait_for_url(re.compile(r"#/trials/[0-9a-f]+$"))
    tab.wait_for_selector("#layers-table tbody tr")
    assert tab.locator("#layers-table tbody tr").count() == 2  # one hidden layer and the classifier
    assert "%" in tab.inner_text(".kpis")
    with tab.expect_download() as download_info:
        tab.click("#download-safetensors")
    path = tmp_path / "model.safetensors"
    download_info.value.save_as(path)
    tensors = load_file(path)
    assert any(name.endswith("weight") for name in tensors), list(tensors)
    assert "Downloaded" in tab.inner_text("#download-message")
    assert "stored dense with" in tab.inner_text("#model-note")  # says what ONNX cannot run sparse
    with tab.expect_download() as download_info:
        tab.click("#download-report")
    path = tmp_path / "report.json"
    download_info.value.save_as(path)
    report = json.loads(path.read_text())
    assert sorted(entry["layer"] for entry in report["layers"]) == sorted(n for n in tensors if n.endswith(".weight"))
    assert report["onnx"]["latency_ms"] > 0

    # back to the job through the breadcrumb, still signed in
    tab.click(f".crumbs a[href='#/jobs/{job_id}']")
    tab.wait_for_selector("#trials-table tbody tr[data-id]")

    assert console.errors == []


def test_a_key_that_stops_working_returns_to_sign_in(
    server: tuple[ServerProcess, str], page: tuple[Any, Console], sign_in: Callable[[str, str], None]
) -> None:
    process, key = server
    tab, console = page
    sign_in(process.url, key)
    tab.evaluate("() => sessionStorage.setItem('nas.apiKey', 'nas_revoked-or-expired')")
    console.allowed = True
    tab.evaluate("() => { location.hash = '#/new'; }")  # the next call (or the event stream's) is refused
    tab.wait_for_url(re.compile(r"#/signin$"))
    tab.wait_for_selector("#signin-message:not([hidden])")
    assert "Signed out" in tab.inner_text("#signin-message")
    assert tab.evaluate("() => sessionStorage.getItem('nas.apiKey')") is None
    console.allowed = False
    assert console.errors == []
