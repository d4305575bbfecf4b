"""The store as a :class:`~nas.models.stored.ModelCatalog`: stored models' records, by id."""

from __future__ import annotations

from nas.errors import NotFound
from nas.models.stored import ModelCatalog, UnknownModel
from nas.specs import ModelRecord
from nas.store.store import Principal, Store


class StoreModelCatalog(ModelCatalog):
    """Records of the models ``owner`` may use; ``owner`` ``None`` (the runner, an admin) may use every one.

    Another owner's model is unknown with the very message an id never stored gets, so a refusal
    reveals nothing.
    """

    def __init__(self, store: Store, owner: str | None) -> None:
        self.store = store
        self.viewer = None if owner is None else Principal(owner)

    def get(self, model_id: str) -> ModelRecord:
        try:
            return self.store.get_model(model_id, self.viewer)
        except NotFound:
            raise UnknownModel(f"no model {model_id}: GET /api/v1/models lists yours") from None
