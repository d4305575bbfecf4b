"""The ML plug-ins resolve through the registries and stay cheap to import for the API server."""

from __future__ import annotations

import subprocess
import sys

import pytest

from nas import registry


@pytest.mark.parametrize(
    ("reg", "name", "path"),
    [
        (registry.datasets, "digits", "nas.data.digits.Digits"),
        (registry.datasets, "mnist", "nas.data.mnist.MNIST"),
        (registry.search_spaces, "sparse_mlp", "search_spaces.sparse_mlp.SparseMLP"),
        (registry.sparsifiers, "magnitude", "nas.sparse.magnitude.MagnitudePruning"),
    ],
)
def test_plugins_are_registered_with_described_params(reg: registry.Registry, name: str, path: str) -> None:
    cls = reg.get(name)
    assert f"{cls.__module__}.{cls.__qualname__}" == path
    entry = next(e for e in reg.describe() if e["name"] == name)
    assert entry["description"]
    properties = entry["params_schema"]["properties"]
    assert properties and all(prop.get("description") for prop in properties.values())
    assert entry["params_schema"]["additionalProperties"] is False
    cls(cls.Params())  # every option has a default


def test_importing_the_plugins_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from nas import registry\n"
        "for reg in (registry.datasets, registry.search_spaces, registry.sparsifiers):\n"
        "    reg.describe()\n"
        "heavy = sorted({'torch', 'optuna', 'sklearn'} & set(sys.modules))\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
