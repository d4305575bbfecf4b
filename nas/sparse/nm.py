"""N:M fine-grained structured sparsity trained from scratch with SR-STE (Zhou et al., ICLR 2021).

Every prunable weight keeps the ``n`` largest ``|w|`` of each group of ``m`` consecutive
weights along its input channels, recomputed from the dense weight on every forward pass. The
dense weight receives the straight-through gradient of the masked one plus SR-STE's refining
term ``λ_W·(1 − E) ⊙ W``, which decays the pruned weights so the mask settles
(``W ← W − γ[g(W̃) + λ_W·(1 − E) ⊙ W]``, ``decay=0.0002`` in ``aojunzz/NM-sparsity``);
``method="ste"`` drops the term. The mask flips between consecutive epochs, Sparse Architecture
Divergence (SAD), are reported as the epoch metric ``sad``. At the end the masks are fixed.

Every weight's density is ``n/m``: a search space's per-layer sparsities do not apply. The pattern
fixes the sparsity (1 − n/m, 50% for 2:4), so unlike the other sparsifiers this one takes no
``sparsity`` param: ``n`` and ``m`` are the knob, as on the hardware that runs N:M kernels. A
weight a search space keeps ``dense`` (``layer_patterns``), such as the first convolution of a
given network whose few input channels cannot form groups of M, stays dense.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.sparse.base import Problem, Sparsifier, WeightSpec

if TYPE_CHECKING:
    import torch
    from torch import nn


class NM(Sparsifier):
    """N:M sparsity along input channels, trained with SR-STE (or plain STE)."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        n: int = Field(2, ge=1, le=64, description="weights kept in every group of m (N)")
        m: int = Field(4, ge=1, le=64, description="consecutive input-channel weights per group (M)")
        lambda_w: float = Field(
            2e-4,
            ge=0.0,
            le=1.0,
            description="SR-STE's refining decay λ_W on the pruned weights (paper: 2e-4); unused by ste",
        )
        method: Literal["srste", "ste"] = Field(
            "srste", description="'srste': straight-through plus λ_W·(1−E)⊙W; 'ste': plain straight-through"
        )

        @model_validator(mode="after")
        def _n_within_m(self) -> NM.Params:
            if self.n > self.m:
                raise ValueError(
                    f"n={self.n} exceeds m={self.m}: N:M keeps n of every m weights, so n must be at most m"
                )
            return self

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._previous: dict[str, torch.Tensor] = {}
        self._sad = 0.0

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        layer_sparsity: dict[str, float] | None,
    ) -> None:
        """Put an N:M parametrization on every prunable weight the space does not keep dense; ``ValueError``
        names a weight that cannot be grouped."""
        from torch.nn.utils import parametrize

        from nas.sparse.nm_layers import NMMask
        from nas.sparse.masks import raw_weight

        p = self.params
        decay = p.lambda_w if p.method == "srste" else 0.0
        owners = self._grouped(model)
        for name, (module, attr) in owners.items():
            channels = raw_weight(module, attr).shape[1]
            if channels % p.m:
                raise ValueError(f"{name} has {channels} input channels per group, not a multiple of M={p.m}")
        for module, attr in owners.values():
            parametrize.register_parametrization(module, attr, NMMask(p.n, p.m, decay))
        self._previous = self._masks(model)
        self._sad = 0.0

    def on_epoch_end(self, model: nn.Module, epoch: int) -> None:
        """SAD of this epoch: mask entries that flipped since the last epoch, over every N:M weight."""
        current = self._masks(model)
        flips = sum(int((current[name] != mask).sum()) for name, mask in self._previous.items())
        total = sum(mask.numel() for mask in current.values())
        self._sad = flips / total if total else 0.0
        self._previous = current

    def epoch_metrics(self, model: nn.Module) -> dict[str, float]:
        return {"sad": self._sad}

    def finalize(self, model: nn.Module) -> None:
        """Fix each weight's N:M mask of its final dense values as a hard mask."""
        from nas.sparse.masks import harden_mask

        final = self._masks(model)
        for name, (module, attr) in self._grouped(model).items():
            harden_mask(module, attr, final[name])

    def pattern_of(self, name: str) -> str:
        if (self.layer_patterns or {}).get(name) == "dense":
            return "dense"
        return f"{self.params.n}:{self.params.m}"

    def check(self, weights: list[WeightSpec]) -> list[Problem]:
        """Besides unsupported kinds, refuse weights whose possible input channels are not a multiple of M."""
        m = self.params.m
        problems = super().check(weights)
        for w in weights:
            if w.patterns == frozenset({"dense"}):
                continue  # the space keeps it dense in every architecture
            bad = sorted(f for f in w.in_features if f % m)
            if bad:
                problems.append(
                    (
                        ("params", "m"),
                        f"{w.name} can have {', '.join(map(str, bad))} input features (per group), which is not a "
                        f"multiple of M={m}; N:M groups run along the input channels",
                    )
                )
        return problems

    def _grouped(self, model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
        """The prunable weights made N:M: all but those the space keeps dense."""
        from nas.sparse.masks import prunable_weights

        dense = {name for name, pattern in (self.layer_patterns or {}).items() if pattern == "dense"}
        return {name: owner for name, owner in prunable_weights(model).items() if name not in dense}

    def _masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The N:M mask of every grouped weight's current dense values, as booleans."""
        from nas.sparse.nm_layers import nm_mask
        from nas.sparse.masks import raw_weight

        p = self.params
        return {
            name: nm_mask(raw_weight(module, attr), p.n, p.m).bool() for name, (module, attr) in self._grouped(model).items()
        }
