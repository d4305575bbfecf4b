"""A dataset a user stored with the service, named by its id (``POST /api/v1/datasets``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from nas.data.base import Dataset, DataSplits
from nas.data.stored import UnknownDataset, current_catalog, read_splits
from nas.installed import STORE_ID_PREFIX_PATTERN as ID_PREFIX_PATTERN


class Upload(Dataset):
    """A dataset uploaded or registered by path, named by its id.

    Its shape comes from the store, its arrays from the worker node's cache (:mod:`nas.data.stored`).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        id: str = Field(
            pattern=ID_PREFIX_PATTERN,
            description="the dataset's id, as POST /api/v1/datasets answered it, or a unique prefix of it "
            "(at least 4 characters); the stored spec keeps the whole id",
        )

        @field_validator("id")
        @classmethod
        def _whole(cls, dataset_id: str) -> str:
            try:
                catalog = current_catalog()
            except UnknownDataset:
                return dataset_id  # no catalog here (a client checking a spec): the server resolves it
            try:
                return catalog.full_id(dataset_id)
            except UnknownDataset as exc:  # the same answer for an id never stored and another owner's
                raise ValueError(str(exc)) from None

    params: Params

    def shape(self) -> tuple[tuple[int, ...], int]:
        """Raises :class:`~nas.data.stored.UnknownDataset` for an id the caller has no dataset of."""
        return current_catalog().shape(self.params.id)

    def load(self, data_dir: Path) -> DataSplits:
        """The splits made once at upload, the same for every trial of every job; ``data_dir`` is unused."""
        return read_splits(current_catalog().splits_path(self.params.id))
