"""The local Ray that ``nas serve`` starts listens on 127.0.0.1 only.

Ray advertises a node's outward address and its GCS, raylet, object manager, workers and agents
listen there (or on every interface); ``ray.init(_node_ip_address="127.0.0.1")`` is turned back
into that outward address on purpose. Only when Ray takes the machine for a one-node setup, as it
does on macOS and Windows (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), does it use the loopback
address for everything. A server's own Ray never takes other nodes, so that is the setting for
it; a cluster (``RAY_ADDRESS``) is left alone: README, "Run on a cluster", says how to secure one.
"""

from __future__ import annotations

import os

ONE_NODE_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def keep_local_ray_on_loopback() -> None:
    """Call before ``ray.init`` starts a local instance in this process."""
    from ray._private import ray_constants

    os.environ[ONE_NODE_ENV] = "0"  # for processes that import Ray afresh
    ray_constants.ENABLE_RAY_CLUSTER = False  # Ray read the variable when it was imported
