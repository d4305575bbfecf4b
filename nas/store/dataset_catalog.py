"""The store as a :class:`~nas.data.stored.DatasetCatalog`: stored datasets' shapes, by id."""

from __future__ import annotations

from nas.data.stored import DatasetCatalog, UnknownDataset
from nas.errors import AmbiguousId, NotFound
from nas.specs import DatasetRecord
from nas.store.store import Principal, Store


class StoreDatasetCatalog(DatasetCatalog):
    """Shapes of the datasets ``owner`` may use; ``owner`` ``None`` (the runner, an admin) may use every one.

    Another owner's dataset is unknown with the very message an id never stored gets, so a
    refusal reveals nothing.
    """

    def __init__(self, store: Store, owner: str | None) -> None:
        self.store = store
        self.viewer = None if owner is None else Principal(owner)

    def _record(self, dataset_id: str) -> DatasetRecord:
        try:
            return self.store.get_dataset(dataset_id, self.viewer)
        except NotFound:
            raise UnknownDataset(f"no dataset {dataset_id}: GET /api/v1/datasets lists yours") from None
        except AmbiguousId as exc:
            raise ValueError(str(exc)) from None

    def shape(self, dataset_id: str) -> tuple[tuple[int, ...], int]:
        record = self._record(dataset_id)
        return tuple(record.input_shape), record.num_classes

    def full_id(self, dataset_id: str) -> str:
        return self._record(dataset_id).id
