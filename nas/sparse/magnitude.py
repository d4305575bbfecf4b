"""One-shot magnitude pruning (Han et al., 2015): train, prune the smallest weights once, fine-tune.

A search space that searches each layer's sparsity pattern hands the trainer a
``layer_patterns`` map (weight name -> pattern), which this sparsifier honours:

* ``"dense"``: the weight is not pruned;
* ``"unstructured"``: the smallest-magnitude weights go, as without patterns;
* ``"N:M"`` (e.g. ``"2:4"``): the ``N`` largest ``|w|`` of every ``M`` consecutive weights along
  the input axis stay (the grouping of :mod:`nas.sparse.nm`), so the density is ``N/M``;
* ``"channel"``: whole output channels (rows) go, those of smallest L1 norm (Li et al., 2017).

Weights the map leaves out are unstructured. Gradual magnitude pruning (:mod:`nas.sparse.gmp`)
masks by the same patterns at each step of its schedule (:func:`prune_with_patterns`).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, ConfigDict, Field

from nas.sparse.base import OneShotSparsifier

if TYPE_CHECKING:
    import torch
    from torch import nn

_NM = re.compile(r"^(\d+):(\d+)$")


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``(n, m)`` of an ``"N:M"`` pattern, ``None`` for dense, unstructured and channel; ``ValueError`` otherwise.

    An N:M pattern needs ``1 <= N < M <= 64``: ``N = M`` would keep every weight.
    """
    if pattern in ("dense", "unstructured", "channel"):
        return None
    match = _NM.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise ValueError(f"unknown sparsity pattern {pattern!r}; valid: dense, unstructured, channel or N:M such as 2:4")
    n, m = int(match[1]), int(match[2])
    if not 1 <= n < m <= 64:
        raise ValueError(f"N:M pattern {pattern!r} needs 1 <= N < M <= 64")
    return n, m


class MagnitudePruning(OneShotSparsifier):
    """Zeroes the smallest-magnitude weights once, part-way through training, then fine-tunes under that mask."""

    class Params(BaseModel):
        model_config = ConfigDict(extra="forbid")

        sparsity: float = Field(
            0.9, ge=0.0, lt=1.0, description="fraction of the prunable weights set to zero (1.0 would remove every weight)"
        )
        scope: Literal["layer", "global"] = Field(
            "layer",
            description="'layer': every layer loses exactly that fraction; 'global': one magnitude threshold over all "
            "layers (those with an unstructured pattern, when the search space sets per-layer patterns)",
        )
        prune_at: float = Field(
            0.5,
            ge=0.0,
            le=1.0,
            description="fraction of the training steps after which to prune; the rest fine-tunes under the fixed mask",
        )

    params: Params

    def __init__(self, params: Params) -> None:
        super().__init__(params)
        self._layer_sparsity: dict[str, float] = {}
        self._patterns: dict[str, str] = {}

    def attach(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, total_steps: int, layer_sparsity: dict[str, float] | None
    ) -> None:
        """Weights named in ``layer_sparsity`` get their own target, in either scope; the rest get ``sparsity``.

        ``layer_patterns`` (set before this call) are checked against the model here, so a pattern
        that cannot apply fails before training rather than at the pruning step.
        """
        from nas.sparse.masks import checked_targets

        self._layer_sparsity = checked_targets(model, layer_sparsity)
        self._patterns = checked_patterns(model, self.layer_patterns)
        super().attach(model, optimizer, total_steps, layer_sparsity)

    def pattern_of(self, name: str) -> str:
        return self._patterns.get(name, self.pattern)

    def _prune(self, model: nn.Module) -> None:
        from nas.sparse.masks import magnitude_prune

        prune_with_patterns(model, self.params.sparsity, self._layer_sparsity, self.params.scope, self._patterns)


def checked_patterns(model: nn.Module, patterns: dict[str, str] | None) -> dict[str, str]:
    """``patterns`` as a dict, after checking each names a prunable weight of ``model`` and can apply to it."""
    from nas.sparse.masks import prunable_weights, raw_weight

    owners = prunable_weights(model)
    unknown = sorted(set(patterns or {}) - set(owners))
    if unknown:
        raise ValueError(f"layer_patterns names weights the model does not have: {unknown}")
    for name, pattern in (patterns or {}).items():
        try:
            nm = parse_pattern(pattern)
        except ValueError as exc:
            raise ValueError(f"layer_patterns[{name!r}]: {exc}") from None
        if nm is not None:
            channels = raw_weight(*owners[name]).shape[1]
            if channels % nm[1]:
                raise ValueError(
                    f"layer_patterns[{name!r}]={pattern!r}: the weight has {channels} input channels per group, "
                    f"not a multiple of M={nm[1]}"
                )
    return dict(patterns or {})


def prune_with_patterns(
    model: nn.Module, sparsity: float, overrides: dict[str, float], scope: str, patterns: dict[str, str]
) -> None:
    """Mask every prunable weight of ``model`` by its pattern; unstructured ones as :func:`magnitude_prune` would.

    A channel weight removes ``overrides.get(name, sparsity)`` of its output channels; N:M and
    dense weights ignore their sparsity targets, which their pattern fixes. Without patterns this
    is :func:`~nas.sparse.masks.magnitude_prune`.
    """
    from nas.sparse._channel import channel_mask, unit_scores
    from nas.sparse.nm_layers import nm_mask
    from nas.sparse.masks import magnitude_masks, magnitude_prune, prunable_weights, set_mask

    if not patterns:
        magnitude_prune(model, sparsity, overrides, scope)
        return

    owners = prunable_weights(model)
    weights = {name: getattr(module, attr) for name, (module, attr) in owners.items()}
    new_masks: dict[str, torch.Tensor] = {}
    unstructured: dict[str, torch.Tensor] = {}
    for name, weight in weights.items():
        pattern = patterns.get(name, "unstructured")
        nm = parse_pattern(pattern)
        if nm is not None:
            new_masks[name] = nm_mask(weight, *nm)
        elif pattern == "channel":
            new_masks[name] = channel_mask(weight, unit_scores(weight, None), overrides.get(name, sparsity))
        elif pattern == "unstructured":
            unstructured[name] = weight
    if scope == "layer":
        groups = [({name: w}, overrides.get(name, sparsity)) for name, w in unstructured.items()]
    else:
        groups = [({name: w}, overrides[name]) for name, w in unstructured.items() if name in overrides]
        groups.append(({name: w for name, w in unstructured.items() if name not in overrides}, sparsity))
    for group, target in groups:
        new_masks.update(magnitude_masks(group, target))
    for name, mask in new_masks.items():
        set_mask(*owners[name], mask)
