"""The store as a :class:`~nas.timing.agent_targets.TargetCatalog`: an owner's agent targets."""

from __future__ import annotations

from nas.errors import NotFound
from nas.store.store import Store
from nas.timing.agent_targets import TargetCatalog, UnknownTarget
from nas.timing.runtimes import RUNTIMES


class StoreTargetCatalog(TargetCatalog):
    def __init__(self, store: Store, owner: str) -> None:
        self.store = store
        self.owner = owner

    def runtimes(self, name: str) -> list[str]:
        try:
            target = self.store.measurements.target(self.owner, name)
        except NotFound:
            names = self.store.measurements.target_names(self.owner)
            raise UnknownTarget(
                f"unknown target {name!r}: the server's own are cpu (and cuda with a GPU); "
                + (f"your agent targets: {', '.join(names)}" if names else
                   "you have no agent target yet (start `nas agent --target NAME` on a device)")
            ) from None
        offered = {runtime for agent in target.agents for runtime in agent.runtime_names()}
        return [runtime for runtime in RUNTIMES if runtime in offered]
