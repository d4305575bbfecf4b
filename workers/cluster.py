"""What this driver's Ray cluster has: its live nodes' CPUs and GPUs (:class:`nas.cluster.Node`)."""

from __future__ import annotations

from nas.cluster import Node


def ray_nodes() -> list[Node] | None:
    """The live nodes of the cluster this process joined; ``None`` when Ray is not initialised or does not answer."""
    import ray

    try:
        if not ray.is_initialized():
            return None
        found = ray.nodes()
    except Exception:  # noqa: BLE001 - any failure to reach the cluster means "no answer"
        return None
    return [
        Node(str(node["NodeID"]), float(node["Resources"].get("CPU", 0.0)), float(node["Resources"].get("GPU", 0.0)))
        for node in found
        if node.get("Alive")
    ]
