"""A trial's log on its dashboard page, in real headless Chromium against the real app on a socket
(tests.sdk_server): a failed trial shows what it logged and its traceback as text (markup in it
stays text), and a trial its job's cancel request ended before it ran says it has none.

The trials are ended in the store as the runner ends them, with the log their worker sent. With
``NAS_SCREENSHOTS=docs/screenshots`` the run also retakes the log card's screenshot in docs/dashboard.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nas.specs import JobSpec, TrialState
from tests.sdk_server import SPEC, Server

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = [pytest.mark.browser]

SCREENSHOTS = os.environ.get("NAS_SCREENSHOTS")

LOG = (
    "2026-12-04 10:00:00,000 INFO workers.trainable: trial 3 (attempt 1) on node 5f1c0e2a: "
    "{'depth': 2, 'width_0': 256, 'width_1': 0, 'activation': 'relu'}\n"
    "2026-12-04 10:00:01,210 INFO workers.trainable: epoch 1: train_loss 1.92, val_loss 1.41, val_accuracy 0.6183, "
    "sparsity 0.9, epoch_time_s 0.0911\n"
    "WARNING /srv/nas/sparse/magnitude.py:88: UserWarning: layer <fc1> has no weights left to prune\n"
    "Traceback (most recent call last):\n"
    '  File "/srv/workers/trainable.py", line 56, in train_trial\n'
    '    outcome = strategy.run_trial(spec, config["arch"], data_dir, report, config.get("parent_model"))\n'
    '  File "/srv/nas/training.py", line 87, in run_trial\n'
    "    model = space.build(arch, data.input_shape, data.num_classes)\n"
    "ValueError: width_1 = 0: a hidden layer needs at least one unit\n"
)


def test_a_failed_trial_page_shows_its_log_and_a_trial_that_never_ran_says_why_it_has_none(
    server: Server, owner: str, key: str, page: tuple[Any, Console], sign_in: Callable[[str, str], None]
) -> None:
    store = server.store
    job = store.create_job(JobSpec.model_validate({**SPEC, "name": "log-job"}), owner)
    while (claimed := store.claim_job("test-runner", 60)) != job.id:
        assert claimed is not None
    failed = store.create_trial(job.id, {"depth": 2})
    store.start_trial(failed.id, attempt=1)
    store.finish_trial(failed.id, TrialState.failed, error="ValueError: width_1 = 0: a hidden layer needs at least one unit", log=LOG)
    waiting = store.create_trial(job.id, {"depth": 3})
    store.request_cancel(job.id)

    tab, console = page
    sign_in(server.url, key)
    tab.goto(f"{server.url}/#/trials/{failed.id}")
    tab.wait_for_selector("#trial-log:not([hidden])")
    assert tab.locator(".title-row .badge-failed").count() == 1
    assert tab.inner_text("#trial-log") == LOG
    assert tab.locator("#trial-log fc1").count() == 0  # markup in a log stays text
    if SCREENSHOTS:
        tab.locator("#card-log").screenshot(path=str(Path(SCREENSHOTS) / "trial-log.png"))

    tab.goto(f"{server.url}/#/trials/{waiting.id}")
    tab.wait_for_url(re.compile(re.escape(waiting.id)))
    tab.wait_for_selector(".title-row .badge-cancelled")
    tab.wait_for_function("() => document.querySelector('#trial-log-note').textContent.includes('never ran')")
    assert tab.locator("#trial-log").is_hidden()
    assert console.errors == []
