"""How a job's stored model reaches the nodes its trials run on: through Ray, never a path on the API machine.

The runner reads the model's ONNX file once per job and puts the bytes in Ray's object store,
held until the job ends (:func:`deliver`, :mod:`workers.object_source`). A trial whose node lacks
the file fetches the object and writes the node's cache (:func:`receive`), which every later
trial on the node reads. The model's record travels in the config, so the worker knows the
model's shape and layers without the store.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from nas.models.node_cache import NodeModelCatalog, cache_model
from nas.models.stored import use_model_catalog
from nas.search_space import SearchSpace
from nas.settings import Settings
from nas.specs import ModelRecord
from nas.store import Store
from nas.store.artifacts import model_file
from workers.object_source import fetch, object_source


@contextmanager
def deliver(store: Store, settings: Settings, job_id: str, space: SearchSpace) -> Iterator[dict[str, Any] | None]:
    """What every trial of the job needs to find its stored model (``None`` when the space builds from
    none), for the ``with`` block: the model's bytes stay in Ray's object store until it ends."""
    model_id = space.stored_model()
    if model_id is None:
        yield None
        return
    record = store.get_model(model_id)
    data = model_file(settings.artifact_dir, model_id).read_bytes()
    sha256 = hashlib.sha256(data).hexdigest()
    if sha256 != record.sha256:
        raise ValueError(
            f"model {model_id}'s stored file is not the one uploaded (sha256 {sha256}, recorded {record.sha256})"
        )
    with object_source(f"nas-model-{job_id}", data) as name:
        del data
        yield {"id": model_id, "sha256": sha256, "source": name, "record": record.model_dump(mode="json")}


def receive(delivery: dict[str, Any] | None) -> None:
    """Make this process find the job's model in its node's cache, filling the cache if the node lacks it."""
    if delivery is None:
        return
    cache_dir = Settings.from_env().model_cache_dir
    model_id = delivery["id"]
    cache_model(cache_dir, model_id, delivery["sha256"], lambda: fetch(delivery["source"]))
    use_model_catalog(NodeModelCatalog(cache_dir, {model_id: ModelRecord.model_validate(delivery["record"])}))
