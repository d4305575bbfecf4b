"""Dynamic sparse training: RigL (Evci et al., 2020) and SET (Mocanu et al., 2018).

Both train a network that is sparse from the first step: every layer starts from a random mask at
its share of the density (Erdős–Rényi-Kernel or uniform), and every ``update_interval`` steps until
``end_fraction`` of training each layer drops the smallest-magnitude fraction f(t) of its active
weights and grows as many inactive ones -- RigL where the dense gradient is largest, SET at random.
Per-layer nonzero counts never change. The rules follow the RigL code (``google-research/rigl``,
``sparse_optimizers_base.py`` and ``sparse_utils.py``).

This module imports no torch (the API server imports it to validate specs); the torch side lives
in :mod:`nas.sparse._dst`. The density helpers (:func:`erk_densities`, :func:`layer_densities`,
:func:`target_densities`, :func:`keep_count`) are pure functions that the static ``random`` control shares.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from nas.sparse.base import Sparsifier

if TYPE_CHECKING:
    import torch
    from torch import nn

    from nas.sparse._dst import DynamicMasks

Distribution = Literal["erk", "uniform"]


def erk_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Per-weight densities by Erdős–Rényi-Kernel, averaging ``density`` over all the weights' entries.

    RigL (Evci et al. 2020, §3; ``sparse_utils.get_sparsities_erdos_renyi``): layer l gets
    ``p_l = ε · sum(shape_l) / prod(shape_l)`` -- for a conv ``(n_out + n_in + kh + kw) / (n_out·n_in·kh·kw)``,
    for a Linear or recurrent matrix ``(n_out + n_in) / (n_out·n_in)`` -- with ε solving
    ``Σ p_l N_l = density · Σ N_l``. While the largest ``p_l`` exceeds 1, the layers with the largest
    raw ratio are made dense and ε is solved again over the rest, as the RigL code does.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density {density} is not in (0, 1]")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if density == 1.0:
        return {name: 1.0 for name in shapes}
    raw = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    dense: set[str] = set()
    target = density * sum(sizes.values())
    while True:
        sparse = [name for name in shapes if name not in dense]
        eps = (target - sum(sizes[name] for name in dense)) / sum(raw[name] * sizes[name] for name in sparse)
        peak = max(raw[name] for name in sparse)
        if eps * peak <= 1.0:
            break
        dense.update(name for name in sparse if raw[name] == peak)
    return {name: 1.0 if name in dense else eps * raw[name] for name in shapes}


def uniform_densities(shapes: dict[str, tuple[int, ...]], density: float) -> dict[str, float]:
    """Every weight at the same ``density`` (RigL's "uniform"; its ImageNet runs also keep the first layer
    dense, which an MLP whose first layer holds most weights cannot afford, so no layer is exempt here)."""
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density {density} is not in (0, 1]")
    return {name: density for name in shapes}


def layer_densities(shapes: dict[str, tuple[int, ...]], density: float, distribution: Distribution) -> dict[str, float]:
    """Per-weight densities averaging ``density`` by the named ``distribution`` ("erk" or "uniform")."""
    if distribution == "erk":
        return erk_densities(shapes, density)
    return uniform_densities(shapes, density)


def target_densities(
    shapes: dict[str, tuple[int, ...]], sparsity: float, distribution: Distribution, layer_sparsity: dict[str, float]
) -> dict[str, float]:
    """Per-weight densities: weights named in ``layer_sparsity`` get ``1 - their sparsity``; the others share
    ``1 - sparsity`` by ``distribution``, as the RigL code treats its ``custom_sparsity_map``."""
    rest = {name: shape for name, shape in shapes.items() if name not in layer_sparsity}
    densities = layer_densities(rest, 1.0 - sparsity, distribution) if rest else {}
    densities.update({name: 1.0 - layer_sparsity[name] for name in shapes if name in layer_sparsity})
    return densities


def keep_count(numel: int, density: float) -> int:
    """Entries a weight of ``numel`` entries keeps at ``density``: the nearest count, but at least one."""
    return min(numel, max(1, round(density * numel)))


def drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """Cosine-decayed drop fraction ``f(t) = α/2 · (1 + cos(π·t / T_end))`` (RigL eq. 1), 0 from ``T_end`` on."""
    if end_step <= 0 or step >= end_step:
        return 0.0
    return alpha / 2.0 * (1.0 + math.cos(math.pi * step / end_step))


class DynamicSparseParams(BaseModel):
    """Hyperparameters shared by RigL and SET; defaults are RigL's (Evci et al. 2020, §4)."""

    model_config = ConfigDict(extra="forbid")

    sparsity: float = Field(
        0.9, ge=0.0, lt=1.0, description="fraction of the prunable weights that are zero, from first step to last"
    )
    distribution: Distribution = Field(
        "erk",
        description="how the nonzeros are spread over layers: 'erk' (Erdős–Rényi-Kernel) or 'uniform' "
        "(the same density in every layer)",
    )
    update_interval: int = Field(100, ge=1, description="ΔT: optimizer steps between mask updates")
    end_fraction: float = Field(
        0.75, gt=0.0, le=1.0, description="T_end as a fraction of the total steps; the masks are fixed after it"
    )
    drop_fraction: float = Field(
        0.3,
        gt=0.0,
        le=1.0,
        description="α: fraction of active weights dropped at the first update, cosine-decayed to 0 at T_end",
    )


class DynamicSparseTraining(Sparsifier):
    """Shared drop-and-grow schedule of RigL and SET; subclasses say how the regrown weights are chosen."""

    Params: ClassVar[type[BaseModel]] = DynamicSparseParams
    grow: ClassVar[Literal["gradient", "random"]]
    params: DynamicSparseParams

    def __init__(self, params: DynamicSparseParams) -> None:
        super().__init__(params)
        self._masks: DynamicMasks | None = None
        self._end_step = 0

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        layer_sparsity: dict[str, float] | None,
    ) -> None:
        """Mask every prunable weight below density 1 at random, at exactly its share of the nonzeros;
        weights named in ``layer_sparsity`` get their own sparsity, the rest share ``sparsity`` by ``distribution``."""
        import torch

        from nas.sparse._dst import DynamicMasks, weight_shapes
        from nas.sparse.masks import checked_targets

        custom = checked_targets(model, layer_sparsity)
        densities = target_densities(weight_shapes(model), self.params.sparsity, self.params.distribution, custom)
        # Drawn from torch's global generator, so a trial seeded by the trainer reproduces its masks.
        generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
        self._end_step = math.floor(self.params.end_fraction * total_steps)
        self._masks = DynamicMasks(model, optimizer, densities, generator, capture_gradients=self.grow == "gradient")
        self._masks.capture = self._is_update(1)

    def on_after_backward(self, model: nn.Module, step: int) -> None:
        """RigL reads the dense gradient of the loss at update steps, before the optimizer consumes it."""
        if self._masks is not None and self._is_update(step) and self.grow == "gradient":
            self._masks.read_gradients()

    def on_step(self, model: nn.Module, step: int) -> None:
        """At every ΔT-th step before T_end, drop f(t) of each layer's active weights and grow as many."""
        if self._masks is None:
            return
        if self._is_update(step):
            self._masks.drop_and_grow(drop_fraction(step, self.params.drop_fraction, self._end_step), self.grow)
        self._masks.capture = self._is_update(step + 1)

    def finalize(self, model: nn.Module) -> None:
        """The masks are already final: nothing changes after T_end; only the hooks are removed."""
        if self._masks is not None:
            self._masks.close()

    def _is_update(self, step: int) -> bool:
        return step % self.params.update_interval == 0 and step < self._end_step


class RigL(DynamicSparseTraining):
    """RigL: sparse throughout; every ΔT steps drops the smallest weights, regrows at the largest dense gradients."""

    grow = "gradient"


class SET(DynamicSparseTraining):
    """SET: sparse from the start; periodically drops the smallest weights and regrows as many at random positions."""

    grow = "random"
