"""Bytes a job's trials fetch through Ray's object store, held by a named actor while the job runs.

The runner puts a stored resource (a dataset's canonical file, a model's ONNX) in the object store
once per job; a small actor holds the reference, and a trial's config carries only the actor's
name. The reference itself never enters a trial's config: Tune pickles configs into its
experiment state, which would pin the bytes for the life of the dispatcher.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import ray


@ray.remote(num_cpus=0)
class _Source:
    """Keeps one object in the object store while its job runs; trials ask it for the reference."""

    def __init__(self, held: list[ray.ObjectRef]) -> None:
        self._held = held  # in a list, so Ray hands over the reference, not the bytes

    def reference(self) -> list[ray.ObjectRef]:
        return self._held


@contextmanager
def object_source(prefix: str, data: Any) -> Iterator[str]:
    """The name of an actor holding ``data`` in the object store, for the ``with`` block.

    ``data`` is let go here once stored: a caller that also lets go of it keeps no copy in its memory.
    """
    held = ray.put(data)
    del data
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    source = _Source.options(name=name).remote([held])
    try:
        yield name
    finally:
        ray.kill(source)
        del held


def fetch(source_name: str) -> Any:
    """The object the named source holds (an array over the node's shared memory is read-only)."""
    (held,) = ray.get(ray.get_actor(source_name).reference.remote())
    return ray.get(held)
