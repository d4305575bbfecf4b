"""A dataset a user stored with the service, named by its id (``POST /api/v1/datasets``)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from nas.data.base import Dataset, DataSplits
from nas.data.stored import ID_PATTERN, current_catalog, read_splits


class Upload(Dataset):
    """A dataset uploaded or registered by path, named by its id.

    Its shape comes from the store, its arrays from the worker node's cache (:mod:`nas.data.stored`).
    """

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        id: str = Field(pattern=ID_PATTERN, description="the dataset's id, as POST /api/v1/datasets answered it")

    params: Params

    def shape(self) -> tuple[tuple[int, ...], int]:
        """Raises :class:`~nas.data.stored.UnknownDataset` for an id the caller has no dataset of."""
        return current_catalog().shape(self.params.id)

    def load(self, data_dir: Path) -> DataSplits:
        """The splits made once at upload, the same for every trial of every job; ``data_dir`` is unused."""
        return read_splits(current_catalog().splits_path(self.params.id))
