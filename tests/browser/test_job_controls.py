"""Job control in real headless Chromium against the real app on a socket (tests.sdk_server): a job
cloned into the new-job form, edited and submitted as a new job; a finished job's budget raised
from its page (it is queued again); a job deleted after a confirm; who is signed in, in the header.

With ``NAS_SCREENSHOTS=docs/screenshots`` the run also retakes the screenshots of the clone form
and the job controls in docs/dashboard.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from nas.client import Client, NotFoundError
from nas.specs import JobStatus
from tests.sdk_server import SPEC, Server

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = [pytest.mark.browser]

SCREENSHOTS = os.environ.get("NAS_SCREENSHOTS")


def shoot(tab: Any, selector: str, name: str) -> None:
    if SCREENSHOTS:
        tab.locator(selector).screenshot(path=str(Path(SCREENSHOTS) / name))


def test_clone_with_edits_extend_and_delete(
    server: Server, key: str, owner: str, page: tuple[Any, Console], sign_in: Callable[[str, str], None]
) -> None:
    from playwright.sync_api import expect

    tab, console = page
    with Client(server.url, key) as client:
        original = client.submit({**SPEC, "name": "original", "budget": {"max_trials": 3, "max_concurrent": 1}})
        client.cancel(original.id)  # finished: it can be extended (queued again) and deleted
    sign_in(server.url, key)
    assert tab.inner_text("#owner") == f"Signed in as {owner}"
    # The job page's analysis card asks for parameter importance, which answers 422 while a job
    # has fewer than two complete trials, as these jobs do.
    console.allowed = True

    # Clone: the job's spec fills the new-job form; the edits make a new job.
    tab.goto(f"{server.url}/#/jobs/{original.id}")
    tab.click("#clone-job")
    tab.wait_for_url(re.compile(rf"#/new\?from={original.id}$"))
    tab.wait_for_selector("#clone-source")
    assert tab.input_value("#f-name") == "original"
    assert tab.input_value("#f-budget-max_trials") == "3"
    tab.fill("#f-name", "edited")
    tab.fill("#f-budget-max_trials", "5")
    expect(tab.locator("#spec-preview")).to_contain_text('"edited"')  # the preview follows the edits
    if SCREENSHOTS:
        tab.evaluate("window.scrollTo(0, 0)")
        tab.screenshot(path=str(Path(SCREENSHOTS) / "clone-job.png"))
    tab.click("#submit-job")
    tab.wait_for_url(re.compile(r"#/jobs/(?!" + original.id + r")[0-9a-f]{32}$"))
    clone_id = tab.url.rsplit("/", 1)[-1]
    with Client(server.url, key) as client:
        clone = client.job(clone_id)
    assert clone.name == "edited" and clone.spec["budget"] == {**original.spec["budget"], "max_trials": 5}
    assert {k: v for k, v in clone.spec.items() if k not in ("name", "budget")} == {
        k: v for k, v in original.spec.items() if k not in ("name", "budget")
    }
    assert tab.is_hidden("#delete-job")  # a queued job is cancelled before it is deleted

    # Extend the finished original: it is queued again with the larger budget.
    tab.goto(f"{server.url}/#/jobs/{original.id}")
    tab.click("#extend-job")
    assert tab.input_value("#extend-trials") == "3"
    tab.fill("#extend-trials", "6")
    shoot(tab, ".job-head", "job-controls.png")
    tab.click("#extend-submit")
    tab.wait_for_selector(".title-row .badge:has-text('queued')")
    with Client(server.url, key) as client:
        extended = client.job(original.id)
        assert extended.status is JobStatus.queued and extended.spec["budget"]["max_trials"] == 6
        client.cancel(original.id)

    # Delete, after the confirm.
    tab.reload()
    tab.wait_for_selector("#delete-job:visible")
    dialogs: list[str] = []
    tab.once("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.accept()))
    tab.click("#delete-job")
    tab.wait_for_url(re.compile(r"#/jobs$"))
    assert dialogs and "Delete job \"original\"" in dialogs[0]
    with Client(server.url, key) as client, pytest.raises(NotFoundError):
        client.job(original.id)
    assert console.errors == []


def test_the_header_says_who_is_signed_in(
    server: Server, owner: str, page: tuple[Any, Console], sign_in: Callable[[str, str], None]
) -> None:
    tab, console = page
    admin = server.store.create_api_key(f"{owner}-admin", is_admin=True)
    sign_in(server.url, admin)
    tab.wait_for_selector("#owner .chip")
    assert tab.inner_text("#owner").split() == ["Signed", "in", "as", f"{owner}-admin", "admin"]
    tab.click("#signout")
    tab.wait_for_url(re.compile(r"#/signin$"))
    assert tab.is_hidden("#session")
    assert console.errors == []
