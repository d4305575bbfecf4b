"""The service's latency observations, in its database, as :mod:`nas.latency` reads them."""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any

from nas.store.store import Store


class StoreObservations:
    """A :class:`nas.latency.ObservationSource` over the store: the dispatcher that plans trials
    and every API process refit the predictor's correction from what all workers measured."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, record: Mapping[str, Any]) -> None:
        self.store.add_latency_observation(record)

    def records(self, target_key: str, predictor_id: str, limit: int) -> list[dict[str, Any]]:
        return [o.record for o in self.store.latency_observations(target_key, predictor_id, limit=limit)]

    def revision(self, target_key: str, predictor_id: str) -> Hashable:
        return self.store.latency_observation_revision(target_key, predictor_id)


def predict_with_store_observations(store: Store) -> None:
    """Point this process's latency predictions at ``store``'s observations (a service process starting)."""
    from nas.latency import use_observations  # torch: only in the processes that predict

    use_observations(StoreObservations(store))
