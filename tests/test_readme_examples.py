"""The README's Python examples run as written, in order, in one folder, against a real
`nas serve` (uvicorn, the dispatcher and a local Ray) with NAS_URL and NAS_API_KEY set.

Every fenced block opened with ```python sdk-example is one example. ``NAS_README`` points the
test at another Markdown file (a draft of the README's sections).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from benchmarks.server_process import ServerProcess

pytestmark = pytest.mark.ray

README = Path(os.environ.get("NAS_README") or Path(__file__).resolve().parents[1] / "README.md")
BLOCK = re.compile(r"^```python sdk-example\n(.*?)^```", re.MULTILINE | re.DOTALL)


def examples() -> list[str]:
    return BLOCK.findall(README.read_text())


def test_the_readme_has_examples() -> None:
    found = examples()
    assert len(found) >= 3, f"{README} has {len(found)} ```python sdk-example blocks"
    for code in found:
        compile(code, str(README), "exec")  # each one is valid Python on its own


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, str]]:
    home = tmp_path_factory.mktemp("readme-server")
    server = ServerProcess(home, {"NAS_DATA_DIR": str(home)})
    server.start()
    try:
        yield server, server.create_key("reader")
    finally:
        server.stop()


def test_examples_run_as_written(live: tuple[ServerProcess, str], tmp_path: Path) -> None:
    server, key = live
    env = {**os.environ, "NAS_URL": server.url, "NAS_API_KEY": key, "OMP_NUM_THREADS": "1"}
    for number, code in enumerate(examples(), 1):
        result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, (
            f"example {number} of {README} failed:\n{code}\n--- stderr:\n{result.stderr[-3000:]}\n"
            f"--- server log:\n{server.log()[-3000:]}"
        )
        assert result.stdout.strip(), f"example {number} printed nothing"
        print(f"--- example {number}:\n{result.stdout}{result.stderr[-2000:]}")
    assert (tmp_path / "best.onnx").stat().st_size > 0 and (tmp_path / "best.safetensors").stat().st_size > 0
