"""The trials table shows each architecture key as a column, sorts and filters on them like metrics,
and says what is wrong with a filter typo; in real headless Chromium against a real ``nas serve``.

The server runs no dispatcher (``--max-jobs 0``, no Ray): the test writes the trials a runner would
into the server's own database, so their architectures are known.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from nas.settings import Settings
from nas.specs import TrialState
from nas.store import Store, make_engine
from tests.sdk_server import SPEC
from benchmarks.server_process import ServerProcess

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = pytest.mark.browser

ARCHS = [
    {"depth": 1, "width_0": 64, "activation": "relu"},
    {"depth": 2, "width_0": 128, "width_1": 32, "activation": "gelu"},
    {"depth": 3, "width_0": 256, "width_1": 64, "width_2": 16, "activation": "relu"},
    {"depth": 2, "width_0": 32, "width_1": 256, "activation": "tanh"},
]


@pytest.fixture(scope="module")
def job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str, str]]:
    home = tmp_path_factory.mktemp("arch-table-home")
    process = ServerProcess(home, {})
    key = process.create_key("alice")
    process.start("--max-jobs", "0")
    response = httpx.post(f"{process.url}/api/v1/jobs", json=SPEC, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    store = Store(make_engine(Settings(home=home).database_url))
    for n, arch in enumerate(ARCHS):
        trial = store.create_trial(job_id, arch)
        store.start_trial(trial.id)
        store.finish_trial(trial.id, TrialState.complete, metrics={"accuracy": 0.5 + n / 10, "latency_ms": 1.0 + n, "sparsity": 0.9})
    store.engine.dispose()
    yield process, key, job_id
    process.stop()


def shown_numbers(tab: Any) -> list[int]:
    return tab.eval_on_selector_all("#trials-table tbody tr[data-id]", "rows => rows.map((r) => Number(r.dataset.number))")


def test_architecture_columns_sort_filter_and_a_typo_says_why(
    job: tuple[ServerProcess, str, str], page: tuple[Any, Console], sign_in: Callable[[str, str], None]
) -> None:
    process, key, job_id = job
    tab, console = page
    sign_in(process.url, key)
    tab.goto(f"{process.url}/#/jobs/{job_id}")
    tab.wait_for_selector("#trials-table tbody tr[data-id]")

    headers = tab.eval_on_selector_all("#trials-table th[data-sort^='arch.']", "ths => ths.map((th) => th.dataset.sort)")
    assert headers == ["arch.depth", "arch.width_0", "arch.width_1", "arch.width_2", "arch.activation"]
    row = tab.locator("#trials-table tbody tr[data-number='1']")
    assert "gelu" in row.inner_text() and "128" in row.inner_text()

    tab.click("#trials-table th[data-sort='arch.width_0']")
    tab.wait_for_selector("#trials-table th[data-sort='arch.width_0'][aria-sort='ascending']")
    assert shown_numbers(tab) == [3, 0, 1, 2]  # width_0 32, 64, 128, 256

    tab.fill("#trial-filter", "depth=2")
    tab.press("#trial-filter", "Enter")
    tab.wait_for_function("() => document.querySelectorAll('#trials-table tbody tr[data-id]').length === 2")
    assert shown_numbers(tab) == [3, 1]
    assert re.search(r"\b2 trials|of 2\b", tab.inner_text("#trials-count"))

    console.allowed = True  # the server's 422 for the typo
    tab.fill("#trial-filter", "acuracy>0.9")
    tab.press("#trial-filter", "Enter")
    tab.wait_for_function("() => document.querySelector('#filter-error').textContent.includes('did you mean accuracy')")
    message = tab.inner_text("#filter-error")
    assert "'acuracy'" in message and "depth" in message and "activation" in message
    assert "invalid" in (tab.get_attribute("#trial-filter", "class") or "")
    console.allowed = False
    assert console.errors == []
