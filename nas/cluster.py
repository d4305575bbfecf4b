"""The nodes of the Ray cluster that runs trials, and whether one trial's resources fit on any of them.

API processes never talk to Ray. A dispatcher records its cluster's nodes with every heartbeat
(:meth:`nas.store.Store.dispatcher_heartbeat`); the API refuses a job whose trials no node could
ever start (:func:`unmet`), and the dispatcher checks a job again when it claims it, since nodes
come and go. Before any dispatcher has reported, this machine stands in for the cluster
(:func:`this_machine`): ``nas serve`` starts its local Ray on it.
"""

from __future__ import annotations

import functools
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nas.specs import TrialResources


@dataclass(frozen=True)
class Node:
    """A node's CPUs and GPUs, as Ray counts them (its ``num_cpus`` and ``num_gpus``)."""

    id: str
    cpus: float
    gpus: float

    def as_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Node:
        return cls(str(data["id"]), float(data["cpus"]), float(data["gpus"]))


@functools.cache
def this_machine() -> Node:
    """This machine as a local Ray would count it: the CPUs this process may use and the CUDA devices torch sees."""
    import torch  # the API imports it anyway (targets); here only when no dispatcher has reported

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return Node("this machine", float(cpus), float(torch.cuda.device_count()))


def unmet(resources: TrialResources, nodes: Sequence[Node]) -> tuple[str, str] | None:
    """``(field, message)`` when no node has both the CPUs and the GPUs one trial asks for, else ``None``.

    The field is the one no node satisfies alone (``gpus`` when neither, or only their combination,
    fails); the message says what the nodes have.
    """
    cpus, gpus = resources.cpus, resources.gpus
    if any(node.cpus >= cpus and node.gpus >= gpus for node in nodes):
        return None
    has = f"the cluster has: {describe(nodes)}"
    if max((node.gpus for node in nodes), default=0.0) < gpus:
        wanted = "a GPU" if all(node.gpus == 0 for node in nodes) else _count(gpus, "GPU")
        return "gpus", f"no node of the cluster has {wanted} (resources.gpus={gpus:g}); {has}"
    if max((node.cpus for node in nodes), default=0.0) < cpus:
        return "cpus", f"no node of the cluster has {_count(cpus, 'CPU')} (resources.cpus={cpus:g}); {has}"
    both = f"{_count(cpus, 'CPU')} and {_count(gpus, 'GPU')}"
    return "gpus", f"no node of the cluster has both {both} (resources.cpus, resources.gpus); {has}"


def describe(nodes: Sequence[Node]) -> str:
    """``2 nodes of 8 CPUs and 1 GPU, 1 node of 4 CPUs and no GPU``: identical nodes counted together."""
    if not nodes:
        return "no live node"
    kinds = Counter((node.cpus, node.gpus) for node in nodes)
    parts = []
    for (cpus, gpus), count in sorted(kinds.items(), key=lambda kind: (-kind[0][1], -kind[0][0])):
        gpu_text = "no GPU" if gpus == 0 else _count(gpus, "GPU")
        parts.append(f"{_count(count, 'node')} of {_count(cpus, 'CPU')} and {gpu_text}")
    return ", ".join(parts)


def _count(number: float, noun: str) -> str:
    return f"{number:g} {noun}" + ("" if number == 1 else "s")
