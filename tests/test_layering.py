"""The packages stay layered: every module's imports (lazy ones inside functions included) point down.

``nas`` is the core; ``search_spaces`` and ``workers`` build on it; ``api`` serves all of them;
``benchmarks`` may use any of these, and ``tests`` anything. A private module or name (``_x``) is
imported only inside the package that owns it, so a package's internals can change without
breaking another. ``nas`` never imports Ray: the API validates specs and builds the catalog
without it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT = ("nas", "search_spaces", "workers", "api", "benchmarks", "tests")
MAY_IMPORT: dict[str, set[str]] = {
    "nas": {"nas"},
    "search_spaces": {"nas", "search_spaces"},
    "workers": {"nas", "search_spaces", "workers"},
    "api": {"nas", "search_spaces", "workers", "api"},
    "benchmarks": {"nas", "search_spaces", "workers", "api", "benchmarks"},
}
NEVER: dict[str, set[str]] = {"nas": {"ray"}}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(source: str, module: str, is_package: bool = False) -> Iterator[tuple[int, str]]:
    """``(line, dotted name)`` of everything ``module`` imports: modules, and ``module.name`` for ``from`` imports."""
    package = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from ((node.lineno, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: the package, then up one per extra dot
                base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            yield node.lineno, base
            yield from ((node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*")


def sources() -> list[Path]:
    return sorted(p for top in PROJECT for p in (ROOT / top).rglob("*.py") if "__pycache__" not in p.parts)


def private_owner(name: str) -> str | None:
    """The package whose internals ``name`` reaches into, if any.

    A private module belongs to the package holding it (``nas.sparse`` for ``nas.sparse._imp``), a
    private name to the package of its module (``nas.strategies`` for ``nas.strategies.base._Wait``):
    siblings share their package's internals.
    """
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            holder = parts[:i]
            is_package = (ROOT.joinpath(*holder) / "__init__.py").is_file()
            return ".".join(holder if is_package else holder[:-1])
    return None


def test_the_project_has_the_packages_this_test_walks() -> None:
    found = {p.relative_to(ROOT).parts[0] for p in sources()}
    assert found == set(PROJECT)
    assert len(sources()) > 100


@pytest.mark.parametrize("path", sources(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path: Path) -> None:
    me = module_name(path)
    top = me.split(".")[0]
    problems = []
    for line, name in imports(path.read_text(), me, path.name == "__init__.py"):
        target = name.split(".")[0]
        if target in PROJECT and top in MAY_IMPORT and target not in MAY_IMPORT[top]:
            problems.append(f"line {line}: {top} must not import {target} ({name})")
        if target in NEVER.get(top, set()):
            problems.append(f"line {line}: {top} must not import {target}")
        owner = private_owner(name)
        if owner and top != "tests" and target in PROJECT and not (me == owner or me.startswith(owner + ".")):
            problems.append(f"line {line}: {name} is private to {owner}")
    assert not problems, f"{me}: " + "; ".join(problems)


def test_the_walker_sees_lazy_relative_and_private_imports() -> None:
    """The checks above would pass vacuously if the walker missed an import kind."""
    source = "from . import masks\n\ndef f():\n    from ..latency import _private\n    import ray.tune\n"
    found = [name for _, name in imports(source, "nas.sparse.example")]
    assert found == ["nas.sparse", "nas.sparse.masks", "nas.latency", "nas.latency._private", "ray.tune"]
    assert [name for _, name in imports("from .base import X\n", "nas.sparse", is_package=True)] == [
        "nas.sparse.base", "nas.sparse.base.X"
    ]
    assert private_owner("nas.latency._private") == "nas.latency"
    assert private_owner("nas.strategies.base._Wait") == "nas.strategies"
    assert private_owner("nas.latency.__version__") is None
