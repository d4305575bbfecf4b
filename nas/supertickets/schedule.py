"""SuperTickets' progressive pruning schedule, torch-free (the strategy checks specs against it)."""

from __future__ import annotations


def schedule(targets: list[float] | tuple[float, ...], step: float) -> list[float]:
    """The sparsity levels the supernet passes through, one per interval: step, 2 step, ... up to the largest target.

    The paper's ``min(floor((epoch + 1) / interval) * 0.1, target)``; every requested target is a
    level of its own, so each ticket is taken exactly at its sparsity.
    """
    top = max(targets)
    ramp = {round(j * step, 6) for j in range(1, int(top / step + 1e-9) + 1) if j * step < top - 1e-9}
    return sorted(ramp | {round(t, 6) for t in targets})


def rho_at(step: int, rho: float, warmup_steps: int) -> float:
    """The slimming coefficient at ``step``: ramped linearly from 0 to ``rho`` over ``warmup_steps``."""
    return rho * min(1.0, step / max(1, warmup_steps))
