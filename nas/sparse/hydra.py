"""HYDRA (Sehwag et al., NeurIPS 2020), the pruner inside DASS: learn which weights to keep with scores.

One trial runs HYDRA's three phases, with DASS's split of the steps by default (100 / 50 / 100
epochs, ``train_search.py``):

1. *pretrain*: the weights train densely (every weight carries a score mask at ``k = 1``).
2. *prune*: scores get HYDRA's scaled initialisation ``S = sqrt(6/fan_in)·W/max|W|`` from the
   pretrained weights; the mask of each weight is ``TopK(|S|, k)`` per layer, keeping
   ``k = 1 - sparsity`` (the ``sparsity`` param; HYDRA's ``k`` is accepted as an alias); only the scores
   (and normalisation layers) train, with the straight-through gradient of
   :mod:`nas.sparse.layers`, while the weights and biases are frozen.
3. *finetune*: the masks become fixed hard masks and the weights train under them; the scores
   are dropped, so the saved model is the final sparse network.

The scores join the trainer's optimizer as a parameter group of their own, inheriting its
hyper-parameters; each phase starts with fresh optimizer state, as HYDRA builds a new optimizer
per phase.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from nas.sparse.base import Sparsifier, accept_alias

if TYPE_CHECKING:
    import torch
    from torch import nn


def _sparsity_from_keep(k: Any) -> float:
    """HYDRA's ``k`` (fraction kept) as a sparsity, rounded so that ``k = 0.3`` gives exactly 0.7."""
    if isinstance(k, bool) or not isinstance(k, (int, float)) or not 0.0 < k <= 1.0:
        raise ValueError(f"k (the fraction kept) must be a number in (0, 1], got {k!r}")
    return round(1.0 - k, 12)


class Hydra(Sparsifier):
    """Score-based pruning of each layer to ``sparsity`` (keeping k = 1 - sparsity), in HYDRA's three phases."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sparsity: float = Field(
            0.9,
            ge=0.0,
            lt=1.0,
            description="fraction of each layer's weights that are zero; HYDRA keeps the top k = 1 - sparsity by "
            "score (alias: k, the fraction kept; DASS's own default k = 0.01 is for 600-epoch CIFAR runs); a search "
            "space's per-layer sparsity overrides it",
        )
        pretrain_fraction: float = Field(
            0.4, ge=0.0, lt=1.0, description="fraction of the steps that train the dense weights first (DASS: 100/250)"
        )
        finetune_fraction: float = Field(
            0.4,
            ge=0.0,
            lt=1.0,
            description="fraction of the steps that fine-tune the weights under the fixed mask at the end (DASS: "
            "100/250); the steps between pretraining and fine-tuning learn the scores",
        )
        train_weights: bool = Field(
            False,
            description="train the weights together with the scores while pruning, instead of freezing them "
            "as HYDRA does",
        )

        @model_validator(mode="before")
        @classmethod
        def _paper_name(cls, data: Any) -> Any:
            return accept_alias(data, "k", _sparsity_from_keep)

        @model_validator(mode="after")
        def _prune_phase_left(self) -> Hydra.Params:
            if self.pretrain_fraction + self.finetune_fraction >= 1.0:
                raise ValueError(
                    f"pretrain_fraction {self.pretrain_fraction} + finetune_fraction {self.finetune_fraction} "
                    "leave no steps to learn the scores; their sum must be below 1"
                )
            return self

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._keep: dict[str, float] = {}
        self._optimizer: torch.optim.Optimizer | None = None
        self._frozen: list[torch.nn.Parameter] = []
        self._prune_start = self._finetune_start = 0
        self._phase = "pretrain"

    def attach(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        total_steps: int,
        layer_sparsity: dict[str, float] | None,
    ) -> None:
        """Put a score mask (``k = 1``, scores frozen) on every prunable weight and add the scores to ``optimizer``."""
        from nas.sparse.layers import add_score_mask
        from nas.sparse.masks import checked_targets, prunable_weights

        targets = checked_targets(model, layer_sparsity)
        owners = prunable_weights(model)
        self._keep = {name: 1.0 - targets.get(name, self.params.sparsity) for name in owners}
        scores = []
        for module, attr in owners.values():
            parametrization = add_score_mask(module, attr, k=1.0)
            parametrization.scores.requires_grad_(False)
            scores.append(parametrization.scores)
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        if new := [s for s in scores if id(s) not in known]:  # a SparseLinear's scores may be there already
            optimizer.add_param_group({"params": new})
        self._optimizer = optimizer
        self._prune_start = round(self.params.pretrain_fraction * total_steps)
        self._finetune_start = max(self._prune_start, round((1.0 - self.params.finetune_fraction) * total_steps))
        self._phase = "pretrain"
        self._advance(model, 0)

    def on_step(self, model: nn.Module, step: int) -> None:
        self._advance(model, step)

    def finalize(self, model: nn.Module) -> None:
        """Fix the masks, whatever phase a run shorter than announced stopped in."""
        if self._phase == "pretrain":
            self._start_pruning(model)
        if self._phase == "prune":
            self._fix_masks(model)

    def _advance(self, model: nn.Module, step: int) -> None:
        if self._phase == "pretrain" and step >= self._prune_start:
            self._start_pruning(model)
        if self._phase == "prune" and step >= self._finetune_start:
            self._fix_masks(model)

    def _start_pruning(self, model: nn.Module) -> None:
        """Scaled score init from the (pretrained) weights, masks at ``k``; freeze all but scores and norms."""
        import torch

        from nas.sparse.layers import ScoreMask, get_score_mask, scaled_scores
        from nas.sparse.masks import prunable_weights, raw_weight

        with torch.no_grad():
            for name, (module, attr) in prunable_weights(model).items():
                parametrization = get_score_mask(module, attr)
                parametrization.scores.copy_(scaled_scores(raw_weight(module, attr)))
                parametrization.scores.requires_grad_(True)
                parametrization.k = self._keep[name]
        if not self.params.train_weights:
            norms = (torch.nn.modules.batchnorm._NormBase, torch.nn.LayerNorm, torch.nn.GroupNorm)
            self._frozen = [
                p
                for m in model.modules()
                if not isinstance(m, (ScoreMask, *norms))
                for p in m.parameters(recurse=False)
                if p.requires_grad
            ]
            for p in self._frozen:
                p.requires_grad_(False)
        self._phase = "prune"

    def _fix_masks(self, model: nn.Module) -> None:
        """Replace every score mask by a hard mask; drop the scores from the optimizer; unfreeze the weights."""
        from nas.sparse.layers import get_score_mask
        from nas.sparse.masks import harden_mask, prunable_weights

        scores: set[int] = set()
        for module, attr in prunable_weights(model).values():
            parametrization = get_score_mask(module, attr)
            scores.add(id(parametrization.scores))
            harden_mask(module, attr, parametrization.mask)
        optimizer = self._optimizer
        for group in list(optimizer.param_groups):
            for p in [p for p in group["params"] if id(p) in scores]:
                optimizer.state.pop(p, None)
            group["params"] = [p for p in group["params"] if id(p) not in scores]
            if not group["params"]:
                optimizer.param_groups.remove(group)
        for p in self._frozen:
            p.requires_grad_(True)
            optimizer.state.pop(p, None)  # HYDRA fine-tunes with a new optimizer
        self._frozen = []
        self._phase = "finetune"
