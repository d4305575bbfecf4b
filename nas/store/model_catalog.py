"""The store as a :class:`~nas.models.stored.ModelCatalog`: stored models' records, by id."""

from __future__ import annotations

from pathlib import Path

from nas.errors import AmbiguousId, NotFound
from nas.models.stored import ModelCatalog, UnknownModel
from nas.specs import ModelRecord
from nas.store.store import Principal, Store


class StoreModelCatalog(ModelCatalog):
    """Records of the models ``owner`` may use; ``owner`` ``None`` (the runner, an admin) may use every one.

    Another owner's model is unknown with the very message an id never stored gets, so a refusal
    reveals nothing. Given the store's ``artifact_dir`` (a process on the server's machine: the job
    runner planning candidates, a worker process exporting a trial), it also has their ONNX files.
    """

    def __init__(self, store: Store, owner: str | None, artifact_dir: Path | None = None) -> None:
        self.store = store
        self.viewer = None if owner is None else Principal(owner)
        self.artifact_dir = artifact_dir

    def get(self, model_id: str) -> ModelRecord:
        try:
            return self.store.get_model(model_id, self.viewer)
        except NotFound:
            raise UnknownModel(f"no model {model_id}: GET /api/v1/models lists yours") from None
        except AmbiguousId as exc:
            raise ValueError(str(exc)) from None

    def onnx_path(self, model_id: str) -> Path:
        from nas.store.artifacts import model_file

        self.get(model_id)  # an id this viewer may not use is unknown, whatever lies on disk
        if self.artifact_dir is None:
            return super().onnx_path(model_id)
        path = model_file(self.artifact_dir, model_id)
        if not path.is_file():
            raise UnknownModel(f"model {model_id}'s file is missing from {path.parent}")
        return path
