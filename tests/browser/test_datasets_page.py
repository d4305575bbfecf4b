"""Datasets in the dashboard, in real headless Chromium against a real ``nas serve``.

Through the page's own forms the test uploads an image archive (scikit-learn's digits written as
PNG files in a zip) and a CSV table (the wine set with a categorical column), is told beside the
field what the browser and then the server refuse, sees both listed, opens each summary (the
sample grid, the class balance, the column table), submits a job on one from the new-job form,
is shown the server's 409 when deleting the dataset that job names, and deletes the other.

The server runs no dispatcher (``--max-jobs 0``): the job stays queued, so the 409 is certain
and no Ray starts.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import pytest
from PIL import Image
from sklearn.datasets import load_digits, load_wine

from benchmarks.server_process import ServerProcess

if TYPE_CHECKING:
    from tests.browser.conftest import Console

pytestmark = pytest.mark.browser

ID = re.compile(r"#/datasets/([0-9a-f]{32})$")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    process = ServerProcess(tmp_path_factory.mktemp("datasets-page-home"), {})
    key = process.create_key("alice")
    process.start("--max-jobs", "0")
    yield process, key
    process.stop()


def digit_images(path: Path, per_class: int = 12) -> Path:
    """A zip in the ImageFolder layout: ``digits/<class>/<n>.png``, 8x8 grey-scale."""
    digits = load_digits()
    with zipfile.ZipFile(path, "w") as archive:
        for label in range(10):
            for n, image in enumerate(digits.images[digits.target == label][:per_class]):
                png = io.BytesIO()
                Image.fromarray((image * 255 / 16).astype(np.uint8), mode="L").save(png, format="PNG")
                archive.writestr(f"digits/{label}/{n}.png", png.getvalue())
    return path


def wine_table(path: Path) -> Path:
    """The wine set as CSV: numeric features, a categorical ``region`` and the label ``cultivar``."""
    wine = load_wine()
    names = list(wine.feature_names)
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow([*names, "region", "cultivar"])
        for i, (row, label) in enumerate(zip(wine.data, wine.target, strict=True)):
            writer.writerow([*row, ("north", "south", "coast")[i % 3], wine.target_names[label]])
    return path


def upload(tab: Any, path: Path) -> None:
    """Open the upload form and choose ``path``."""
    tab.click("#upload-dataset")
    tab.wait_for_selector("#upload-form")
    tab.set_input_files("#dataset-file", str(path))


def uploaded(tab: Any) -> str:
    """Submit the upload form; the page moves to the new dataset. Its id."""
    # what the progress line said on the way (the page moves on when the upload is done)
    tab.evaluate("""() => {
        const status = document.querySelector('#upload-status');
        window.__uploadStatus = [];
        new MutationObserver(() => window.__uploadStatus.push(status.textContent))
            .observe(status, { childList: true, characterData: true, subtree: true });
    }""")
    tab.click("#upload-submit")
    tab.wait_for_url(ID, timeout=120_000)  # the server reads the file in a worker process it may start first
    tab.wait_for_selector("#card-balance")
    assert any(text.startswith("Uploaded.") for text in tab.evaluate("() => window.__uploadStatus"))
    return ID.search(tab.url).group(1)


def test_upload_browse_search_and_delete(
    server: tuple[ServerProcess, str], page: tuple[Any, Console], sign_in: Callable[[str, str], None], tmp_path: Path
) -> None:
    process, key = server
    tab, console = page
    api = httpx.Client(base_url=f"{process.url}/api/v1", headers={"Authorization": f"Bearer {key}"})
    sign_in(process.url, key)
    tab.on("dialog", lambda dialog: dialog.accept())

    tab.click("#nav >> text=Datasets")
    assert "No datasets yet" in tab.inner_text("#datasets-table td.empty")

    # an image archive: its options are offered, a table's are not
    archive = digit_images(tmp_path / "digits.zip")
    upload(tab, archive)
    assert tab.is_visible("#image-options") and not tab.is_visible("#table-options")
    assert "image archive" in tab.inner_text("#dataset-format")
    tab.fill("#dataset-name", "digit images")
    tab.fill("#dataset-image_size", "8")
    tab.select_option("#dataset-color", "grayscale")
    images_id = uploaded(tab)

    assert tab.inner_text("#dataset-id") == images_id
    assert tab.inner_text("#dataset-sha256") == hashlib.sha256(archive.read_bytes()).hexdigest()
    kpis = tab.inner_text(".kpis")
    assert "1×8×8" in kpis and "10" in kpis
    assert tab.locator("#class-balance .balance-row[data-class]").count() == 10
    widths = tab.eval_on_selector_all("#class-balance .balance-bar", "bars => bars.map((b) => b.getBoundingClientRect().width)")
    assert len(widths) == 20 and min(widths) > 0  # every class in both splits
    # the sample grid, fetched with the key and shown through an object URL
    tab.wait_for_function("() => { const img = document.querySelector('#samples'); return img && img.complete && img.naturalWidth > 0; }")
    assert tab.get_attribute("#samples", "src").startswith("blob:")
    assert tab.locator("#card-columns").count() == 0

    # a table: the browser asks for the label column, the server names a column it lacks
    tab.click(".crumbs a[href='#/datasets']")
    table = wine_table(tmp_path / "wine.csv")
    upload(tab, table)
    assert tab.is_visible("#table-options") and not tab.is_visible("#image-options")
    tab.click("#upload-submit")
    assert "column that holds the classes" in tab.inner_text(".field-error[data-loc='label_column']")
    tab.fill("#dataset-label_column", "grape")
    console.allowed = True
    tab.click("#upload-submit")
    tab.wait_for_function(
        "() => document.querySelector(\".field-error[data-loc='label_column']\").textContent.includes('grape')", timeout=120_000
    )
    console.allowed = False
    assert tab.url.endswith("#/datasets/upload")
    tab.fill("#dataset-label_column", "cultivar")
    tab.fill("#dataset-test_fraction", "0.25")
    table_id = uploaded(tab)

    assert tab.locator("#card-samples").count() == 0
    columns = tab.locator("#columns-table tbody tr")
    assert columns.count() >= 14  # 13 numeric and one categorical (the label may be listed too)
    region = tab.inner_text("#columns-table tr[data-column='region']")
    assert "categorical" in region and all(c in region for c in ("north", "south", "coast"))
    alcohol = tab.locator("#columns-table tr[data-column='alcohol'] td.num")
    mean, std = (float(alcohol.nth(i).inner_text()) for i in range(2))  # of the training split
    assert 12 < mean < 14 and 0 < std < 2
    assert tab.locator("#class-balance .balance-row[data-class]").count() == 3

    # both listed, newest first
    tab.click("#nav >> text=Datasets")
    tab.wait_for_selector("#datasets-table tbody tr[data-id]")
    rows = tab.locator("#datasets-table tbody tr[data-id]")
    assert [rows.nth(i).get_attribute("data-id") for i in range(rows.count())] == [table_id, images_id]
    assert "CSV" in rows.nth(0).inner_text() and "1×8×8" in rows.nth(1).inner_text()

    # the new-job form offers them; a job on the archive lands with its id
    tab.click("#nav >> text=New job")
    tab.wait_for_selector("#submit-job")
    tab.select_option("#f-dataset-name", "upload")
    offered = tab.eval_on_selector_all("#f-dataset-params-id option", "options => options.map((o) => [o.value, o.textContent])")
    assert dict(offered)[images_id] == "digit images · 1×8×8 · 10 classes"
    assert table_id in dict(offered)
    tab.select_option("#f-dataset-params-id", images_id)
    tab.fill("#f-name", "on my digits")
    tab.click("#submit-job")
    tab.wait_for_url(re.compile(r"#/jobs/[0-9a-f]+$"))
    job = api.get(f"/jobs/{tab.url.rsplit('/', 1)[1]}").json()
    assert job["spec"]["dataset"] == {"name": "upload", "params": {"id": images_id}}

    # the job page links to its dataset, whose page starts a job on itself
    tab.click(f".chips a[href='#/datasets/{images_id}']")
    tab.wait_for_selector("#search-dataset")
    tab.click("#search-dataset")
    tab.wait_for_selector("#submit-job")
    assert tab.input_value("#f-dataset-name") == "upload" and tab.input_value("#f-dataset-params-id") == images_id

    # the queued job holds the archive: the server's 409 is shown, nothing is deleted
    tab.goto(f"{process.url}/#/datasets/{images_id}")
    console.allowed = True
    tab.click("#delete-dataset")
    tab.wait_for_selector("#delete-message .alert-error")
    console.allowed = False
    message = tab.inner_text("#delete-message")
    assert job["id"] in message and "queued or running" in message  # the server's own words
    assert api.get(f"/datasets/{images_id}").status_code == 200

    # the table goes
    tab.goto(f"{process.url}/#/datasets/{table_id}")
    tab.click("#delete-dataset")
    tab.wait_for_url(re.compile(r"#/datasets$"))
    tab.wait_for_selector(f"#datasets-table tbody tr[data-id='{images_id}']")
    assert tab.locator(f"#datasets-table tbody tr[data-id='{table_id}']").count() == 0
    assert api.get(f"/datasets/{table_id}").status_code == 404

    assert console.errors == []
