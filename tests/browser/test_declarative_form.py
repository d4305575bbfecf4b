"""A declarative search space built in the new-job form, in real headless Chromium against a real
``nas serve``: blocks are removed, added, given a kind and reordered; a space with a linear block on
an image map is refused beside that block's kind, and the fixed one is accepted. The server runs no
dispatcher (``--max-jobs 0``), so no Ray starts."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from benchmarks.server_process import ServerProcess

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    process = ServerProcess(tmp_path_factory.mktemp("declarative-form-home"), {})
    key = process.create_key("alice")
    process.start("--max-jobs", "0")
    yield process, key
    process.stop()


def test_a_declarative_space_is_built_refused_fixed_and_accepted(
    server: tuple[ServerProcess, str], page: tuple[Any, Console], sign_in: Callable[[str, str], None]
) -> None:
    process, key = server
    tab, console = page
    sign_in(process.url, key)
    tab.click("text=New job")
    tab.wait_for_selector("#submit-job")
    tab.select_option("#f-search_space-name", "declarative")
    blocks = tab.locator(".list-item")
    assert blocks.count() == 5  # the space's default blocks

    while blocks.count() > 1:  # keep the first, a convolution
        tab.click(f"button[aria-label='Remove block {blocks.count()}']")
    tab.fill("#f-search_space-params-blocks-0-widths", "4, 8")
    tab.click("button[aria-label='Add block']")
    tab.select_option("select[aria-label='block 2 kind']", "linear")
    tab.fill("#f-search_space-params-blocks-1-widths", "16")
    tab.click("button[aria-label='Add block']")
    tab.select_option("select[aria-label='block 3 kind']", "flatten")

    # a linear block straight after the convolution: refused beside that block's kind
    console.allowed = True
    tab.click("#submit-job")
    error = tab.locator(".field-error[data-loc='search_space.params.blocks.1.kind']")
    tab.wait_for_function("() => document.querySelector(\".field-error[data-loc='search_space.params.blocks.1.kind']\")?.textContent.length > 0")
    assert "put a flatten block" in error.inner_text()
    assert tab.url.endswith("#/new")
    console.allowed = False

    # the flatten moved before it: the linear block keeps its widths at its new place, and the job is accepted
    tab.click("button[aria-label='Move up block 3']")
    assert tab.input_value("select[aria-label='block 2 kind']") == "flatten"
    assert tab.input_value("#f-search_space-params-blocks-2-widths") == "16"
    tab.click("#submit-job")
    tab.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    answer = httpx.get(f"{process.url}/api/v1/jobs/{tab.url.rsplit('/', 1)[1]}", headers={"Authorization": f"Bearer {key}"})
    job = answer.json()
    assert [b["kind"] for b in job["spec"]["search_space"]["params"]["blocks"]] == ["conv", "flatten", "linear"]
    assert job["spec"]["search_space"]["params"]["blocks"][0]["widths"] == [4, 8]
    assert not console.errors, console.errors
